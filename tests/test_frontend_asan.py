"""The measurement front end (csrc/ssb_frontend.c) built with AddressSanitizer and UBSan and
driven by tests/c/test_frontend_asan.c (error paths, exact-size heap buffers, 1..40 cells,
sentinels and int64 extremes, NaN/Inf currents): a real C build, run from pytest so that
``make test`` covers it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_frontend_under_asan_and_ubsan(tmp_path: Path) -> None:
    exe = tmp_path / "test_frontend_asan"
    build = subprocess.run(
        ["cc", "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
         "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
         f"-I{ROOT / 'csrc'}", str(ROOT / "csrc" / "ssb_frontend.c"),
         str(ROOT / "tests" / "c" / "test_frontend_asan.c"), "-lm", "-o", str(exe)],
        capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300,
                         env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
                              "UBSAN_OPTIONS": "print_stacktrace=1"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "ok"
    assert "runtime error" not in run.stderr
