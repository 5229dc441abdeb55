"""The C sources built with AddressSanitizer and UBSan and driven by their C test programs in
tests/c/: a real C build per case, run from pytest so that ``make test`` covers it.

- core: tests/c/test_core_asan.c (every error path, NaN/Inf inputs, sizes 1..257);
- protect + format: tests/c/test_protect_asan.c (error paths, a full transition buffer, the
  tick row filled and formatted in one call (ssb_format_tick, 0..40 stacks),
  NaN/Inf, sizes 1..300, long random runs, exact-size buffers);
- frontend: tests/c/test_frontend_asan.c (error paths, exact-size heap buffers, 1..40 cells,
  sentinels and int64 extremes, NaN/Inf currents);
- stack: tests/c/test_stack_asan.c (ssb_stack_step over the core's and the front end's
  fixtures: error paths, 1..40 and 100 cells, random counts, currents and bleeds, every figure
  against a plain recomputation);
- balance: tests/c/test_balance_asan.c (ssb_balance: error paths that write nothing, 1..6
  stacks of 1..32 cells, NaN/Inf inputs, each decision's invariants);
- current: tests/c/test_current_asan.c (ssb_current: NULL paths, 1..8 stacks, NaN/Inf
  currents and medians, the invariants of each decision);
- thermal: tests/c/test_thermal_asan.c (ssb_cooling_observe: NULL and parameter paths that
  change nothing, 1..300 cells and 1..40 grid points, NaN/Inf inputs, the CUSUM's bounds, numpy's
  interp and pairwise sum);
- wire: tests/c/test_wire_asan.c (ssb_wire over the firmware's proto.c: random damaged streams
  against the firmware's byte-at-a-time reader, exact-size buffers, every payload length);
- plant: tests/c/test_plant_asan.c (error paths and that they write nothing, 1..40 and 150
  cells, random flags, steps and currents, NaN/Inf channel values, int64-range clamps);
- board: tests/c/test_board_asan.c (ssb_board_tick on the plant's rig over the firmware's
  proto.c: refusals write nothing, every prefix and bit flip of a tick's bytes, random ticks
  in every bus mode, replies decoded, counts beyond the wire types).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "core": (["ssb_core.c"], "test_core_asan.c"),
    "protect+format": (["ssb_protect.c", "ssb_format.c"], "test_protect_asan.c"),
    "frontend": (["ssb_frontend.c"], "test_frontend_asan.c"),
    "stack": (["ssb_core.c", "ssb_frontend.c", "ssb_current.c", "ssb_stack.c"],
              "test_stack_asan.c"),
    "balance": (["ssb_balance.c"], "test_balance_asan.c"),
    "current": (["ssb_current.c"], "test_current_asan.c"),
    "thermal": (["ssb_thermal.c"], "test_thermal_asan.c"),
    "plant": (["ssb_plant.c"], "test_plant_asan.c"),
    "wire": (["ssb_wire.c", "../boards/firmware/src/proto.c"], "test_wire_asan.c"),
    "board": (["ssb_board.c", "ssb_plant.c", "../boards/firmware/src/proto.c"],
              "test_board_asan.c"),
}
FIRMWARE_SRC = ROOT / "boards" / "firmware" / "src"  # proto.h, for the wire case


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("case", list(CASES))
def test_c_under_asan_and_ubsan(tmp_path: Path, case: str) -> None:
    sources, driver = CASES[case]
    exe = tmp_path / Path(driver).stem
    build = subprocess.run(
        ["cc", "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
         "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
         f"-I{ROOT / 'csrc'}", f"-I{FIRMWARE_SRC}", *(str(ROOT / "csrc" / s) for s in sources),
         str(ROOT / "tests" / "c" / driver), "-lm", "-o", str(exe)],
        capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300,
                         env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
                              "UBSAN_OPTIONS": "print_stacktrace=1"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "ok"
    assert "runtime error" not in run.stderr
