"""Suite-wide guard and the board fixtures.

Guard: a run that collects fewer tests than expected fails loudly. pytest exits 5 when it
collects nothing; a typo in a path, a marker expression or an import that silently deselects most
of the suite would still "pass". ``--min-tests N`` (``make test`` passes the suite's floor) turns
both into a failure with a message.

Boards: ``board`` (started with the defaults: sim clock, seed 3, SOC 0.6) and ``board_factory``
(start more, or with other options; all stopped at teardown) are parametrised over the backends
of tests/board_backends.py: ``emulator`` (the Python emulated board on a pty) and ``firmware``
(the reference firmware on simavr, marked ``firmware``; skipped with the reason when the AVR
toolchain or simavr is missing, failed under CI=true) and ``emu`` (the emulated board in the
test's process behind an ``emu://`` URL; sim clock only). A test taking either runs on each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from board_backends import BACKENDS, BoardUnderTest, start_board


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


_BACKEND_PARAMS = [pytest.param(b, marks=[pytest.mark.firmware] if b == "firmware" else [])
                   for b in BACKENDS]


@pytest.fixture(params=_BACKEND_PARAMS)
def board_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., BoardUnderTest]]:
    """``start(clock="sim", seed=3, initial_soc=0.6)`` -> a started board of this backend."""
    started: list[BoardUnderTest] = []

    def start(**opts: object) -> BoardUnderTest:
        b = start_board(request.param, **opts)  # type: ignore[arg-type]
        started.append(b)
        return b

    yield start
    for b in reversed(started):
        b.stop()


@pytest.fixture
def board(board_factory: Callable[..., BoardUnderTest]) -> BoardUnderTest:
    return board_factory()
