"""What ``bms run`` checks of a pack before it opens a port or starts an emulator, and what
``bms check`` reports: one function, so that a pack that passes ``bms check`` is one that
``bms run`` accepts.

Each stack's board profile must exist and match the stack channel for channel (the validator
maps board channels onto the stack's cells, thermistor positions and the fixture's load cells
one to one; the emulator refuses the same mismatches), and the control path's parts must build
from the pack (estimation core, validator, protections, balancer, CCD limit) as the controller
builds them.
"""

from __future__ import annotations

from dataclasses import dataclass

from bms.balancing import Balancer
from bms.charging import CcdLimit
from bms.core import Core
from bms.faults import FaultTable
from bms.protections import PackProtections
from bms.validation import StackValidator
from boards.config import BoardProfile, ConfigError, PackConfig, load_board
from hil.scaling import Scaler


@dataclass(frozen=True)
class StackCheck:
    """One stack and its board profile; ``problems``: each a ConfigError (file, key, why)."""

    index: int
    board: BoardProfile | None
    problems: tuple[ConfigError, ...]


def check_stacks(pack: PackConfig) -> list[StackCheck]:
    """Each stack against its board profile (nothing raised: every problem is listed)."""
    out = []
    for k, stack in enumerate(pack.stacks):
        key = f"stacks[{k}]"
        try:
            board = load_board(stack.board)
        except ConfigError as exc:
            text = (f"no board profile {stack.board!r}; allowed: a .yaml path or {exc.allowed}"
                    if exc.key == "<board>" else f"board profile {stack.board!r} is refused: "
                    f"{exc}")
            out.append(StackCheck(k, None, (ConfigError(
                pack.path, f"{key}.board", stack.board, exc.allowed, text),)))
            continue
        problems = []
        if board.cells != stack.cells:
            problems.append(ConfigError(
                pack.path, f"{key}.cells", stack.cells, f"{board.cells} (board {board.name})",
                f"{stack.cells} cells, but board {board.name} ({board.path}) has "
                f"{board.cells} cell channels"))
        n_pos = len(stack.thermistor_cell_positions)
        if board.thermistors != n_pos:
            problems.append(ConfigError(
                pack.path, f"{key}.thermistor_cell_positions", n_pos,
                f"{board.thermistors} positions",
                f"{n_pos} position(s), but board {board.name} ({board.path}) has "
                f"{board.thermistors} thermistor channels: give one position per channel"))
        n_lc = len(pack.fixture.load_cells_xy_mm)
        if board.load_cells != n_lc:
            problems.append(ConfigError(
                pack.path, "fixture.load_cells_xy_mm", n_lc, f"{board.load_cells} load cells",
                f"{n_lc} load cell(s), but board {board.name} ({board.path}) of {key} has "
                f"{board.load_cells} load-cell channels"))
        out.append(StackCheck(k, board, tuple(problems)))
    return out


def preflight(pack: PackConfig) -> list[BoardProfile]:
    """Raise the first ConfigError that would stop ``bms run`` with this pack; the boards."""
    checks = check_stacks(pack)
    for c in checks:
        if c.problems:
            raise c.problems[0]
    boards = [c.board for c in checks if c.board is not None]
    try:
        table = FaultTable()
        for k, board in enumerate(boards):
            StackValidator(pack, k, board, table, Scaler(board))
            Core(pack, k)
        PackProtections(pack)
        Balancer(pack.balancing, [s.cells for s in pack.stacks],
                 [len(s.thermistor_cell_positions) for s in pack.stacks])
        CcdLimit.from_pack(pack)
    except (ValueError, TypeError) as exc:  # ConfigError is a ValueError: keep its own text
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(pack.path, "<pack>", pack.name, "a pack the control path can run",
                          f"the control path cannot be built from it: {exc}") from None
    return boards
