"""Measure the CAN side of ``bms run --can`` on the real clock (issue 12 targets; not a test):

- every cyclic BMS frame's period at the receiver, per frame and page: p50 / p99 / max of
  |period - cycle| and the share within +-10 % of the cycle;
- a vehicle request to open: ticks from the BMS tick that received it to the tick that
  commanded the contactors open (the run's events.jsonl and ticks.csv), and the time from the
  VCU's Open frame to the first BMS_Status that shows them open (end to end);
- a lost heartbeat: the BMS's silence at the VEHICLE_HEARTBEAT_LOST tick (its fault value),
  against heartbeat_timeout_s + one tick, and end to end from the VCU's last heartbeat.

``bms run`` (self-started emulated boards, real clock) runs in its own process on python-can's
``serial`` backend over tools/can_pty_relay.py; this process plays the vehicle (bms.app.vcu).

    .venv/bin/python tools/can_timing.py --pack ssb-4x23 --duration 600 --out runs/can-timing
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bms.app.can_bus import open_bus  # noqa: E402
from bms.app.vcu import Vehicle  # noqa: E402
from boards.config import load_pack  # noqa: E402
from hil.protocol import Outputs  # noqa: E402


class Player:
    def __init__(self, bus: object) -> None:
        self.v = Vehicle(bus)
        self.bus = bus
        self.request = 1
        self.beating = True
        self.next_send = time.monotonic()
        self.rx: dict[tuple[int, int], list[float]] = {}
        self.status: list[tuple[float, dict]] = []
        self.last_beat = 0.0
        self.record = False
        self.steady_wall = (0.0, 0.0)

    def step(self, until: float) -> None:
        """Send on the 100 ms cycle and receive until monotonic time ``until``."""
        v = self.v
        while True:
            now = time.monotonic()
            if now >= until:
                return
            if now >= self.next_send:
                self.next_send += v.heartbeat_spec.cycle_s
                if self.beating:
                    v.send(v.heartbeat_spec, {"VehicleUptime": now})
                    self.last_beat = time.monotonic()
                v.send(v.request_spec, {"StateRequest": self.request})
            msg = self.bus.recv(timeout=max(0.0, min(self.next_send, until) - time.monotonic()))
            if msg is None:
                continue
            t = time.monotonic()
            out = v.receive(msg, t)
            if out is None or "signals" not in out:
                continue
            sig = out["signals"]
            spec = v.codec.by_id[msg.arbitration_id]
            page = int(sig[spec.mux_signal]) if spec.mux_signal else 0
            if self.record:
                self.rx.setdefault((msg.arbitration_id, page), []).append(t)
            if out["name"] == "BMS_Status":
                self.status.append((t, sig))

    def wait_status(self, cond: object, timeout_s: float) -> float:
        """Step until a BMS_Status satisfies ``cond``; its receive time."""
        end = time.monotonic() + timeout_s
        seen = len(self.status)
        while time.monotonic() < end:
            self.step(time.monotonic() + 0.02)
            for t, sig in self.status[seen:]:
                if cond(sig):  # type: ignore[operator]
                    return t
            seen = len(self.status)
        raise RuntimeError(f"no such BMS_Status within {timeout_s} s")


def _closed(sig: dict) -> bool:
    return sig["ContactorPositive"] == 1 and sig["ContactorNegative"] == 1


def _open(sig: dict) -> bool:
    return sig["ContactorPositive"] == 0 and sig["ContactorNegative"] == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", default="ssb-4x23")
    ap.add_argument("--duration", type=float, default=600.0, help="steady part, s")
    ap.add_argument("--trials", type=int, default=5, help="open and heartbeat-loss trials")
    ap.add_argument("--out", type=Path, default=Path("runs/can-timing"))
    ap.add_argument("--link-cost", action="store_true",
                    help="only the link's own CPU time per tick (send + receive, virtual bus, "
                    "1000 ticks of the pack's frames), no run")
    args = ap.parse_args()
    if args.link_cost:
        print(json.dumps(link_cost(args.pack), indent=2))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "log"
    total = args.duration + 60.0 + args.trials * 25.0
    # The relay in a process of its own: in this one it would share the GIL with the receiver
    # whose timestamps are the measurement.
    relay = subprocess.Popen([sys.executable, str(ROOT / "tools" / "can_pty_relay.py")],
                             stdout=subprocess.PIPE, text=True)
    paths = relay.stdout.readline().split()  # type: ignore[union-attr]
    relay_paths = [paths[0], paths[2]]
    try:
        run = subprocess.Popen(
            [sys.executable, "-m", "bms", "run", "--pack", args.pack, "--clock", "real",
             "--duration", str(total), "--can", f"serial:{relay_paths[0]}", "--no-monitor",
             "--quiet", "--json", "--log", str(log), "--can-log", str(args.out / "can.blf")],
            cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        bus = open_bus(f"serial:{relay_paths[1]}", "channel")
        p = Player(bus)
        try:
            p.wait_status(_closed, 120.0)
            print(f"closed; steady part {args.duration:g} s", file=sys.stderr, flush=True)
            p.record = True
            w0 = time.time()
            p.step(time.monotonic() + args.duration)
            p.record = False
            p.steady_wall = (w0, time.time())
            open_e2e, loss_e2e = [], []
            for k in range(args.trials):
                p.request = 2
                t_sent = time.monotonic()
                open_e2e.append(p.wait_status(_open, 10.0) - t_sent)
                p.step(time.monotonic() + 1.0)
                p.request = 1
                p.wait_status(_closed, 30.0)
                p.step(time.monotonic() + 1.0)
                p.beating = False
                p.step(time.monotonic() + 0.15)  # the cycle's beat may be on its way
                last = p.last_beat
                loss_e2e.append(p.wait_status(_open, 10.0) - last)
                p.beating = True
                p.step(time.monotonic() + 1.0)
                p.request = 3  # reset, then close again
                p.step(time.monotonic() + 0.5)
                p.request = 1
                p.wait_status(_closed, 30.0)
                p.step(time.monotonic() + 1.0)
                print(f"trial {k + 1}: open e2e {open_e2e[-1] * 1000:.0f} ms, heartbeat loss "
                      f"e2e {loss_e2e[-1] * 1000:.0f} ms", file=sys.stderr, flush=True)
        finally:
            run.send_signal(signal.SIGTERM)
            out, err = run.communicate(timeout=120)
            bus.shutdown()
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=10)
    summary = json.loads(out[out.index("{"):])
    report = analyse(p, log, summary, open_e2e, loss_e2e, args.out / "can.blf")
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


def link_cost(pack_name: str, n_ticks: int = 1000) -> dict:
    """CPU time of VehicleLink.send + receive per tick on a virtual bus, with every frame of
    the pack (values made up: the encoding cost does not depend on them)."""
    from types import SimpleNamespace

    import can

    from bms.vehicle.link import VehicleLink
    from bms.vehicle.tick import VehicleTick

    pack = load_pack(pack_name)
    channel = f"cost-{time.monotonic_ns()}"
    bus, rx = (can.Bus(interface="virtual", channel=channel) for _ in range(2))
    link = VehicleLink(bus, pack)
    h = len(pack.power_limits.horizons_s)
    stacks, c0 = [], 0
    for st in pack.stacks:
        out = SimpleNamespace(charge_limit_a=np.full(h, 5.0), discharge_limit_a=np.full(h, 7.0),
                              capacity_ah=np.full(st.cells, pack.cell.capacity_ah),
                              cell_temperature_c=np.full(st.cells, 25.0),
                              pressure_mean_kpa=1000.0)
        data = SimpleNamespace(temperature_c=np.full(len(st.thermistor_cell_positions), 25.0),
                               pressure_kpa=np.full(4, 1000.0))
        stacks.append(SimpleNamespace(data=data, out=out, stack_voltage_v=85.0,
                                      cells=slice(c0, c0 + st.cells)))
        c0 += st.cells
    v = VehicleTick(state=2, outputs=3, close_wanted=True, fault_latched=False,
                    critical_latched=False, warning_active=False, current_a=-3.0,
                    pack_voltage_v=340.0, bus_voltage_v=339.0, charge_limit_a=5.0,
                    discharge_limit_a=7.0, cell_voltage_v=np.full(c0, 3.7),
                    soc=np.full(c0, 0.5), stacks=stacks, faults=[])
    ms = []
    for k in range(n_ticks):
        t0 = time.perf_counter()
        link.send(k, v, k * 0.1)
        link.receive(k * 0.1, False)
        ms.append((time.perf_counter() - t0) * 1000.0)
        while rx.recv(0.0) is not None:
            pass
    bus.shutdown()
    rx.shutdown()
    a = np.asarray(ms)
    return {"pack": pack_name, "ticks": n_ticks, "frames": link.counts["tx_frames"],
            "ms_per_tick": {"mean": round(float(a.mean()), 3),
                            "p50": round(float(np.percentile(a, 50)), 3),
                            "p99": round(float(np.percentile(a, 99)), 3),
                            "max": round(float(a.max()), 3)}}


def periods(codec: object, rx: dict[tuple[int, int], list[float]]) -> dict:
    """Per frame: the period error |period - cycle| / cycle over its pages."""
    frames: dict = {}
    for (fid, _page), ts in sorted(rx.items()):
        spec = codec.by_id[fid]
        if len(ts) < 3:
            continue
        dts = np.diff(np.asarray(ts))
        err = np.abs(dts - spec.cycle_s)
        row = frames.setdefault(spec.name, {"cycle_ms": spec.cycle_s * 1000, "pages": 0,
                                            "periods": 0, "err": []})
        row["pages"] += 1
        row["periods"] += len(dts)
        row["err"].append(err / spec.cycle_s)
    for row in frames.values():
        e = np.concatenate(row.pop("err"))
        row["jitter_p50_pct"] = round(float(np.percentile(e, 50)) * 100, 2)
        row["jitter_p99_pct"] = round(float(np.percentile(e, 99)) * 100, 2)
        row["jitter_max_pct"] = round(float(e.max()) * 100, 2)
        row["within_10pct"] = round(float(np.mean(e <= 0.10)), 5)
    return frames


def sent_times(codec: object, blf: Path, t_from: float, t_to: float
               ) -> dict[tuple[int, int], list[float]]:
    """The BMS's own send times (its CAN log) of the steady part, by frame and page."""
    import can

    out: dict[tuple[int, int], list[float]] = {}
    for msg in can.BLFReader(str(blf)):
        if msg.is_rx or not t_from <= msg.timestamp <= t_to:
            continue
        spec = codec.by_id.get(msg.arbitration_id)  # type: ignore[attr-defined]
        if spec is None or spec.message.senders != ["BMS"]:
            continue
        page = 0
        if spec.mux_signal:
            page = int(codec.decode(spec, msg.data)[spec.mux_signal])  # type: ignore[attr-defined]
        out.setdefault((msg.arbitration_id, page), []).append(msg.timestamp)
    return out


def analyse(p: Player, log: Path, summary: dict, open_e2e: list[float],
            loss_e2e: list[float], blf: Path) -> dict:
    codec = p.v.codec
    frames = periods(codec, p.rx)
    sent = periods(codec, sent_times(codec, blf, p.steady_wall[0], p.steady_wall[1]))
    events = [json.loads(x) for x in (log / "events.jsonl").read_text().splitlines()]
    tick_s = load_pack(summary["pack"]).controller.tick_s
    closed_bits = int(Outputs.CONTACTOR_POS | Outputs.CONTACTOR_NEG)
    req_open = [e["time_s"] for e in events if e.get("event") == "request open"]
    # The tick that commanded open: ticks.csv's outputs column (contactor bits) per tick.
    import csv

    with (log / "ticks.csv").open() as f:
        rows = [(float(r["time_s"]), int(float(r["outputs"]))) for r in csv.DictReader(f)]
    open_ticks = []
    for t_req in req_open:
        after = [t for t, out in rows if t >= t_req - 1e-5 and not out & closed_bits]
        if after:
            open_ticks.append(round((after[0] - t_req) / tick_s))
    lost = [e for e in events if e.get("type") == "fault" and e.get("event") == "raise"
            and e.get("name") == "VEHICLE_HEARTBEAT_LOST"]
    return {
        "pack": summary["pack"], "ticks": summary["ticks"],
        "missed_deadlines": summary["missed_deadlines"],
        "tick_latency_ms": summary["tick_latency_ms"], "vehicle": summary.get("vehicle"),
        "vcu_counts": p.v.counts, "frames_at_receiver": frames, "frames_at_sender": sent,
        "open_request_ticks_after_receipt": open_ticks,
        "open_request_e2e_ms": [round(x * 1000, 1) for x in open_e2e],
        "heartbeat_lost_silence_s": [round(e["value"], 3) for e in lost],
        "heartbeat_loss_e2e_ms": [round(x * 1000, 1) for x in loss_e2e],
    }


if __name__ == "__main__":
    sys.exit(main())
