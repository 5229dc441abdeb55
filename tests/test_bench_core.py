"""Benchmarks of the core (pytest-benchmark: they measure, never assert on time) and a smoke
test of ``bms bench`` (tiny sizes) including the pure-C loop build."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bms.app import bench
from bms.core import Core, make_params
from boards.config import load_pack


@pytest.fixture(scope="module")
def pack():
    return load_pack("ssb-23")


@pytest.mark.parametrize("n_cells", [23, 2000])
@pytest.mark.parametrize("part", ["ekf", "tick"])
def test_benchmark_cffi(benchmark, pack, n_cells: int, part: str) -> None:
    params = make_params(pack, 0, n_cells=n_cells)
    core = Core(pack, 0, params=params)
    core.reset(0.5)
    v, t, p = bench._inputs(params)
    vb, tb, pb = core.input_buffers()
    vb[:], tb[:], pb[:] = v, t, p
    fn, args = core.raw_ekf_call() if part == "ekf" else core.raw_call()
    out = core.out_struct
    benchmark(fn, *args, 0.1, -2.0, out)
    assert np.all(np.isfinite(core.soc))


def test_benchmark_core_step_python_api(benchmark, pack) -> None:
    core = Core(pack, 0)
    core.reset(0.5)
    v, t, p = bench._inputs(core.params)
    out = benchmark(core.step, 0.1, -2.0, v, t, p)
    assert out.soc.shape == (23,)


def test_bms_bench_json(capsys) -> None:
    assert bench.main(["--json", "--sizes", "23", "--budget-s", "0.05"]) == 0
    records = json.loads(capsys.readouterr().out)
    impls = {(r["impl"], r["part"]) for r in records}
    assert {("cffi", "ekf"), ("cffi", "tick"), ("numpy", "ekf"), ("numpy", "tick")} <= impls
    assert ("c-loop", "ekf") in impls  # the C program compiled and ran
    for r in records:
        assert r["n_cells"] == 23 and r["ns_per_cell_step"] > 0
        assert r["us_per_stack_step"] == pytest.approx(r["ns_per_cell_step"] * 23 / 1000)
