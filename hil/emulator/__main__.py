"""``python -m hil.emulator``: see hil/emulator/cli.py."""

import sys

from hil.emulator.cli import main

raise SystemExit(main(sys.argv[1:]))
