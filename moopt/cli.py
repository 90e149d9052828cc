"""The ``moopt`` command: ``moopt demo``, ``moopt tune`` and ``moopt trace``.

Each sub-command lives in its own module with a ``main(argv) -> int`` function, imported
only when that sub-command runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "demo": ("moopt._demo", "linear weights vs MDMM constraints on the concave circle front"),
    "tune": ("moopt.hypergrad._cli", "FDS hypergradient tuning of a digits MLP"),
    "trace": ("moopt._trace_cli", "trace a Pareto front (toy problems, MultiDigits)"),
}


def _usage() -> str:
    lines = ["usage: moopt COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<7}{summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run 'moopt COMMAND --help' for the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``moopt`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"moopt: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
