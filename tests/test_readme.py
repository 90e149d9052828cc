"""The README's two set-up commands exist, and CI runs the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_readme_gives_exactly_two_setup_commands():
    commands = setup_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    demo, tests = commands
    assert demo.startswith("pip install torch==2.13.0") and demo.endswith("moopt demo")
    assert tests.startswith("pip install torch==2.13.0") and "pytest" in tests


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    _, tests = setup_commands()
    for part in tests.split(" && "):
        install = part.replace("pip install", "python3 -m pip install -q")
        assert install in ci or part.replace("python -m", "python3 -m") in ci, part


def test_quickstart_snippets_run():
    text = (ROOT / "README.md").read_text()
    quickstart = text.split("## Quickstart", 1)[1]
    swap, constraint, gradient = re.findall(r"```python\n(.*?)```", quickstart, flags=re.S)[:3]
    namespace: dict = {}
    exec(swap + constraint + gradient, namespace)  # noqa: S102 - the README's own code
    assert namespace["out"].lagrangian.requires_grad
    assert all(p.grad is not None for p in namespace["trunk"].parameters())
