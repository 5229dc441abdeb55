"""Every user mistake and board-side failure of ``bms run`` / ``demo`` / ``check`` / ``emulate``
is one or two lines on stderr naming the thing, with the exit code of its class
(bms/app/errors.py), never a traceback; and a run's logs cannot be mixed or lost (issue 14 items
1 and 4). One test per row of docs/errors.md (ROWS below; a test checks that each row is
documented).

Argument and file rows call the ``bms`` entry point in this process (the same main() that
``python -m bms`` runs: nothing is replaced); rows that need a board, a second run, a signal or
a full disk run real processes against real ptys, real files and a real (small) tmpfs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bms.app.cli import main as bms_main
from bms.app.errors import ExitCode
from bms.runlog import LOCK, SUMMARY, TICKS, load_events, load_ticks
from hil.protocol import (
    Ack,
    FrameDecoder,
    Hello,
    Info,
    Nack,
    NackError,
    SetOutputs,
    encode_frame,
    encode_frame_reference,
)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"
PACK_HEAD = "schema: ssb-bms/pack/1\nbase: ssb-23\nname: bad\n"
STACK = ("stacks:\n  - name: stack-1\n    cells: {cells}\n    board: {board}\n"
         "    thermistor_cell_positions: {pos}\n")
SIX = "[0.0, 4.4, 8.8, 13.2, 17.6, 22.0]"

#: Input files of the rows, written into the test's folder: name -> bytes.
FILES: dict[str, bytes] = {
    "range.yaml": (PACK_HEAD + "controller:\n  tick_s: -0.1\n  measurement_timeout_s: 0.5\n"
                   ).encode(),
    "syntax.yaml": b"schema: ssb-bms/pack/1\nname: [unclosed\n",
    "latin1.yaml": (PACK_HEAD + "description: 'Zelle f\xfcr 23 Lagen'\n").encode("latin-1"),
    "deep.yaml": (PACK_HEAD + "x: " + "[" * 5000 + "]" * 5000 + "\n").encode(),
    "dup.yaml": (PACK_HEAD + "name: again\n").encode(),
    "typo.yaml": (PACK_HEAD + "controler:\n  tick_s: 0.1\n").encode(),
    "noboard.yaml": (PACK_HEAD + STACK.format(cells=23, board="emu-32", pos=SIX)).encode(),
    "two-ntc.yaml": (PACK_HEAD + STACK.format(cells=23, board="emu-23", pos="[0.0, 22.0]")
                     ).encode(),
    "cells22.yaml": (PACK_HEAD + STACK.format(
        cells=22, board="emu-23", pos="[0.0, 4.2, 8.4, 12.6, 16.8, 21.0]")).encode(),
    "state.json": b'{"format": "ssb-bms-state", "version": 1, "pack"',
    "a-file": b"not a folder\n",
    "vehicle-typo.yaml": (PACK_HEAD + "vehicle:\n  heartbeat_timeout: 1.0\n").encode(),
    "vehicle-short.yaml": (PACK_HEAD + "vehicle:\n  heartbeat_timeout_s: 0.1\n").encode(),
}


def _csv(header: str, rows: list[tuple[float, ...]]) -> bytes:
    return (header + "\n" + "".join(",".join(f"{x:g}" for x in r) + "\n" for r in rows)
            ).encode()


# Data files of bms fit / replay / plot / accuracy: a cycler test (one cell, a 1 A pulse from
# t = 10 to 20 s, 40 samples), a stack recording (ticks.csv's names, 33 cells), run logs.
CYCLER = "Time [s],Current [A],Voltage [V],Temperature [degC]"
_CYC = [(k, 1.0 if 10 <= k < 20 else 0.0, 3.75 if 10 <= k < 20 else 3.7, 25.0)
        for k in range(40)]
STACK33 = ",".join(["time_s", "current_a", *(f"cell{k:02d}_voltage_v" for k in range(1, 34)),
                    "t01_c"])
FILES.update({
    "cycler.csv": _csv(CYCLER, _CYC),
    "cycler-no-current.csv": _csv(CYCLER.replace("Current [A]", "I"), _CYC),
    "cycler-back.csv": _csv(CYCLER, [*_CYC[:20], (5.0, 1.0, 3.75, 25.0), *_CYC[21:]]),
    "cycler-short.csv": _csv(CYCLER, _CYC[:5]),
    "cycler-mv.csv": _csv(CYCLER, [(t, i, 1000 * v, c) for t, i, v, c in _CYC]),
    "cycler-latin1.csv": (CYCLER + "\n1,0,3.7,25 \xb0C\n").encode("latin-1"),
    "cycler-no-steps.csv": _csv(CYCLER, [(k, 1.0, 3.7, 25.0) for k in range(40)]),
    "stack33.csv": _csv(STACK33, [(0.1 * k, 0.0, *[3.7] * 33, 25.0) for k in range(40)]),
    "no-time.csv": _csv("t,i,v", [(0, 0, 3.7), (1, 0, 3.7)]),
    "one-row.csv": _csv(CYCLER, _CYC[:1]),
    "plot-empty/ticks.csv": b"time_s,current_a\n",
    "plot-back/ticks.csv": _csv("time_s,current_a", [(0, 1), (0.1, 1), (0.2, 1), (0.1, 1)]),
    "plot-ok/ticks.csv": _csv("time_s,current_a", [(0.1 * k, 1.0) for k in range(20)]),
    "truth-bad/manifest.json": b"{not json",
    "truth-ok/manifest.json": (
        b'{"files": [{"file": "ocv.csv", "kind": "ocv", "set": "Chen2020"}, '
        b'{"file": "hppc.csv", "kind": "hppc", "set": "Chen2020"}]}'),
})
# Run logs of ssb-23 for bms commission (the columns it reads): 3 rows; a load cell 200 kPa
# above the others (at the imbalance fault level); a residual of +150 kPa (the preload 150 kPa
# off the pack's); a run of another pack.
RUN23 = ("time_s,pressure_lc01_kpa,pressure_lc02_kpa,pressure_lc03_kpa,pressure_lc04_kpa,"
         "pressure_expected_kpa,pressure_residual_kpa")
FILES.update({
    "run-short/ticks.csv": _csv(RUN23, [(0.1 * k, *[1200.0] * 4, 1200.0, 0.0) for k in range(3)]),
    "run-tilt/ticks.csv": _csv(RUN23, [(0.1 * k, 1150.0, 1150.0, 1150.0, 1350.0, 1200.0, 0.0)
                                       for k in range(30)]),
    "run-off/ticks.csv": _csv(RUN23, [(0.1 * k, *[1350.0] * 4, 1200.0, 150.0)
                                      for k in range(30)]),
    "run-other/ticks.csv": _csv(RUN23, [(0.1 * k, *[1200.0] * 4, 1200.0, 0.0)
                                        for k in range(30)]),
    "run-other/events.jsonl": b'{"type": "meta", "pack": "ssb-4x23"}\n',
})
# Run folders of bms export: a good one, an empty ticks.csv, a header only, a CSV that is not a
# run log, a state code that is not a whole number.
FILES.update({
    "export-ok/ticks.csv": _csv("time_s,state,current_a", [(0.1 * k, 2, 1.5) for k in range(5)]),
    "export-empty/ticks.csv": b"",
    "export-header/ticks.csv": b"time_s,state,current_a\n",
    "export-notlog/ticks.csv": _csv("t,i,v", [(0, 0, 3.7), (1, 0, 3.7)]),
    "export-code/ticks.csv": _csv("time_s,state", [(0.0, 2), (0.1, 2.5)]),
})


# bms campaign specs: an unknown top-level key (seed for seeds), an unknown emulator fault, an
# unknown bench case, a bench case with an injection key, an unknown report table.
_CAMPAIGN = b"schema: ssb-bms/campaign/1\nduration_s: 20\nscenarios: [udds]\n"
FILES.update({
    "campaign-typo.yaml": _CAMPAIGN + b"seed: [1]\n",
    "campaign-fault.yaml": _CAMPAIGN + b"seeds: [1]\nfaults:\n  - {name: x, fault: VTAP_OPN}\n",
    "campaign-bench.yaml": _CAMPAIGN + b"seeds: [1]\nfaults:\n  - {name: x, bench: board rest}\n",
    "campaign-bench-key.yaml": _CAMPAIGN + b"seeds: [1]\nfaults:\n"
                               b"  - {name: x, bench: board reset, at_s: 5}\n",
    "campaign-table.yaml": _CAMPAIGN + b"seeds: [1]\ntables: [per-seed]\n",
    "campaign-fault-scenario.yaml": _CAMPAIGN + b"seeds: [1]\nfaults:\n"
                                    b"  - {name: x, fault: COOLANT_LOSS, scenario: fast-chrage}\n",
})


@dataclass(frozen=True)
class Row:
    """One user mistake: the command (``{d}`` is the test's folder), the exit code, what the
    first line must say, and how it runs ("call": this process; "proc": a process of its
    own; "board:KIND": a process against a fake board on a pty)."""

    id: str
    argv: tuple[str, ...]
    code: ExitCode
    says: str
    how: str = "call"


U, C, B, IO = ExitCode.USAGE, ExitCode.CONFIG, ExitCode.BOARD, ExitCode.IO
RUN = ("run", "--no-monitor", "--quiet", "--log", "{d}/log")
FIT = ("fit", "--ocv", "{d}/cycler.csv", "--pulses", "{d}/cycler.csv", "-o", "{d}/fit.yaml")
REPLAY = ("replay", "--data", "{d}/cycler.csv", "-o", "{d}/r.csv")
ACCURACY = ("accuracy", "--out", "{d}/acc", "--truth-dir")
COMMISSION = ("commission", "--state", "{d}/commissioned.json", "--from-run")
ROWS: list[Row] = [
    # ---- bms commission (bms/app/commission.py): usage 2, state file or run log 3, I/O 5
    Row("commission-state-missing", ("commission", "--from-run", "{d}/run-off"), U,
        "the following arguments are required: --state"),
    Row("commission-port-with-from-run", (*COMMISSION, "{d}/run-off", "--port", "/dev/null"), U,
        "--port is for a live commissioning; --from-run {d}/run-off reads a recorded run"),
    Row("commission-run-missing", (*COMMISSION, "{d}/nope"), IO,
        "run log {d}/nope: no ticks.csv"),
    Row("commission-state-corrupt", ("commission", "--state", "{d}/state.json", "--from-run",
                                     "{d}/run-off"), C, "state file {d}/state.json: corrupt"),
    Row("commission-other-pack", (*COMMISSION, "{d}/run-other"), C,
        "run log {d}/run-other: a run of pack 'ssb-4x23', not 'ssb-23'"),
    Row("commission-too-short", (*COMMISSION, "{d}/run-short"), C,
        "run log {d}/run-short: stack stack-1: 3 rows with every load cell valid, at least 10"),
    Row("commission-tilt", (*COMMISSION, "{d}/run-tilt"), C,
        "static load-cell imbalance 200.0 kPa is at or above the imbalance fault level 150"),
    Row("commission-preload-off", (*COMMISSION, "{d}/run-off"), C,
        "stack stack-1: preload 1150 kPa is +150 kPa off the pack file's 1000 kPa"),
    # ---- usage: a command-line value or options that contradict each other (exit 2)
    Row("unknown-command", ("frobnicate",), U, "unknown command 'frobnicate'"),
    Row("duration-nan", (*RUN, "--duration", "nan"), U, "'nan' is not a finite number of s"),
    Row("duration-inf", (*RUN, "--duration", "inf"), U, "'inf' is not a finite number of s"),
    Row("duration-negative", (*RUN, "--duration", "-1"), U, "'-1' is not a finite number"),
    Row("duration-zero", (*RUN, "--duration", "0"), U, "'0' is not a finite number of s"),
    Row("duration-text", (*RUN, "--duration", "ten"), U, "'ten' is not a number of seconds"),
    Row("timeout-negative", (*RUN, "--timeout", "-1"), U, "argument --timeout: '-1'"),
    Row("timeout-zero", (*RUN, "--timeout", "0"), U, "argument --timeout: '0'"),
    Row("soc-above-one", (*RUN, "--soc", "2"), U, "argument --soc: '2' is not in [0, 1]"),
    Row("soc-nan", (*RUN, "--soc", "nan"), U, "argument --soc: 'nan' is not in [0, 1]"),
    Row("clock-unknown", (*RUN, "--clock", "fast"), U, "argument --clock: invalid choice"),
    Row("option-unknown", (*RUN, "--durtaion", "5"), U, "unrecognized arguments: --durtaion"),
    Row("port-with-scenario", (*RUN, "--port", "/dev/null", "--scenario", "udds"), U,
        "--scenario applies to the emulators bms run starts itself"),
    Row("port-with-soc", (*RUN, "--port", "/dev/null", "--soc", "0.5"), U,
        "--soc applies to the emulators bms run starts itself"),
    Row("port-with-seed", (*RUN, "--port", "/dev/null", "--seed", "3"), U,
        "--seed applies to the emulators bms run starts itself"),
    Row("port-with-truth-dir", (*RUN, "--port", "/dev/null", "--truth-dir", "{d}/t"), U,
        "--truth-dir applies to the emulators"),
    Row("port-count", (*RUN, "--pack", "ssb-4x23", "--port", "/dev/null"), U,
        "pack ssb-4x23 has 4 stack(s); give one --port per stack"),
    Row("port-twice", (*RUN, "--pack", "ssb-4x23", "--port", "/dev/a", "--port", "/dev/a",
                       "--port", "/dev/b", "--port", "/dev/c"), U,
        "--port: the same port is given twice"),
    Row("lockstep-real-clock", (*RUN, "--lockstep", "--clock", "real", "--port", "/dev/null"),
        U, "--lockstep applies to the sim clock only"),
    Row("emu-stack-index", (*RUN, "--port", "emu://ssb-23?stack=1"), U,
        "emu://ssb-23?stack=1: stack=1: pack ssb-23 has stacks 0..0"),
    Row("emu-option-unknown", (*RUN, "--port", "emu://ssb-23?sede=1"), U,
        "emu://ssb-23?sede=1: sede: unknown option; did you mean 'seed'?"),
    Row("emu-option-value", (*RUN, "--port", "emu://ssb-23?seed=x"), U,
        "emu://ssb-23?seed=x: seed: invalid int value: 'x'"),
    Row("emu-real-clock", (*RUN, "--clock", "real", "--port", "emu://ssb-23"), U,
        "--clock real: emu:// ports serve the sim clock only"),
    Row("emu-url-real-clock", (*RUN, "--port", "emu://ssb-23?clock=real"), U,
        "emu://ssb-23?clock=real: clock=real: the in-process board serves the sim clock only"),
    Row("emu-pack-unknown", (*RUN, "--port", "emu://nope"), C,
        "emu://nope: pack=nope: nope: <pack>: 'nope' is invalid"),
    Row("emu-scenario-unknown", (*RUN, "--port", "emu://ssb-23?scenario=nosuch"), C,
        "emu://ssb-23?scenario=nosuch: scenario=nosuch: "),
    Row("demo-duration-zero", ("demo", "--duration", "0", "--log", "{d}/log"), U,
        "argument --duration: '0'"),
    Row("demo-multi-stack", ("demo", "--pack", "ssb-4x23", "--log", "{d}/log"), U,
        "--pack ssb-4x23: the demo runs one stack; pack ssb-4x23 has 4"),
    Row("check-board-as-pack", ("check", "--pack", "boards/emu-23.yaml"), U,
        "this is a board profile (ssb-bms/board/1)"),
    Row("check-pack-and-board", ("check", "--pack", "ssb-23", "--board", "emu-23"), U,
        "argument --board: not allowed with argument --pack"),
    Row("emulate-soc", ("emulate", "--soc", "2"), U, "--soc 2: allowed 0..1"),
    Row("emulate-board-index", ("emulate", "--board", "7"), U,
        "--board 7: pack ssb-23 has stacks 0..0"),
    Row("emulate-board-twice", ("emulate", "--pack", "ssb-4x23", "--board", "1", "--board",
                                "1"), U, "a board is listed twice"),
    Row("emulate-truth-every", ("emulate", "--truth-every", "0"), U,
        "--truth-every 0: allowed >= 1"),
    Row("emulate-temperature-nan", ("emulate", "--temperature", "nan"), U,
        "--temperature nan: allowed a finite number"),
    Row("fw-soc", ("emulate", "--firmware", "--soc", "2"), U,
        "bms emulate --firmware: --soc 2: allowed 0..1"),
    Row("fw-speed", ("emulate", "--firmware", "--speed", "nan"), U,
        "--speed nan: allowed a finite number >= 0"),
    Row("fw-board-index", ("emulate", "--firmware", "--board", "7"), U,
        "--board 7: pack ssb-23 has stacks 0..0"),
    Row("fw-clock-unknown", ("emulate", "--firmware", "--clock", "fast"), U,
        "argument --clock: invalid choice: 'fast'"),
    Row("fit-columns-spec", (*FIT, "--columns", "volt=U"), U,
        "--columns 'volt=U': expected KEY=COLUMN pairs"),
    Row("fit-out-not-yaml", ("fit", "--ocv", "{d}/cycler.csv", "--pulses", "{d}/cycler.csv",
                             "-o", "{d}/fit.txt"), U, "-o {d}/fit.txt: a pack file ends in .yaml"),
    Row("fit-option-missing", ("fit", "--ocv", "{d}/cycler.csv", "-o", "{d}/fit.yaml"), U,
        "the following arguments are required: --pulses"),
    Row("replay-soc0", (*REPLAY, "--soc0", "2"), U, "--soc0 2.0: expected a fraction in [0, 1]"),
    Row("replay-json-without-truth", (*REPLAY, "--json", "{d}/s.json"), U,
        "--json writes the score against --truth"),
    Row("replay-settle-nan", (*REPLAY, "--settle-s", "nan"), U,
        "--settle-s nan: expected a number >= 0"),
    Row("accuracy-sets-unknown", (*ACCURACY, "{d}/truth-ok", "--sets", "Nope"), U,
        "--sets: set Nope is not in {d}/truth-ok/manifest.json (it has Chen2020)"),
    Row("accuracy-soc-errors", (*ACCURACY, "{d}/truth-ok", "--soc-errors", "0.2,x"), U,
        "--soc-errors '0.2,x': expected comma-separated numbers"),
    Row("accuracy-soc-errors-range", (*ACCURACY, "{d}/truth-ok", "--soc-errors", "1.5"), U,
        "--soc-errors 1.5: fractions in (-1, 1)"),
    Row("bench-budget-nan", ("bench", "--budget-s", "nan"), U,
        "bms bench: argument --budget-s: 'nan' is not a finite number of seconds > 0"),
    Row("bench-sizes-text", ("bench", "--sizes", "23,x"), U,
        "bms bench: argument --sizes: '23,x' is not comma-separated cell counts >= 1"),
    Row("bench-tick-duration-negative", ("bench", "--tick", "--duration", "-1"), U,
        "bms bench --tick: argument --duration: '-1' is not a finite number of seconds > 0"),
    Row("bench-tick-tick-s-zero", ("bench", "--tick", "--tick-s", "0"), U,
        "bms bench --tick: argument --tick-s: '0' is not a finite number of seconds > 0"),
    Row("campaign-workers-zero", ("campaign", "reliability", "--workers", "0"), U,
        "bms campaign: argument --workers: '0' is not a whole number >= 1"),
    Row("campaign-executor-unknown", ("campaign", "reliability", "--executor", "ray"), U,
        "--executor ray: not one of local, dask, dask://HOST:PORT"),
    Row("campaign-executor-no-port", ("campaign", "reliability", "--executor", "dask://host"),
        U, "--executor dask://host: give the scheduler as dask://HOST:PORT"),
    Row("campaign-unknown", ("campaign", "nosuch"), C,
        "nosuch: <spec>: no such file and not a built-in campaign; built-ins: estimation, "
        "faults, latency, leak, reliability"),
    Row("campaign-key-typo", ("campaign", "{d}/campaign-typo.yaml"), C,
        "campaign-typo.yaml: seed: unknown key; did you mean 'seeds'?"),
    Row("campaign-fault-unknown", ("campaign", "{d}/campaign-fault.yaml"), C,
        "faults[0].fault: 'VTAP_OPN' is not an emulator fault; did you mean 'VTAP_OPEN'?"),
    Row("campaign-bench-unknown", ("campaign", "{d}/campaign-bench.yaml"), C,
        "faults[0].bench: 'board rest' is not a bench case of bms.app.latency; did you mean "
        "'board reset'?"),
    Row("campaign-bench-with-injection", ("campaign", "{d}/campaign-bench-key.yaml"), C,
        "faults[0].at_s: a bench case takes only name and bench"),
    Row("campaign-fault-scenario-unknown", ("campaign", "{d}/campaign-fault-scenario.yaml"), C,
        "faults[0].scenario: 'fast-chrage': no such file and not a shipped scenario"),
    Row("campaign-table-unknown", ("campaign", "{d}/campaign-table.yaml"), C,
        "tables[0]: 'per-seed' is not a report table; did you mean 'per_seed'?"),
    Row("campaign-spec-missing", ("campaign", "{d}/nope.yaml"), IO,
        "{d}/nope.yaml: cannot be read: No such file or directory"),
    Row("campaign-out-unwritable", ("campaign", "reliability", "--out", "{d}/cycler.csv/x"),
        IO, "--out {d}/cycler.csv/x: cannot be written"),
    # ---- a file given to the run: pack file, board profile, scenario, state file (exit 3)
    Row("pack-missing", (*RUN, "--pack", "{d}/nope.yaml"), C, "nope.yaml"),
    Row("pack-value-out-of-range", (*RUN, "--pack", "{d}/range.yaml"), C, "controller.tick_s"),
    Row("pack-not-yaml", (*RUN, "--pack", "{d}/syntax.yaml"), C, "valid YAML"),
    Row("pack-not-utf8", (*RUN, "--pack", "{d}/latin1.yaml"), C, "not UTF-8 text"),
    Row("pack-5000-deep", (*RUN, "--pack", "{d}/deep.yaml"), C, "nested too deeply"),
    Row("pack-duplicate-key", (*RUN, "--pack", "{d}/dup.yaml"), C, "duplicate key 'name'"),
    Row("pack-typo-section", (*RUN, "--pack", "{d}/typo.yaml"), C, "controler"),
    Row("pack-unknown-board", (*RUN, "--pack", "{d}/noboard.yaml"), C,
        "stacks[0].board: no board profile 'emu-32'"),
    Row("check-unknown-board", ("check", "--pack", "{d}/noboard.yaml"), C,
        "stacks[0].board: no board profile 'emu-32'"),
    Row("pack-thermistor-positions", (*RUN, "--pack", "{d}/two-ntc.yaml"), C,
        "stacks[0].thermistor_cell_positions: 2 position(s), but board emu-23"),
    Row("check-thermistor-positions", ("check", "--pack", "{d}/two-ntc.yaml"), C,
        "stacks[0].thermistor_cell_positions: 2 position(s), but board emu-23"),
    Row("pack-cell-count", (*RUN, "--pack", "{d}/cells22.yaml"), C,
        "stacks[0].cells: 22 cells, but board emu-23"),
    Row("scenario-missing", (*RUN, "--scenario", "nosuch"), C, "scenario: "),
    Row("demo-scenario-missing", ("demo", "--scenario", "nosuch", "--log", "{d}/log"), C,
        "nosuch.yaml"),
    Row("state-file-corrupt", (*RUN, "--state", "{d}/state.json"), C, "corrupt or truncated"),
    Row("state-file-unwritable", (*RUN, "--state", "/proc/nope/state.json"), C,
        "/proc/nope/state.json"),
    Row("check-board-unknown", ("check", "--board", "nosuch"), C,
        "'nosuch' is invalid; allowed: one of emu-23"),
    Row("emulate-pack-missing", ("emulate", "--pack", "{d}/nope.yaml"), C, "nope.yaml"),
    Row("emulate-scenario-missing", ("emulate", "--scenario", "nosuch"), C, "nosuch.yaml"),
    Row("emulate-profile-unknown", ("emulate", "--profile", "nosuch"), C, "'nosuch'"),
    Row("emulate-thermistor-positions", ("emulate", "--pack", "{d}/two-ntc.yaml"), C,
        "board emu-23 has 6 thermistors, stack stack-1 places 2"),
    Row("fw-pack-missing", ("emulate", "--firmware", "--pack", "{d}/nope.yaml"), C,
        "bms emulate --firmware: {d}/nope.yaml: <file>"),
    Row("bench-tick-pack-unknown", ("bench", "--tick", "--pack", "nosuch", "--duration", "1"),
        C, "bms bench: configuration error: nosuch: <pack>: 'nosuch' is invalid"),
    # bms fit / replay / plot / accuracy: a data file that was read but cannot be used
    Row("fit-column-missing", ("fit", "--ocv", "{d}/cycler-no-current.csv", "--pulses",
                               "{d}/cycler.csv", "-o", "{d}/fit.yaml"), C,
        "{d}/cycler-no-current.csv: no column current 'Current [A]'; found Time [s], I"),
    Row("fit-time-backwards", ("fit", "--ocv", "{d}/cycler-back.csv", "--pulses",
                               "{d}/cycler.csv", "-o", "{d}/fit.yaml"), C,
        "{d}/cycler-back.csv: time does not increase at data row 21 (19 s -> 5 s)"),
    Row("fit-too-few-samples", ("fit", "--ocv", "{d}/cycler-short.csv", "--pulses",
                                "{d}/cycler.csv", "-o", "{d}/fit.yaml"), C,
        "{d}/cycler-short.csv: 5 samples; a test has at least 20"),
    Row("fit-millivolts", ("fit", "--ocv", "{d}/cycler-mv.csv", "--pulses", "{d}/cycler.csv",
                           "-o", "{d}/fit.yaml"), C,
        "{d}/cycler-mv.csv: voltage 3700 V in data row 1 is not a cell voltage (0.5..6 V)"),
    Row("fit-not-utf8", ("fit", "--ocv", "{d}/cycler-latin1.csv", "--pulses", "{d}/cycler.csv",
                         "-o", "{d}/fit.yaml"), C, "{d}/cycler-latin1.csv: not UTF-8 text"),
    Row("fit-base-unknown", (*FIT, "--base", "nosuch"), C, "configuration error: nosuch"),
    Row("replay-no-time-column", ("replay", "--data", "{d}/no-time.csv", "-o", "{d}/r.csv"), C,
        "{d}/no-time.csv: no time column: expected 'Time [s]'"),
    Row("replay-time-backwards", ("replay", "--data", "{d}/cycler-back.csv", "-o",
                                  "{d}/r.csv"), C,
        "{d}/cycler-back.csv: time does not increase at data row 21 (19 s -> 5 s)"),
    Row("replay-one-sample", ("replay", "--data", "{d}/one-row.csv", "-o", "{d}/r.csv"), C,
        "{d}/one-row.csv: fewer than two samples"),
    Row("replay-sign-unknown", ("replay", "--data", "{d}/cycler-no-steps.csv", "-o",
                                "{d}/r.csv"), C,
        "{d}/cycler-no-steps.csv: no current steps to tell the current's sign from"),
    Row("replay-cells-vs-pack", ("replay", "--data", "{d}/stack33.csv", "-o", "{d}/r.csv"), C,
        "{d}/stack33.csv: 33 cells is not a stack of pack ssb-23"),
    Row("replay-pack-missing", (*REPLAY, "--pack", "{d}/nope.yaml"), C,
        "configuration error: {d}/nope.yaml"),
    Row("plot-no-rows", ("plot", "{d}/plot-empty"), C,
        "{d}/plot-empty/ticks.csv: no complete rows with a numeric time_s column"),
    Row("plot-time-backwards", ("plot", "{d}/plot-back"), C,
        "{d}/plot-back/ticks.csv: time_s does not increase at data row 4 (0.2 s -> 0.1 s)"),
    Row("accuracy-manifest-not-json", (*ACCURACY, "{d}/truth-bad"), C,
        "{d}/truth-bad/manifest.json: not a truth manifest"),
    # ---- CAN (bms run --can, bms vcu): usage 2, the pack's vehicle section 3, a bus 4
    Row("can-no-channel", (*RUN, "--can", "virtual"), U,
        "--can virtual: expected INTERFACE:CHANNEL"),
    Row("can-interface-unknown", (*RUN, "--can", "vcan:0"), U,
        "--can vcan:0: unknown python-can interface 'vcan'; did you mean 'pcan'?"),
    Row("can-log-format", (*RUN, "--can", "virtual:x", "--can-log", "{d}/can.txt"), U,
        "--can-log {d}/can.txt: unknown log format '.txt'; allowed: .blf, .asc, .mf4"),
    Row("can-log-without-can", (*RUN, "--can-log", "{d}/can.blf"), U,
        "--can-log needs --can INTERFACE:CHANNEL"),
    Row("can-sim-clock", (*RUN, "--can", "virtual:x"), U,
        "--can needs --clock real (the vehicle runs on wall time)"),
    Row("vcu-interface-unknown", ("vcu", "nosuch:0"), U,
        "channel nosuch:0: unknown python-can interface 'nosuch'"),
    Row("pack-vehicle-typo", (*RUN, "--pack", "{d}/vehicle-typo.yaml"), C,
        "vehicle.heartbeat_timeout: unknown key; did you mean 'heartbeat_timeout_s'?"),
    Row("pack-vehicle-timeout-short", (*RUN, "--pack", "{d}/vehicle-short.yaml"), C,
        "vehicle.heartbeat_timeout_s: 0.1 is invalid; allowed: at least two ticks"),
    Row("can-cannot-open", (*RUN, "--clock", "real", "--can", "serial:{d}/nope"), B,
        "--can serial:{d}/nope: cannot open: [Errno 2] could not open port {d}/nope"),
    Row("vcu-cannot-open", ("vcu", "serial:{d}/nope"), B,
        "channel serial:{d}/nope: cannot open: [Errno 2] could not open port"),
    # ---- a board (or the emulator started for it) failed (exit 4)
    Row("port-missing", (*RUN, "--port", "/dev/ttyACM7"), B,
        "cannot open /dev/ttyACM7: No such file or directory", "proc"),
    Row("port-not-serial", (*RUN, "--port", "{d}/a-file"), B, "not a serial port", "proc"),
    Row("board-silent", RUN, B, "no INFO from the board", "board:silent"),
    Row("board-without-info", RUN, B, "no INFO from the board", "board:no-info"),
    Row("board-protocol-version", RUN, B, "speaks protocol version 2; this host speaks 1",
        "board:version"),
    Row("board-frame-version", RUN, B, "sends protocol version 2 frames", "board:frames-v2"),
    Row("board-channel-count", RUN, B, "reports 22 cells, 6 thermistors, 4 load cells",
        "board:channels"),
    Row("board-nack-outputs", RUN, B, "board refused SET_OUTPUTS: NACK STATE", "board:nack"),
    Row("board-sim-clock", RUN, B, "runs the sim clock; this run uses the real clock: pass "
        "--clock sim", "board:sim-clock"),
    # ---- the run's own outputs: log folder, monitor socket, disk (exit 5)
    Row("log-is-a-file", ("run", "--no-monitor", "--quiet", "--log", "{d}/a-file"), IO,
        "--log {d}/a-file: cannot be the log folder: File exists"),
    Row("log-not-creatable", ("run", "--no-monitor", "--quiet", "--log", "/proc/nope/log"), IO,
        "--log /proc/nope/log: cannot be the log folder"),
    Row("log-under-a-file", ("run", "--no-monitor", "--quiet", "--log", "{d}/a-file/log"), IO,
        "cannot be the log folder: Not a directory"),
    Row("demo-log-is-a-file", ("demo", "--log", "{d}/a-file"), IO,
        "--log {d}/a-file: cannot be the log folder"),
    Row("monitor-socket-not-creatable", ("run", "--quiet", "--log", "{d}/log",
                                         "--monitor-socket", "/proc/nope/bms.sock"), IO,
        "--monitor-socket /proc/nope/bms.sock: cannot be made: No such file or directory"),
    Row("emulate-truth-not-creatable", ("emulate", "--truth", "/proc/nope/truth.csv"), IO,
        "/proc/nope/truth.csv: No such file or directory"),
    Row("log-in-use", ("run", "--no-monitor", "--quiet", "--log", "{busy}"), IO,
        "--log {busy}: in use by bms run pid {pid}", "busy"),
    Row("monitor-socket-in-use", ("run", "--quiet", "--log", "{d}/log", "--monitor-socket",
                                  "{sock}"), IO, "--monitor-socket {sock}: served by bms run "
        "pid {pid}", "busy"),
    # bms fit / replay / plot / accuracy: a file the system refuses (read or written)
    Row("fit-data-missing", ("fit", "--ocv", "{d}/nope.csv", "--pulses", "{d}/cycler.csv",
                             "-o", "{d}/fit.yaml"), IO,
        "{d}/nope.csv: cannot read (No such file or directory)"),
    Row("fit-data-is-a-folder", ("fit", "--ocv", "{d}", "--pulses", "{d}/cycler.csv", "-o",
                                 "{d}/fit.yaml"), IO, "{d}: cannot read (Is a directory)"),
    Row("fit-out-folder-missing", ("fit", "--ocv", "{d}/cycler.csv", "--pulses",
                                   "{d}/cycler.csv", "-o", "{d}/no/fit.yaml"), IO,
        "-o {d}/no/fit.yaml: folder {d}/no does not exist"),
    Row("replay-data-missing", ("replay", "--data", "{d}/nope.csv", "-o", "{d}/r.csv"), IO,
        "{d}/nope.csv: cannot read (No such file or directory)"),
    Row("replay-truth-missing", (*REPLAY, "--truth", "{d}/nope.csv"), IO,
        "{d}/nope.csv: cannot read (No such file or directory)"),
    Row("replay-out-not-writable", ("replay", "--data", "{d}/cycler.csv", "-o",
                                    "/proc/nope/r.csv"), IO,
        "/proc/nope/r.csv: cannot write (No such file or directory)"),
    Row("plot-log-missing", ("plot", "{d}/nope"), IO,
        "{d}/nope/ticks.csv: cannot read (No such file or directory)"),
    Row("plot-out-not-writable", ("plot", "{d}/plot-ok", "-o", "/proc/nope/run.png"), IO,
        "/proc/nope/run.png: cannot write (No such file or directory)"),
    Row("accuracy-truth-dir-missing", (*ACCURACY, "{d}/nope"), IO,
        "{d}/nope/manifest.json: not found"),
    Row("accuracy-fits-from-missing", (*ACCURACY, "{d}/truth-ok", "--fits-from", "{d}/nope"),
        IO, "--fits-from {d}/nope: {d}/nope/fit/Chen2020/Chen2020.yaml not found"),
    # ---- bms export: a command-line value (2), a folder that is not a usable run (3), an
    # input it cannot read or an output it cannot write (5)
    Row("export-format-unknown", ("export", "{d}/export-ok", "--to", "xls"), U,
        "argument --to: invalid choice: 'xls'"),
    Row("export-channels-no-match", ("export", "{d}/export-ok", "--to", "csv", "--channels",
                                     "cell*"), U, "--channels 'cell*': matches no column"),
    Row("export-out-is-the-log", ("export", "{d}/export-ok", "--to", "csv", "-o",
                                  "{d}/export-ok/ticks.csv"), U, "is the run's own log"),
    Row("export-chunk-rows-zero", ("export", "{d}/export-ok", "--to", "mf4", "--chunk-rows",
                                   "0"), U,
        "argument --chunk-rows: '0' is not a whole number >= 1"),
    Row("export-mf4-master-only", ("export", "{d}/export-ok", "--to", "mf4", "--channels",
                                   "time_s"), U, "--channels time_s: selects only time_s, the "
        "MF4 file's master"),
    Row("export-not-a-run", ("export", "{d}", "--to", "mf4"), C,
        "{d}: not a run folder (no ticks.csv)"),
    Row("export-empty", ("export", "{d}/export-empty", "--to", "mf4"), C,
        "{d}/export-empty/ticks.csv: empty (no header line): the run wrote nothing"),
    Row("export-header-only", ("export", "{d}/export-header", "--to", "parquet"), C,
        "{d}/export-header/ticks.csv: no complete rows (header only)"),
    Row("export-not-a-log", ("export", "{d}/export-notlog", "--to", "mf4"), C,
        "the header's first column is 't', not time_s"),
    Row("export-code-not-whole", ("export", "{d}/export-code", "--to", "parquet"), C,
        "column state at time_s 0.1: 2.5 is not a whole number in 0..255 (a code"),
    Row("export-run-missing", ("export", "{d}/nope", "--to", "mf4"), IO,
        "{d}/nope: cannot read (No such file or directory)"),
    Row("export-out-folder-missing", ("export", "{d}/export-ok", "--to", "mf4", "-o",
                                      "/proc/nope/run.mf4"), IO,
        "-o /proc/nope/run.mf4: folder /proc/nope does not exist"),
    Row("export-out-is-a-folder", ("export", "{d}/export-ok", "--to", "parquet", "-o", "{d}"),
        IO, "-o {d}: cannot write (Is a directory)"),
    # bms emulate --firmware: the simulated MCU cannot be built or did not start
    Row("fw-tools-missing", ("emulate", "--firmware"), B, "bms emulate --firmware: cannot build "
        "the firmware and its simavr harness: missing Debian packages: make gcc-avr", "no-tools"),
    Row("fw-elf-not-elf", ("emulate", "--firmware", "--elf", "{d}/a-file"), B,
        "bms emulate --firmware: the simavr harness did not start: fw_harness: cannot read "
        "{d}/a-file"),
    Row("fw-elf-missing", ("emulate", "--firmware", "--elf", "{d}/nope.elf"), IO,
        "bms emulate --firmware: --elf {d}/nope.elf: cannot read (No such file or directory)"),
    # ---- bms monitor (the cases with sockets and a running BMS: tests/test_monitor_cli.py)
    Row("monitor-no-bms", ("monitor", "{d}/none.sock"), IO,
        "{d}/none.sock: no BMS is running there (no such socket)"),
    Row("monitor-not-a-socket", ("monitor", "{d}/a-file"), IO, "{d}/a-file: not a socket"),
    Row("monitor-size", ("monitor", "--size", "10x5"), U, "argument --size: '10x5': at least"),
]

# Rows documented elsewhere in docs/errors.md with their own tests below (not argv rows).
PROCESS_ROWS = ["disk-full", "sigterm", "sigkill", "default-monitor-socket-in-use", "debug",
                "board-lost-mid-run", "failed-start", "internal-error", "internal-error-debug",
                "export-disk-full"]


def _fill(text: str, ctx: dict[str, str]) -> str:
    for k, v in ctx.items():
        text = text.replace("{" + k + "}", v)
    return text


def _check_lines(err: str, out: str, code: int, row: Row, ctx: dict[str, str]) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err and "Traceback" not in out, err
    assert 1 <= len(lines) <= 2, err
    assert lines[0].startswith(("bms ", "bms:")), err
    assert len(lines) == 1 or lines[1].startswith("  hint: "), err
    assert _fill(row.says, ctx) in lines[0], (row.says, err)
    assert code == row.code, (code, err)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name, data in FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return tmp_path


def _call(argv: list[str]) -> int:
    try:
        return bms_main(argv)
    except SystemExit as exc:  # argparse (usage): what `python -m bms` exits with
        return int(exc.code or 0)


CALL_ROWS = [r for r in ROWS if r.how == "call"]
PROC_ROWS = [r for r in ROWS if r.how == "proc"]
BOARD_ROWS = [r for r in ROWS if r.how.startswith("board:")]
NO_TOOLS_ROWS = [r for r in ROWS if r.how == "no-tools"]


@pytest.mark.parametrize("row", CALL_ROWS, ids=[r.id for r in CALL_ROWS])
def test_mistake_is_one_line_and_its_exit_code(row: Row, files: Path, capsys, monkeypatch
                                               ) -> None:
    monkeypatch.chdir(ROOT)
    ctx = {"d": str(files)}
    code = _call([_fill(a, ctx) for a in row.argv])
    out, err = capsys.readouterr()
    _check_lines(err, out, code, row, ctx)
    if row.argv[0] in ("run", "demo") and row.code in (U, C):
        assert not (files / "log").exists()  # refused before anything started


def _bms(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0
         ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bms", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def _run_log_error(log: Path) -> dict:
    """The failure as the run's log keeps it: the error event and summary.json's error."""
    events = [e for e in load_events(log) if e.get("type") == "error"]
    summary = json.loads((log / SUMMARY).read_text())
    assert len(events) == 1 and summary["error"]["message"] == events[0]["message"]
    return summary["error"]


@pytest.mark.parametrize("row", PROC_ROWS, ids=[r.id for r in PROC_ROWS])
def test_port_mistake_is_one_line_exit_4_and_logged(row: Row, files: Path) -> None:
    ctx = {"d": str(files)}
    res = _bms(*[_fill(a, ctx) for a in row.argv])
    _check_lines(res.stderr, res.stdout, res.returncode, row, ctx)
    error = _run_log_error(files / "log")
    assert error["kind"] == "board" and error["exit_code"] == 4
    assert error["message"] in res.stderr


# ------------------------------------------------------------------ fake boards on a pty

# A board on its own timer (no SIM_CLOCK capability): what `bms run --port` expects by default.
INFO = Info(protocol_version=1, board_kind=1, fw_version=(0, 1, 0), n_cells=23,
            n_thermistors=6, n_load_cells=4, heartbeat_timeout_ms=1000, capabilities=0,
            boot_id=0x1234, board_id="fake-23")


class FakeBoard:
    """A board that misbehaves in one way, on the master side of a real pty: it decodes the
    host's frames with the protocol's own decoder and answers as ``kind`` says."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.decoder = FrameDecoder()
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _answer(self, msg: object, seq: int) -> bytes | None:
        if isinstance(msg, Hello):
            if self.kind == "silent":
                return None
            if self.kind == "no-info":
                return encode_frame(Ack(int(Hello.TYPE)), seq)
            if self.kind == "version":
                return encode_frame(Info(**{**_fields(INFO), "protocol_version": 2}), seq)
            if self.kind == "frames-v2":
                return encode_frame_reference(INFO, seq, version=2)
            if self.kind == "channels":
                return encode_frame(Info(**{**_fields(INFO), "n_cells": 22}), seq)
            if self.kind == "sim-clock":
                return encode_frame(Info(**{**_fields(INFO), "capabilities": 1}), seq)
            return encode_frame(INFO, seq)
        if isinstance(msg, SetOutputs) and self.kind == "nack":
            return encode_frame(Nack(int(SetOutputs.TYPE), int(NackError.STATE), 0), seq)
        return None

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.05)[0]:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for f in self.decoder.feed(data):
                if f.msg is None:
                    continue
                self.seen.append(type(f.msg).__name__)
                reply = self._answer(f.msg, f.seq)
                if reply:
                    os.write(self.master, reply)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        os.close(self.master)
        os.close(self.slave)


def _fields(msg: Info) -> dict:
    return {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}


@pytest.mark.parametrize("row", NO_TOOLS_ROWS, ids=[r.id for r in NO_TOOLS_ROWS])
def test_firmware_without_its_toolchain_is_one_line_exit_4(row: Row, tmp_path: Path) -> None:
    """`bms emulate --firmware` on a machine without make, avr-gcc, gcc, pkg-config (here: a
    PATH where none of them is): the packages to install, exit 4, no harness started."""
    res = _bms(*row.argv, env=dict(os.environ, PATH=str(tmp_path)))
    _check_lines(res.stderr, res.stdout, res.returncode, row, {})
    assert "pkg-config gcc" in res.stderr and "tools/install-sysdeps.sh" in res.stderr
    assert res.stdout == ""  # no pty path: nothing was served

@pytest.mark.parametrize("row", BOARD_ROWS, ids=[r.id for r in BOARD_ROWS])
def test_board_failure_is_one_line_exit_4_and_logged(row: Row, tmp_path: Path) -> None:
    board = FakeBoard(row.how.split(":", 1)[1])
    try:
        res = _bms(*[_fill(a, {"d": str(tmp_path)}) for a in row.argv], "--port", board.path)
    finally:
        board.close()
    _check_lines(res.stderr, res.stdout, res.returncode, row, {})
    assert "Hello" in board.seen  # the failure is the board's answer, not the host's
    error = _run_log_error(tmp_path / "log")
    assert error["kind"] == "board" and error["exit_code"] == 4


# ------------------------------------------------------------------ a running run

def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _gone(pid: int, within_s: float = 15.0) -> bool:
    """True once ``pid`` has exited (a zombie counts: it runs no more)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def _rows(log: Path) -> int:
    path = log / TICKS
    return max(path.read_bytes().count(b"\n") - 1, 0) if path.exists() else 0


@contextlib.contextmanager
def _running(args: list[str], log: Path, min_rows: int, env: dict[str, str]
             ) -> Iterator[subprocess.Popen]:
    """A `bms run` writing ``log`` until at least ``min_rows`` rows are there."""
    proc = subprocess.Popen([sys.executable, "-m", "bms", "run", *args, "--log", str(log)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 60.0
        while _rows(log) < min_rows:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_busy_log_folder_and_monitor_socket_then_sigterm(tmp_path: Path) -> None:
    """While a run writes its log folder and serves its monitor socket: a second run into the
    folder and one on the socket are refused naming the first one's pid (exit 5), one without
    --monitor-socket serves its own socket and says where. Then SIGTERM: the first run opens
    the contactors through the state machine (logged), prints the true final state, writes
    the stop into the summary and exits 0; its emulator is gone."""
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "xdg"))
    busy, sock = tmp_path / "busy", tmp_path / "first.sock"
    with _running(["--duration", "3600", "--quiet", "--monitor-socket", str(sock)], busy, 50,
                  env) as first:
        ctx = {"d": str(tmp_path), "busy": str(busy), "sock": str(sock), "pid": str(first.pid)}
        for row in (r for r in ROWS if r.how == "busy"):
            res = _bms(*[_fill(a, ctx) for a in row.argv], "--duration", "1", env=env)
            _check_lines(res.stderr, res.stdout, res.returncode, row, ctx)
        # The default socket: taken by a third run, then not taken over by a fourth one.
        third = tmp_path / "third"
        with _running(["--duration", "3600", "--quiet"], third, 10, env) as third_proc:
            res = _bms("run", "--quiet", "--duration", "1", "--log", str(tmp_path / "fourth"),
                       env=env)
            assert res.returncode == 0, res.stderr
            default = tmp_path / "xdg" / "ssb-bms" / "bms.sock"
            assert (f"bms run: monitor socket {default} is served by bms run pid "
                    f"{third_proc.pid}; this run serves") in res.stderr
            assert "Traceback" not in res.stderr
        emulators = _children(first.pid)
        assert emulators
        rows_before = _rows(busy)
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=30)
    assert first.returncode == 0, err
    assert "Traceback" not in err
    assert "bms run: SIGTERM at t = " in err
    assert "final state STANDBY (stop by SIGTERM at" in out
    assert all(_gone(pid) for pid in emulators)
    events = load_events(busy)
    states = [e for e in events if e.get("type") == "state"]
    assert states[-2]["to"] == "OPENING" and states[-2]["reason"] == "open requested"
    assert states[-1]["to"] == "STANDBY" and states[-1]["outputs"] == 0
    summary = json.loads((busy / SUMMARY).read_text())
    assert summary["final"] is True and summary["run"]["state"] == "STANDBY"
    assert summary["stop"]["by"] == "SIGTERM" and summary["stop"]["outputs"] == 0
    ticks = load_ticks(busy)
    assert len(ticks["time_s"]) > rows_before and ticks["outputs"][-1] == 0
    assert (ticks["time_s"][1:] > ticks["time_s"][:-1]).all()  # one run's rows, in order
    assert (busy / LOCK).read_text().strip() == str(first.pid)
    # The folder is free again: a later run may write it.
    res = _bms("run", "--no-monitor", "--quiet", "--duration", "1", "--log", str(busy),
               env=env)
    assert res.returncode == 0, res.stderr


def test_sigkill_leaves_no_emulator_and_a_summary_of_the_last_minute(tmp_path: Path) -> None:
    """SIGKILL of `bms run`: its emulator follows (PR_SET_PDEATHSIG), and summary.json holds
    the state of the last full minute of run time (written atomically, not final)."""
    log = tmp_path / "run"
    with _running(["--duration", "3600", "--no-monitor", "--quiet"], log, 700,
                  dict(os.environ)) as proc:
        emulators = _children(proc.pid)
        assert emulators
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert all(_gone(pid) for pid in emulators), "emulator orphaned"
    summary = json.loads((log / SUMMARY).read_text())
    assert summary["final"] is False and summary["run"]["time_s"] >= 60.0 - 1e-9
    assert not (log / (SUMMARY + ".tmp")).exists()
    assert (log.parent / "run.truth" / "truth-stack1.csv").exists()  # truth beside, not in
    assert not list(log.glob("truth*"))


@contextlib.contextmanager
def _small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_full_disk_is_said_summarised_and_never_takes_the_board(tmp_path: Path) -> None:
    """The log folder and the emulator's truth on a 1 MiB tmpfs that fills during the run:
    the console says when rows start being dropped, the summary (written from the reserve)
    counts them, no .tmp is left, exit 5; the truth file stops but the board answers every
    SAMPLE to the end."""
    with _small_tmpfs(tmp_path / "disk", "1m") as disk:
        res = _bms("run", "--no-monitor", "--quiet", "--duration", "300",
                   "--log", str(disk / "log"), timeout=120)
        assert res.returncode == ExitCode.IO, res.stderr
        assert "Traceback" not in res.stderr + res.stdout
        assert f"bms run: log {disk / 'log'}: rows dropped from t = " in res.stderr
        assert "(ENOSPC: No space left on device); the run goes on" in res.stderr
        assert "LOG INCOMPLETE: " in res.stdout
        summary = json.loads((disk / "log" / SUMMARY).read_text())
        assert summary["final"] is True and summary["dropped_rows"] > 0
        assert summary["rows"] + summary["dropped_rows"] == summary["run"]["ticks"]
        board = summary["run"]["boards"][0]
        assert board["misses"] == 0 and not board["lost"]
        assert board["measurements"] == summary["run"]["ticks"]
        assert not (disk / "log" / (SUMMARY + ".tmp")).exists()
        assert "truth file" in res.stderr and "(the board goes on)" in res.stderr


def test_export_to_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path, capsys) -> None:
    """bms export of a 1.5 MB run to a 256 KiB tmpfs, in each format: one line naming the file
    and the full disk, exit 5, and no partial output (nor asammdf's temporary file) left."""
    pytest.importorskip("asammdf")
    run = tmp_path / "run"
    run.mkdir()
    cols = ["time_s", *(f"cell{k:02d}_voltage_v" for k in range(1, 41))]
    import numpy as np

    noise = np.random.default_rng(1).uniform(3.6, 3.8, (4000, 40))  # compresses poorly
    (run / TICKS).write_text(",".join(cols) + "\n" + "".join(
        f"{0.1 * k:.1f}," + ",".join(f"{v:.6f}" for v in row) + "\n"
        for k, row in enumerate(noise)))
    with _small_tmpfs(tmp_path / "disk", "256k") as disk:
        for fmt in ("mf4", "parquet", "csv"):
            code = _call(["export", str(run), "--to", fmt, "-o", str(disk / f"x.{fmt}")])
            out, err = capsys.readouterr()
            row = Row("export-disk-full", (), IO,
                      f"bms export: {disk}/x.{fmt}: cannot write (No space left on device); "
                      "the partial output was removed")
            _check_lines(err, out, code, row, {})
            assert list(disk.iterdir()) == [], fmt


def test_a_board_lost_mid_run_ends_it_with_one_line_exit_4(tmp_path: Path) -> None:
    """The emulator behind `bms run --port` killed while the run goes (a board unplugged):
    the run ends (the pack's default on_board_lost: stop), prints what it did and then one
    line naming the board, the port and the time; exit 4; the reason in the log."""
    from bms.app.emulators import start_emulator
    from boards.config import load_pack

    emu = start_emulator(load_pack("ssb-23"), 0, "sim")
    log = tmp_path / "log"
    try:
        with _running(["--port", emu.path, "--clock", "sim", "--duration", "3600",
                       "--no-monitor", "--quiet"], log, 50, dict(os.environ)) as proc:
            emu.kill()
            out, err = proc.communicate(timeout=60)
    finally:
        emu.stop()
    assert proc.returncode == ExitCode.BOARD, err
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bms run: board of stack stack-1 on "
                                                    f"{emu.path} lost at t = "), err
    assert "final state SAFE" in out and f"log: {log}" in out
    error = _run_log_error(log)
    assert error["kind"] == "board" and error["message"] in lines[0]


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text.encode() in (d / "cmdline").read_bytes() and not _gone(int(d.name), 0):
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def test_a_failed_start_leaves_no_emulator(tmp_path: Path) -> None:
    """A run that fails after it started its emulator (here ticks.csv cannot be made: a
    folder of that name in the log folder) says so in one line, exit 5, and leaves no
    emulator behind."""
    log = tmp_path / "log"
    (log / TICKS).mkdir(parents=True)
    res = _bms("run", "--no-monitor", "--quiet", "--duration", "5", "--log", str(log))
    assert res.returncode == ExitCode.IO, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == f"bms run: {log / TICKS}: Is a directory"
    assert "emulated board(s); their truth in" in res.stderr  # it had started
    # the emulator dies with its parent (PR_SET_PDEATHSIG): wait for that, not a fixed time
    left = _processes_naming(str(tmp_path))
    assert all(_gone(pid, 5.0) for pid in left), left


def test_debug_prints_the_traceback_too(tmp_path: Path) -> None:
    res = _bms("--debug", "run", "--no-monitor", "--quiet", "--log", str(tmp_path / "log"),
               "--port", "/dev/ttyACM7")
    assert res.returncode == ExitCode.BOARD
    assert "Traceback (most recent call last)" in res.stderr
    assert res.stderr.strip().splitlines()[-2].startswith("bms run: cannot open /dev/ttyACM7")


@pytest.mark.parametrize("command", ["check", "fit", "run"])
def test_an_internal_error_is_the_bug_line_exit_1(command: str) -> None:
    """An exception no error path knows (here the product's own self-test switch,
    BMS_SELFTEST_INTERNAL_ERROR, documented in docs/errors.md): two lines saying it is a bug
    and how to get the traceback, exit 1; with --debug the traceback first, then the same."""
    env = dict(os.environ, BMS_SELFTEST_INTERNAL_ERROR="1")
    res = _bms(command, env=env)
    assert res.returncode == ExitCode.INTERNAL == 1, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert res.stderr.splitlines() == [
        f"bms {command}: internal error: RuntimeError: BMS_SELFTEST_INTERNAL_ERROR is set: the "
        "exit-1 path's self-test",
        f"  hint: a bug in bms, not in your input; please report it with the output of "
        f"`bms --debug {command} ...` (the traceback)"]
    res = _bms("--debug", command, env=env)
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-3] == ("RuntimeError: BMS_SELFTEST_INTERNAL_ERROR is set: the exit-1 path's "
                         "self-test")
    assert lines[-2].startswith(f"bms {command}: internal error: RuntimeError: ")
    assert lines[-1].endswith("the output of this command (the traceback)")
    # Off (unset or 0): the command runs as usual.
    res = _bms("check", env=dict(os.environ, BMS_SELFTEST_INTERNAL_ERROR="0"))
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------ the table and the codes

def test_exit_codes_agree_with_the_emulator_and_the_docs() -> None:
    from hil.emulator import cli as emulate_cli

    assert (emulate_cli.EXIT_USAGE, emulate_cli.EXIT_CONFIG, emulate_cli.EXIT_IO) == (
        ExitCode.USAGE, ExitCode.CONFIG, ExitCode.IO)
    text = DOC.read_text()
    for code in ExitCode:
        assert f"| {int(code)} |" in text, code


def test_every_row_is_in_the_table_with_its_exit_code() -> None:
    """docs/errors.md lists each row (by id) with its exit code; at least 40 of them."""
    table = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`") and cells[0].endswith("`"):
            table[cells[0].strip("`")] = cells
    ids = [r.id for r in ROWS] + PROCESS_ROWS
    assert len(set(ids)) == len(ids) >= 40
    missing = [i for i in ids if i not in table]
    assert not missing, missing
    for r in ROWS:
        assert table[r.id][-1] == str(int(r.code)), (r.id, table[r.id])
    from hil import firmware
    assert firmware.EXIT_BOARD == ExitCode.BOARD
