"""``python -m moopt`` runs the ``moopt`` command."""

import sys

from moopt.cli import main

sys.exit(main())
