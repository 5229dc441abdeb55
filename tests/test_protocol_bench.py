"""Codec and link throughput (pytest-benchmark; measures, never asserts on wall time).

Run with ``pytest tests/test_protocol_bench.py --benchmark-enable``; without it (the project's
default addopts) each benchmark body runs once as a plain correctness test. Rates are stored in
``extra_info`` (frames_per_s, round_trips_per_s) from the median round.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import tty

import pytest

from hil.client import BoardClient
from hil.protocol import (
    BoardKind,
    FrameDecoder,
    Hello,
    Info,
    Measurement,
    Sample,
    Status,
    decode_frame,
    encode_frame,
)

N_FRAMES = 10_000
MEAS23 = Measurement(123_456, Status.SIM_CLOCK | Status.CONTACTOR_POS, -1500, 85_100,
                     tuple(36_000 + 37 * i for i in range(23)), (15_000,) * 6,
                     (680_000, 700_000, 690_000, 710_000))


def _rate(benchmark, n: int, key: str) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info[key] = round(n / stats.stats.median)


def test_bench_decode_stream_23_cells(benchmark) -> None:
    """FrameDecoder.feed over 10,000 concatenated 23-cell MEASUREMENT frames."""
    stream = b"".join(encode_frame(MEAS23, (i % 65535) + 1) for i in range(N_FRAMES))

    def run() -> int:
        d = FrameDecoder()
        return len(d.feed(stream))

    assert benchmark(run) == N_FRAMES
    _rate(benchmark, N_FRAMES, "frames_per_s")


def test_bench_decode_frame_by_frame_23_cells(benchmark) -> None:
    """One feed() call per frame, as when each pty read delivers one frame."""
    frames = [encode_frame(MEAS23, (i % 65535) + 1) for i in range(N_FRAMES)]

    def run() -> int:
        d = FrameDecoder()
        feed = d.feed
        n = 0
        for f in frames:
            n += len(feed(f))
        return n

    assert benchmark(run) == N_FRAMES
    _rate(benchmark, N_FRAMES, "frames_per_s")


def test_bench_decode_frame_function(benchmark) -> None:
    raw = encode_frame(MEAS23, 7)[:-1]

    def run() -> None:
        for _ in range(N_FRAMES):
            decode_frame(raw)

    benchmark(run)
    assert decode_frame(raw) == (7, MEAS23)
    _rate(benchmark, N_FRAMES, "frames_per_s")


def test_bench_encode_measurement_23_cells(benchmark) -> None:
    def run() -> None:
        for i in range(N_FRAMES):
            encode_frame(MEAS23, i + 1)

    benchmark(run)
    _rate(benchmark, N_FRAMES, "frames_per_s")


def test_bench_encode_sample(benchmark) -> None:
    msg = Sample(100_000)

    def run() -> None:
        for i in range(N_FRAMES):
            encode_frame(msg, i + 1)

    benchmark(run)
    _rate(benchmark, N_FRAMES, "frames_per_s")


# --------------------------------------------------------------------------- over a real pty


def _peer(master: int) -> None:
    """Minimal board in a child process: INFO for HELLO, a fixed MEASUREMENT for SAMPLE."""
    info = Info(1, BoardKind.EMULATOR, (0, 0, 0), 23, 6, 4, 1000, 1, 1, "bench")
    d = FrameDecoder()
    while True:
        select.select([master], [], [])
        try:
            data = os.read(master, 65536)
        except OSError:
            os._exit(0)
        if not data:
            os._exit(0)
        out = []
        for f in d.feed(data):
            if isinstance(f.msg, Sample):
                out.append(encode_frame(MEAS23, f.seq))
            elif isinstance(f.msg, Hello):
                out.append(encode_frame(info, f.seq))
        if out:
            os.write(master, b"".join(out))


@pytest.fixture
def pty_peer():
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    proc = multiprocessing.get_context("fork").Process(target=_peer, args=(master,), daemon=True)
    proc.start()
    yield path
    proc.kill()
    proc.join(5)
    os.close(master)
    os.close(slave)


def test_bench_sample_round_trips_over_pty(benchmark, pty_peer) -> None:
    """SAMPLE -> MEASUREMENT round trips through BoardClient, board in another process."""
    n = 2000
    with BoardClient(pty_peer, timeout_s=1.0) as c:
        def run() -> None:
            for _ in range(n):
                c.sample(0.1)

        benchmark.pedantic(run, rounds=5, iterations=1)
        assert c.stats.timeouts == 0
    _rate(benchmark, n, "round_trips_per_s")
