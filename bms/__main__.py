"""``python -m bms``: the ``bms`` command (bms/app/cli.py)."""

from bms.app.cli import main

raise SystemExit(main())
