"""``bms fit``: a cell model from cycler data (work in progress, issue 11 item 2)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("bms fit: not implemented yet (issue 11 item 2, in progress)", file=sys.stderr)
    return 2
