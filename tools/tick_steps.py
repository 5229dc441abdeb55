"""Where a sim tick's CPU goes, step by step (issue 13's speed target; not a test).

The real controller over ``emu://`` boards (sim clock, run log on, no truth file, as
``bms bench --tick --transport emu``), each named step of ``Controller.tick`` and the boards'
``EmulatedBoard.feed`` wrapped in a CPU timer (``time.thread_time``: other jobs on a shared
machine do not count). Nested: ``_sample`` holds ``_receive`` (which holds ``_collect``) and
the boards' ``feed`` of the SAMPLE; ``_command`` the ``feed`` of a SET_OUTPUTS. Every wrapped
call adds two timer reads (``overhead_us`` each, measured here) to itself and to the steps
around it, so the figures are upper bounds; the ``plain`` line is the same run unwrapped
(process CPU per tick), the figure to compare between code versions.

    .venv/bin/python tools/tick_steps.py --pack ssb-23 --duration 300 --repeat 3 [--json]

``--steps tick,_sample`` wraps only those (two wrapped calls: ``tick`` minus ``_sample`` is the
work after the sample with ~2 timer reads in it, not the ~20 of every step wrapped).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bms.controller import Controller  # noqa: E402
from boards.config import PackConfig, load_pack  # noqa: E402
from hil.emulator import board as emulated_board  # noqa: E402
from hil.emulator.protocol_emu import emu_url, register  # noqa: E402

STEPS = ("tick", "_sample", "_receive", "_collect", "_check_freshness", "_power_limits",
         "_pack_current", "_protect", "_check_current", "_check_cooling", "_check_link",
         "_contactors", "_balance_and_derate", "_command", "_record")


def _timed(f: Callable[..., Any], key: str, acc: dict[str, float]) -> Callable[..., Any]:
    clock = time.thread_time

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = clock()
        try:
            return f(*args, **kwargs)
        finally:
            acc[key] = acc.get(key, 0.0) + clock() - t0
    return wrapper


def one_run(pack: PackConfig, duration_s: float, scenario: str, steps: bool,
            names: tuple[str, ...] = STEPS, feed: bool = True) -> dict[str, float]:
    """CPU per tick (us): per step (``names``, and the boards' ``feed`` when ``feed``) when
    ``steps``, else the whole process (``plain``)."""
    register()
    ports = [emu_url(pack.path, k, seed=1 + k, scenario=scenario)
             for k in range(len(pack.stacks))]
    acc: dict[str, float] = {}
    board_feed = emulated_board.EmulatedBoard.feed
    with tempfile.TemporaryDirectory(prefix="bms-steps-") as tmp:
        try:
            if steps and feed:
                emulated_board.EmulatedBoard.feed = _timed(board_feed, "boards_feed", acc)  # type: ignore[method-assign]
            controller = Controller(pack, ports, clock="sim", log_dir=Path(tmp))
            controller.open()
            controller.request_close()
            if steps:
                for name in names:
                    setattr(controller, name, _timed(getattr(controller, name), name, acc))
            cpu0 = time.process_time()
            controller.run(duration_s)
            cpu = time.process_time() - cpu0
            controller.close()
        finally:
            emulated_board.EmulatedBoard.feed = board_feed  # type: ignore[method-assign]
    n = controller.stats.ticks
    out = {k: 1e6 * v / n for k, v in acc.items()}
    out["process_cpu"] = 1e6 * cpu / n
    return out


def timer_overhead_us() -> float:
    clock = time.thread_time
    n = 100_000
    t0 = clock()
    for _ in range(n):
        clock()
    return 1e6 * (clock() - t0) / n


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="tools/tick_steps.py", description=__doc__.split("\n")[0])
    ap.add_argument("--pack", default="ssb-23")
    ap.add_argument("--duration", type=float, default=300.0, help="sim seconds per run")
    ap.add_argument("--scenario", default="udds")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each kind (medians)")
    ap.add_argument("--steps", default=",".join(STEPS),
                    help="comma-separated steps to wrap (default: all; 'tick,_sample' for the "
                    "work after the sample with the fewest timer reads; the boards' feed is "
                    "wrapped only with all)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = tuple(n for n in args.steps.split(",") if n)
    if not names or any(n not in STEPS for n in names):
        ap.error(f"--steps: names from {', '.join(STEPS)}")
    if not args.duration > 0 or args.repeat < 1:
        ap.error("--duration must be > 0 and --repeat >= 1")
    try:
        pack = load_pack(args.pack)
    except Exception as exc:  # noqa: BLE001 - one line naming the pack, never a traceback
        print(f"tools/tick_steps.py: --pack {args.pack}: {exc}", file=sys.stderr)
        return 2
    timed, plain = [], []
    for _ in range(args.repeat):  # interleaved: a slow minute of the machine hits both
        timed.append(one_run(pack, args.duration, args.scenario, steps=True, names=names,
                             feed=names == STEPS))
        plain.append(one_run(pack, args.duration, args.scenario, steps=False)["process_cpu"])
    medians = {k: statistics.median(r[k] for r in timed) for k in timed[0]}
    record = {"pack": pack.name, "scenario": args.scenario, "duration_s": args.duration,
              "repeat": args.repeat, "overhead_us": timer_overhead_us(),
              "steps_us_per_tick": medians, "plain_cpu_us_per_tick": statistics.median(plain),
              "plain_runs": plain}
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"{pack.name}, {args.scenario}, {args.repeat} x {args.duration:g} s over emu:// "
          f"(CPU us per tick, medians; timer read {record['overhead_us']:.2f} us, two per "
          "wrapped call)")
    for k, v in medians.items():
        print(f"  {k:<20} {v:8.1f}")
    print(f"  {'plain':<20} {record['plain_cpu_us_per_tick']:8.1f}   (unwrapped process CPU; "
          f"runs {', '.join(f'{x:.1f}' for x in plain)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
