"""Emulator benchmarks (pytest-benchmark; they measure, they never assert on wall time).

Run with ``.venv/bin/python -m pytest tests/test_emulator_bench.py --benchmark-enable``:

- plant step, 23 cells (one stack) and 92 cells (ssb-4x23: four stack plants, one per board);
- sensor counts of one MEASUREMENT (23 cells);
- SAMPLE -> MEASUREMENT round trips over a real pty in the sim clock: a simulated hour of the
  23-cell stack at 100 ms steps (36,000 round trips), emulator in its own process
  (``python -m hil.emulator``), host = hil.client.BoardClient. The wall time of the hour is in
  the benchmark's extra_info (``hour_wall_s``).

Without --benchmark-enable (the default addopts) each body runs once, as a smoke test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boards.config import load_board, load_pack
from hil.client import BoardClient
from hil.emulator.plant import ConstantCurrent, Plant

ROOT = Path(__file__).resolve().parent.parent
BOARD = load_board("emu-23")


def _plants(pack_name: str) -> list[Plant]:
    pack = load_pack(pack_name)
    plants = [Plant(pack, i, BOARD, seed=1, initial_soc=0.8) for i in range(len(pack.stacks))]
    for p in plants:
        p.set_outputs(contactor_pos=True, contactor_neg=True, charge_limit_a=10.0,
                      discharge_limit_a=15.0)
        p.set_load(ConstantCurrent(-5.0))
    return plants


def test_bench_plant_step_23_cells(benchmark) -> None:
    (plant,) = _plants("ssb-23")
    benchmark.extra_info["cells"] = 23
    benchmark(plant.step, 0.1)
    assert plant.truth().current_a < -4.9


def test_bench_plant_step_92_cells(benchmark) -> None:
    plants = _plants("ssb-4x23")
    assert sum(p.n for p in plants) == 92

    def step_all() -> None:
        for p in plants:
            p.step(0.1)

    benchmark.extra_info["cells"] = 92
    benchmark(step_all)
    assert all(p.truth().current_a < -4.9 for p in plants)


def test_bench_sensor_counts_23_cells(benchmark) -> None:
    (plant,) = _plants("ssb-23")
    plant.step(0.1)
    counts = benchmark(plant.sensor_counts)
    assert len(counts.cell_raw) == 23


@pytest.mark.slow
def test_bench_sim_hour_round_trips(benchmark) -> None:
    """36,000 SAMPLE -> MEASUREMENT round trips (a simulated hour at 100 ms) over a pty."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "hil.emulator", "--seed", "1"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().decode().strip()
        with BoardClient(path, BOARD, timeout_s=2.0) as client:
            walls: list[float] = []

            def hour() -> int:
                t0 = time.perf_counter()
                last = None
                for _ in range(36_000):
                    last = client.sample(0.1)
                walls.append(time.perf_counter() - t0)
                return last.timestamp_ms

            start_ms = client.sample(0.0).timestamp_ms
            end_ms = benchmark.pedantic(hour, rounds=1, iterations=1)
            benchmark.extra_info["round_trips"] = 36_000
            benchmark.extra_info["hour_wall_s"] = round(min(walls), 3)
            benchmark.extra_info["round_trip_us"] = round(min(walls) / 36_000 * 1e6, 1)
            assert end_ms - start_ms == 3_600_000
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "--benchmark-enable", "-q"]))
