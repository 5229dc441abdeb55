"""Shared by the tests/test_firmware_*.py files: tool checks (skip with the reason outside CI,
fail under CI=true, as the issue asks) and small helpers."""

from __future__ import annotations

import os
import subprocess

import pytest

from hil.firmware import FIRMWARE_DIR, missing_tools


def require_tools(fuzz: bool = False) -> None:
    missing = missing_tools(fuzz=fuzz)
    if not missing:
        return
    reason = ("missing Debian packages " + " ".join(missing)
              + " (tools/install-sysdeps.sh installs them as root)")
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true: " + reason)
    pytest.skip(reason)


def make(*targets: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """make -C boards/firmware TARGETS; fails the test with make's output on error."""
    proc = subprocess.run(["make", "-C", str(FIRMWARE_DIR), *extra, *targets],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"make {' '.join(targets)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc
