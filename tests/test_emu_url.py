"""The in-process transport ``emu://`` (hil/emulator/protocol_emu.py): the same run as over a
pty, byte for byte, through the same controller, client, link and codec.

``bms run`` over emulator processes on ptys (without --port) and ``bms run --port emu://...``
with the same seeds and scenario give the same ticks.csv and events.jsonl (tools/compare_runs.py,
as a user runs it) and the same truth, which goes beside the log folder in both. The bad-URL
rows are in tests/test_cli_errors.py (docs/errors.md); the protocol and abuse set runs on the
``emu`` backend in tests/test_board_protocol.py.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import serial

from bms.app.cli import main as bms_main
from boards.config import load_pack
from hil.client import BoardClient
from hil.emulator.protocol_emu import EmuSerial, EmuUrlError, emu_url, parse_emu_url, register
from hil.protocol import Measurement, Status

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "tools" / "compare_runs.py"
RUN = ("run", "--no-monitor", "--quiet")


def _run(argv: list[str]) -> int:
    try:
        return bms_main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(("pack", "duration_s"), [("ssb-23", 150.0), ("ssb-4x23", 60.0)])
def test_bms_run_over_emu_is_the_pty_run(pack: str, duration_s: float, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    seed = 4
    n = len(load_pack(pack).stacks)
    pty_log, emu_log = tmp_path / "pty", tmp_path / "emu"
    common = [*RUN, "--pack", pack, "--duration", str(duration_s)]
    assert _run([*common, "--scenario", "udds", "--seed", str(seed), "--log", str(pty_log)]) == 0
    # bms run --seed S seeds board k with S + k: the same boards as URLs
    ports = [a for k in range(n)
             for a in ("--port", emu_url(pack, k, seed=seed + k, scenario="udds"))]
    assert _run([*common, *ports, "--log", str(emu_log)]) == 0
    err = capsys.readouterr().err
    assert f"{n} in-process emulated board(s) (emu://); their truth in {emu_log}.truth" in err
    res = subprocess.run([sys.executable, str(COMPARE), str(pty_log), str(emu_log)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("identical"), res.stdout
    with (emu_log / "ticks.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= duration_s / load_pack(pack).controller.tick_s
    assert max(abs(float(r["current_a"])) for r in rows) > 1.0  # closed, the drive cycle ran
    # the truth: where --scenario puts it (beside the log, never in it), and the same plant
    for k in range(n):
        name = f"truth-stack{k + 1}.csv"
        assert (emu_log.with_name("emu.truth") / name).read_bytes() == \
            (pty_log.with_name("pty.truth") / name).read_bytes()
    assert not list(emu_log.glob("truth*"))


def test_a_url_names_bms_emulate_options(tmp_path: Path) -> None:
    opts = parse_emu_url(emu_url("ssb-4x23", 2, seed=7, scenario="udds", soc=0.3,
                                 truth_dir=tmp_path / "t d"))
    assert (opts.pack.name, opts.stack_index, opts.seed, opts.initial_soc) == (
        "ssb-4x23", 2, 7, 0.3)
    assert opts.scenario is not None and opts.scenario.name == "udds"
    assert opts.truth_path == tmp_path / "t d" / "truth-stack3.csv"
    assert opts.clock == "sim" and opts.board is not None and opts.board.name == "emu-23"
    # a pack file path: emu:///abs/path.yaml
    path_opts = parse_emu_url(emu_url(load_pack("ssb-23").path, 0))
    assert path_opts.pack.name == "ssb-23" and path_opts.seed == 0


@pytest.mark.parametrize(("url", "says", "code"), [
    ("emu://nope", "emu://nope: pack=nope: ", 3),
    ("emu://ssb-23?stack=1", "stack=1: pack ssb-23 has stacks 0..0", 2),
    ("emu://ssb-23?stack=x", "stack: invalid int value: 'x'", 2),
    ("emu://ssb-23?sede=1", "sede: unknown option; did you mean 'seed'?", 2),
    ("emu://ssb-23?pack=ssb-23", "pack: unknown option", 2),
    ("emu://ssb-23?seed=1&seed=2", "seed: given twice", 2),
    ("emu://ssb-23?soc=2", "soc=2: allowed 0..1", 2),
    ("emu://ssb-23?clock=real", "clock=real: the in-process board serves the sim clock only", 2),
    ("emu://ssb-23?scenario=nosuch", "scenario=nosuch: ", 3),
    ("emu://ssb-23#frag", "#frag: an emu:// URL has no fragment", 2),
])
def test_a_bad_url_is_one_line_naming_its_part(url: str, says: str, code: int) -> None:
    register()
    with pytest.raises(EmuUrlError) as exc:
        parse_emu_url(url)
    text = str(exc.value)
    assert "\n" not in text and text.startswith(url) and says in text, text
    assert exc.value.code == code
    with pytest.raises(ValueError, match="^" + url.replace("?", r"\?")):
        serial.serial_for_url(url)  # through pyserial, the same error


def test_the_board_answers_inside_the_write() -> None:
    """No thread, no process: the reply is waiting when write() returns, a read finds one whole
    frame at a time, and every open is a fresh board (t = 0, JUST_BOOTED)."""
    register()
    url = emu_url("ssb-23", 0, seed=2)
    port = serial.serial_for_url(url, timeout=0)
    assert isinstance(port, EmuSerial) and port.in_waiting > 0  # the boot INFO
    port.close()
    for _ in range(2):
        with BoardClient(url, timeout_s=0.01, retries=0) as c:
            seq = c.request_sample(0.5)
            link = c.link
            assert link is not None and link._ser.in_waiting > 0
            m = c.wait_measurement(seq)
            assert isinstance(m, Measurement) and m.timestamp_ms == 500
            assert m.status & Status.JUST_BOOTED and m.status & Status.SIM_CLOCK


def test_tick_bench_over_both_transports(capsys: pytest.CaptureFixture[str]) -> None:
    """bms bench --tick --transport both: the same controller over emu:// and over a pty, with
    the ratio of the wall times (the figures of docs/architecture.md come from it)."""
    from bms.app.bench_tick import main as tick_main

    assert tick_main(["--pack", "ssb-23", "--transport", "both", "--duration", "5",
                      "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["transport"] for r in records] == ["emu", "pty"]
    for r in records:
        assert r["ticks"] >= 50 and r["cpu_s"] > 0 and len(r["cpu_s_runs"]) == 1
    with pytest.raises(SystemExit):  # the in-process board refuses the real clock
        tick_main(["--transport", "emu", "--clock", "real"])


LINK_FAULTS = """schema: ssb-bms/scenario/1
name: link-faults
initial: {soc: 0.8, temperature_c: 25.0}
segments:
  - {kind: drive, csv: udds-current.csv}
faults:
  - {at_s: 20, fault: LINK_DROP, value: 0.3}
  - {at_s: 21, fault: LINK_DROP, clear: true}
  - {at_s: 30, fault: LINK_SILENCE, value: 0.15}
  - {at_s: 40, fault: REBOOT}
  - {at_s: 50, fault: LINK_CORRUPT, value: 0.004}
  - {at_s: 52, fault: LINK_CORRUPT, clear: true}
"""


@pytest.mark.slow
def test_link_faults_give_the_same_run_over_emu_and_pty(tmp_path: Path) -> None:
    """Dropped, silent, rebooted and corrupted replies: the host's timeouts and retries, the
    board's reset and the CRC errors land on the same ticks either way (a reply that never
    comes costs the timeout in wall time on both)."""
    scenario = tmp_path / "link-faults.yaml"
    scenario.write_text(LINK_FAULTS)
    common = [*RUN, "--duration", "55"]
    pty_log, emu_log = tmp_path / "pty", tmp_path / "emu"
    assert _run([*common, "--scenario", str(scenario), "--seed", "2", "--log", str(pty_log)]) == 0
    assert _run([*common, "--port", emu_url("ssb-23", 0, seed=2, scenario=scenario),
                 "--log", str(emu_log)]) == 0
    res = subprocess.run([sys.executable, str(COMPARE), str(pty_log), str(emu_log)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("identical"), res.stdout
    summary = json.loads((emu_log / "summary.json").read_text())
    board = summary["run"]["boards"][0] if "run" in summary else summary["boards"][0]
    link = board["link"]
    assert link["crc_errors"] + link.get("cobs_errors", 0) > 0 and link["timeouts"] > 0, link
