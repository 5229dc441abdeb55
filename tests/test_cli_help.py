"""Every ``bms`` command answers ``--help`` with its options and examples (issue 14: `bms
emulate --help` omitted `--firmware`, `bms bench --help` `--tick`, `bms plot --help` had no
examples)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bms.app.cli import COMMANDS
from hil.emulator import cli as emulator_cli

#: Commands whose --help must name these options (they are dispatched before the parser).
MUST_LIST = {"emulate": ("--firmware",), "bench": ("--tick",)}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_options_and_examples(name: str) -> None:
    run = subprocess.run([sys.executable, "-m", "bms", name, "--help"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"usage: bms {name}"), run.stdout[:200]
    for option in MUST_LIST.get(name, ()):
        assert option in run.stdout, f"bms {name} --help does not list {option}"
    assert "example" in run.stdout, f"bms {name} --help has no examples"


def test_emulator_module_refuses_firmware_run_directly(capsys) -> None:
    assert emulator_cli.main(["--firmware"]) == 2
    assert "bms emulate --firmware" in capsys.readouterr().err
