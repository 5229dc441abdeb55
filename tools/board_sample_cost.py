"""CPU per SAMPLE of the emulated board alone: ``EmulatedBoard.feed`` of a tick's bytes (HEARTBEAT
+ SAMPLE every other tick, SAMPLE alone in between, as the controller sends them over emu://)
with the fast lane (hil/emulator/board_lane.py) and through the general path, interleaved.
Not a test; the figure docs/emulator.md and docs/architecture.md quote.

    .venv/bin/python tools/board_sample_cost.py [--pack ssb-23] [--scenario udds]
        [--ticks 2000] [--repeat 7]

A fresh board per run: contactors closed with 100 A limits, 10 s of warm-up ticks (the udds
scenario's rest), then ``--ticks`` timed ticks of 0.1 s in its drive cycle. ``time.thread_time``
(other jobs on the machine do not count); best and median of ``--repeat`` runs each.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from boards.config import load_pack  # noqa: E402
from hil.emulator.board import EmulatedBoard  # noqa: E402
from hil.emulator.protocol_emu import emu_url, parse_emu_url  # noqa: E402
from hil.protocol import Heartbeat, Outputs, Sample, SetOutputs, encode_frame  # noqa: E402

WARMUP_TICKS = 120


def one_run(url: str, lane: bool, ticks: int) -> float:
    """us of thread CPU per tick for ``ticks`` ticks after the warm-up."""
    opts = dataclasses.replace(parse_emu_url(url), fast_lane=lane)
    board = EmulatedBoard(opts)
    closed = int(Outputs.CONTACTOR_POS | Outputs.CONTACTOR_NEG)
    board.feed(encode_frame(SetOutputs(closed, 0, 100_000, 100_000), 1))
    frames = []
    for i in range(WARMUP_TICKS + ticks):
        seq = (2 * i + 2) & 0xFFFF
        sample = encode_frame(Sample(100_000), (seq + 1) & 0xFFFF)
        frames.append(encode_frame(Heartbeat(1, 0), seq) + sample if i % 2 else sample)
    out = board.outbox
    for data in frames[:WARMUP_TICKS]:
        board.feed(data)
        out.clear()
    t0 = time.thread_time()
    for data in frames[WARMUP_TICKS:]:
        board.feed(data)
        out.clear()
    cpu = time.thread_time() - t0
    board.close()
    return 1e6 * cpu / ticks


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", default="ssb-23")
    ap.add_argument("--scenario", default="udds")
    ap.add_argument("--ticks", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    pack = load_pack(args.pack)
    url = emu_url(pack.path, 0, seed=1, scenario=args.scenario)
    runs: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeat):
        for lane in (True, False):
            runs[lane].append(one_run(url, lane, args.ticks))
    print(f"{args.pack} stack 0, {args.scenario}, {args.ticks} ticks x {args.repeat}: "
          "us of CPU per SAMPLE (best / median)")
    for lane, name in ((True, "fast lane"), (False, "general path")):
        print(f"  {name:13s} {min(runs[lane]):6.1f} / {statistics.median(runs[lane]):6.1f}")
    ratio = statistics.median(runs[False]) / statistics.median(runs[True])
    print(f"  general / lane (medians) {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
