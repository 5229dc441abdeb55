"""CPU per tick of the host link alone: a board's ``BoardIO``, ``BoardClient``, ``SerialLink`` and
``emu://`` port in the controller's pipelined pattern (wait for this tick's MEASUREMENT into the
lane, send the next SAMPLE, collect no ACK, the outputs check with nothing changed, a deferred
HEARTBEAT every other tick), with the board's answer canned: its ``feed`` replaced by one that
puts a MEASUREMENT framed beforehand for the SAMPLE's seq in its outbox, so the board's own
work does not count. Not a test; the figure docs/architecture.md quotes.

    .venv/bin/python tools/link_tick_cost.py [--ticks 20000] [--repeat 7]

``time.thread_time`` (other jobs on the machine do not count); median and best of ``--repeat``
runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bms.board_io import BoardIO  # noqa: E402
from bms.faults import FaultTable  # noqa: E402
from hil.client import BoardClient  # noqa: E402
from hil.emulator.protocol_emu import emu_url, emulated_board, register  # noqa: E402
from hil.link import MeasurementLane  # noqa: E402
from hil.protocol import encode_frame  # noqa: E402


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="tools/link_tick_cost.py",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--ticks", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    if args.ticks < 1 or args.repeat < 1:
        ap.error("--ticks and --repeat must be >= 1")
    register()
    url = emu_url("ssb-23", 0, seed=1, scenario="udds")
    client = BoardClient(url)
    io = BoardIO(0, url, client, FaultTable())
    io.open()
    m = client.sample(0.0)
    io.lane = lane = MeasurementLane(np.zeros(
        4 + len(m.cell_raw) + len(m.thermistor_raw) + len(m.load_cell_raw), dtype=np.int64))
    frames = {seq: encode_frame(m, seq) for seq in range(1, 0x10000)}
    board, link = emulated_board(client), client.link
    assert board is not None and link is not None  # noqa: S101 (an emu:// port, just opened)

    def canned_feed(data: bytes, _out=board.outbox, _link=link) -> None:
        _out.append(frames[_link.last_seq])

    board.feed = canned_feed  # type: ignore[method-assign]
    io.outputs_sent, io.outputs_sent_s = (0, 0, 0.0, 0.0), 1e18  # nothing to send: unchanged

    def run(n: int) -> float:
        io.prefetched = io.request_sample(0.1, 0.0)
        c0 = time.thread_time()
        for k in range(n):
            t = k * 0.1
            seq = io.take_prefetched_or_request(0.1, t)
            if io.await_measurement(seq, t, None, None) is not lane:
                raise SystemExit("tools/link_tick_cost.py: the answer missed the lane")
            io.prefetched = io.request_sample(0.1, t + 0.1)
            io.collect_pending_ack(t)
            io.send_outputs(0, 0, 0.0, 0.0, t)
            if k % 2 == 0:
                io.heartbeat(1, int(t * 1000), True, t)
        us = 1e6 * (time.thread_time() - c0) / n
        io.await_measurement(io.prefetched, t, None, None)  # nothing left pending
        io.prefetched = None
        return us

    runs = [run(args.ticks) for _ in range(args.repeat)]
    client.close()
    print(f"host link alone, ssb-23 over emu:// (canned answers), {args.repeat} x {args.ticks} "
          f"ticks: median {statistics.median(runs):.2f} us per tick, best {min(runs):.2f} "
          f"(runs {' '.join(f'{r:.2f}' for r in runs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
