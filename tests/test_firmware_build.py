"""The reference firmware builds with -Werror for the ATmega2560 and fits; its logic passes the
host unit tests; the frame parser survives a bounded libFuzzer run under ASan/UBSan."""

from __future__ import annotations

import re
import subprocess

import pytest
from firmware_tools import make, require_tools

from hil.firmware import BUILD_DIR, FIRMWARE_DIR

pytestmark = pytest.mark.firmware

FLASH_BYTES = 256 * 1024  # ATmega2560 datasheet: 256 KiB flash (8 KiB of it boot section)
RAM_BYTES = 8 * 1024      # 8 KiB SRAM
FUZZ_SECONDS = 20


def test_firmware_builds_with_werror_and_fits() -> None:
    require_tools()
    # -B: really compile (not "up to date"), so the warning flags are exercised every run.
    out = make("firmware", "size", extra=("-B",)).stdout
    assert "-mmcu=atmega2560" in out and "-Werror" in out and "-Wextra" in out
    m = re.search(r"flash (\d+) B of 262144 .*RAM (\d+) B of 8192", out)
    assert m, out
    flash, ram = int(m[1]), int(m[2])
    print(f"\nfirmware size: flash {flash} B ({100 * flash / FLASH_BYTES:.2f} %), "
          f"static RAM {ram} B ({100 * ram / RAM_BYTES:.2f} %)")
    assert 0 < flash < FLASH_BYTES - 8 * 1024  # leaves the boot section to the bootloader
    # Stack: the deepest path is main -> app_poll -> app_handle_frame -> proto_encode, plus an
    # ISR; bound it by the sum of the largest frames plus 64 B of return addresses and calls.
    frames = [int(x) for x in re.findall(r"\t(\d+)\tstatic", make("stack").stdout)]
    stack_bound = sum(frames[:4]) + 64
    print(f"stack bound {stack_bound} B (largest frames {frames[:4]}); "
          f"RAM with stack <= {ram + stack_bound} B of {RAM_BYTES}")
    assert frames and ram + stack_bound < RAM_BYTES - 1024
    hexfile = (BUILD_DIR / "firmware.hex").read_text()
    assert hexfile.startswith(":") and hexfile.rstrip().endswith(":00000001FF")


def test_a_warning_fails_the_firmware_build(tmp_path) -> None:
    """-Werror really bites: the same flags on a file with an unused variable fail."""
    require_tools()
    bad = tmp_path / "bad.c"
    bad.write_text("int f(void) { int unused; return 0; }\n")
    flags = re.search(r"^WARN := (.*)$", (FIRMWARE_DIR / "Makefile").read_text(), re.M)[1]
    proc = subprocess.run(["avr-gcc", "-mmcu=atmega2560", "-c", *flags.split(), "-o",
                           str(tmp_path / "bad.o"), str(bad)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode != 0 and "unused" in proc.stderr


def test_host_unit_tests_of_the_firmware_logic() -> None:
    require_tools()
    make("host-tests")
    proc = subprocess.run([str(BUILD_DIR / "host" / "test_fw")], capture_output=True, text=True,
                          check=False, timeout=120)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(r"(\d+) checks, (\d+) failures", proc.stdout)
    assert m and int(m[1]) > 1000 and int(m[2]) == 0


def test_fuzz_frame_parser_bounded() -> None:
    require_tools(fuzz=True)
    make("fuzz")
    corpus = BUILD_DIR / "fuzz" / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(BUILD_DIR / "fuzz" / "fuzz_frame"), f"-max_total_time={FUZZ_SECONDS}",
         "-max_len=600", "-seed=1", "-print_final_stats=1", str(corpus),
         str(FIRMWARE_DIR / "fuzz" / "seeds")],
        capture_output=True, text=True, check=False, timeout=FUZZ_SECONDS + 60)
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    runs = re.search(r"stat::number_of_executed_units:\s+(\d+)", proc.stderr)
    assert runs and int(runs[1]) > 10_000, tail
    print(f"\nfuzzer: {runs[1]} inputs in {FUZZ_SECONDS} s, no crash, no sanitizer report")
