import subprocess
import sys

HEAVY = ["scipy", "cvxpy", "pymoo", "moocore", "matplotlib", "sklearn", "dask"]


def test_import_moopt_loads_only_torch_and_numpy():
    code = (
        "import sys, moopt, moopt.cli\n"
        f"heavy = {HEAVY!r}\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & set(heavy))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"import moopt loaded {result.stdout.strip()}"


def test_public_names_exist():
    import moopt

    for name in moopt.__all__:
        assert hasattr(moopt, name), name
