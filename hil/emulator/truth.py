"""Ground-truth CSV writer: what the plant really did, per step, for evaluation only.

One row per plant step (or every ``every``-th step): time, stack current, bus and stack
voltage, stack pressure, coolant and ambient temperature, then per cell true SOC, temperature
and terminal voltage, then per load cell the true local pressure. The BMS never reads this file.

A failed write (a full disk) stops the truth file, never the board: the board is what the BMS
under test talks to, and the truth is only for scoring it afterwards. The first failure is one
line on stderr; ``dropped`` counts the rows lost.

Batching (``batch_rows`` > 1: the sim clock, EmulatedBoard): kept rows are held as text and
written in one write when ``batch_rows`` are held, at :meth:`flush` and at :meth:`close` (the
board's close: the emu:// port's close, the emulator process's exit path), as the run log batches
ticks.csv in the sim clock (bms/runlog.py): a SIGKILL loses at most the held rows, and a sim-clock
run can be made again from its seed. The real clock keeps one write per row.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from hil.emulator.plant import PlantTruth


def truth_header(n_cells: int, n_load_cells: int) -> list[str]:
    cols = ["t_s", "current_a", "bus_voltage_v", "stack_voltage_v", "pressure_kpa",
            "coolant_c", "ambient_c"]
    cols += [f"soc_{i}" for i in range(n_cells)]
    cols += [f"temperature_c_{i}" for i in range(n_cells)]
    cols += [f"cell_voltage_v_{i}" for i in range(n_cells)]
    cols += [f"load_cell_kpa_{j}" for j in range(n_load_cells)]
    return cols


class TruthWriter:
    """Appends PlantTruth rows to a CSV file; line-buffered so a killed run keeps its rows."""

    def __init__(self, path: str | Path, n_cells: int, n_load_cells: int, every: int = 1,
                 batch_rows: int = 1) -> None:
        if every < 1:
            raise ValueError("every must be >= 1")
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        self.batch_rows = batch_rows
        self._held: list[str] = []
        self.path = Path(path)
        self.every = every
        self._count = 0
        self.dropped = 0
        self.error: str | None = None
        self._fh: TextIO = self.path.open("w", encoding="utf-8", buffering=1)
        self._fh.write(",".join(truth_header(n_cells, n_load_cells)) + "\n")
        # One %-format for the row (the same text as format() per field, in one call)
        self._fmt = ",".join(["%.3f"] + ["%.6g"] * 6 + ["%.6f"] * n_cells + ["%.3f"] * n_cells
                             + ["%.5f"] * n_cells + ["%.2f"] * n_load_cells) + "\n"

    def write(self, truth: PlantTruth) -> None:
        head = [truth.t_s, truth.current_a, truth.bus_voltage_v, truth.stack_voltage_v,
                truth.pressure_kpa, truth.coolant_temperature_c, truth.ambient_temperature_c]
        self.write_row(head + truth.soc.tolist() + truth.temperature_c.tolist()
                       + truth.cell_voltage_v.tolist() + truth.load_cell_pressure_kpa.tolist())

    def write_row(self, row: list[float]) -> None:
        """One row in ``truth_header`` order (:meth:`Plant.truth_row`)."""
        self._count += 1
        if (self._count - 1) % self.every:
            return
        self._write(row)

    def write_row_from(self, make_row: Callable[[], list[float]]) -> None:
        """:meth:`write_row` of ``make_row()``, called only for a row the file keeps (a
        campaign keeps one in 10: building the other 9 cost ~10 us per tick)."""
        self._count += 1
        if (self._count - 1) % self.every:
            return
        self._write(make_row())

    def _write(self, row: list[float]) -> None:
        if self.error is not None:
            self.dropped += 1
            return
        if self.batch_rows > 1:
            held = self._held
            held.append(self._fmt % tuple(row))
            if len(held) >= self.batch_rows:
                self.flush()
            return
        self._put(self._fmt % tuple(row), 1)

    def _put(self, text: str, rows: int) -> None:
        try:
            self._fh.write(text)
        except OSError as exc:
            self.dropped += rows
            self.error = f"{exc.strerror or exc}"
            print(f"bms emulate: truth file {self.path}: {self.error}; no more truth rows "
                  "(the board goes on)", file=sys.stderr, flush=True)

    def flush(self) -> None:
        """Write the held rows (batching only), in one write."""
        held = self._held
        if not held:
            return
        self._held = []
        if self.error is not None:
            self.dropped += len(held)
            return
        self._put("".join(held), len(held))

    def close(self) -> None:
        self.flush()
        if not self._fh.closed:
            try:
                self._fh.close()
            except OSError:
                pass  # the buffered tail of a full disk: counted by the first failure

    def __enter__(self) -> TruthWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
