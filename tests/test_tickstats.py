"""Tick statistics in constant memory (issue 14 item 7): the latency percentiles come from a
fixed log-binned histogram, within its 1 % bin width of the exact ones, and a controller run
does not grow with its number of ticks."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

from bms.app.emulators import start_emulators
from bms.controller import Controller
from bms.tickstats import BIN_RATIO, LATENCY_MAX_S, LatencyHistogram, TickStats
from boards.config import load_pack


def test_percentiles_within_the_bin_width_of_the_exact_ones() -> None:
    rng = np.random.default_rng(7)
    samples = rng.lognormal(mean=np.log(2e-4), sigma=0.8, size=50_000)
    stats = TickStats()
    for d in samples:
        stats.record(float(d))
    got = stats.percentiles_ms()
    assert stats.ticks == 50_000 and set(got) == {"p50", "p90", "p99", "p99.9", "max"}
    for p in (50, 90, 99, 99.9):
        exact = 1e3 * float(np.percentile(samples, p))
        assert abs(got[f"p{p}"] / exact - 1.0) <= BIN_RATIO - 1.0 + 1e-3, (p, got, exact)
    assert got["max"] == pytest.approx(1e3 * samples.max())


def test_out_of_range_durations_are_counted_not_lost() -> None:
    h = LatencyHistogram()
    for d in (0.0, -1.0, float("nan"), 1e-9, 5.0 * LATENCY_MAX_S):
        h.add(d)
    assert h.n == 5 and int(h.counts.sum()) == 5
    assert h.percentile_s(100) == pytest.approx(5.0 * LATENCY_MAX_S)  # the exact max
    assert LatencyHistogram().percentile_s(50) != LatencyHistogram().percentile_s(50)  # NaN


def test_a_controller_run_does_not_grow_with_its_ticks() -> None:
    """Python heap growth over 3,000 more ticks of a healthy ssb-23 run (no log folder, sim
    clock): the old per-tick latency list grew ~36 B a tick (~100 kB here)."""
    pack = load_pack("ssb-23")
    emus = start_emulators(pack, clock="sim", seed=4, scenario="udds")
    try:
        c = Controller(pack, [e.path for e in emus], clock="sim")
        c.open()
        c.request_close()
        c.run(100.0)  # past start-up: contactors closed, warnings raised
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        c.run(300.0)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        c.close()
    finally:
        for e in emus:
            e.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert c.stats.ticks >= 4000
    assert grown < 20_000, f"{grown} B over 3000 ticks"
