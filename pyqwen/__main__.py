"""`python -m pyqwen ...` runs the `pyqwen` command."""

import sys

from .cli import main

sys.exit(main())
