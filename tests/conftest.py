"""Suite-wide guard: a run that collects fewer tests than expected fails loudly.

pytest exits 5 when it collects nothing; a typo in a path, a marker expression or an import that
silently deselects most of the suite would still "pass". ``--min-tests N`` (``make test`` passes
the suite's floor) turns both into a failure with a message.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--min-tests", type=int, default=1,
                     help="fail the run when fewer tests than this were collected (default 1)")


def pytest_collection_finish(session: pytest.Session) -> None:
    floor = session.config.getoption("--min-tests")
    collected = len(session.items)
    if collected < floor:
        raise pytest.UsageError(
            f"collected {collected} tests, fewer than --min-tests {floor}: the suite lost tests "
            "(bad path, marker or import?)")
