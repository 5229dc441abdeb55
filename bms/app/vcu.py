"""``bms vcu``: play the vehicle controller on a CAN bus, against ``bms run --can``.

Every 100 ms (the DBC's cycle of VCU_Heartbeat and VCU_Request) it sends a heartbeat and its
StateRequest (Close by default), with the alive counter and the E2E checksum, encoded through
cantools from the shipped DBC; it checks and decodes every BMS frame it receives and prints
them: a line a second (state, pack voltage and current, SOC, limits, faults), or with
``--json`` one JSON object per frame (its raw bytes, its checks and its signals) for other
tools. ``--stop-heartbeat-after S`` stops the heartbeat on purpose (the BMS must open after
its timeout); ``--open-after S`` and ``--reset-after S`` change the request.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from typing import Any

from bms.app.can_bus import open_bus
from bms.app.errors import Parser, positive_seconds

REQUESTS = {"none": 0, "close": 1, "open": 2, "reset": 3}


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="bms vcu",
        description="Play the vehicle controller on CAN: heartbeat and contactor request every "
        "100 ms, the BMS's frames checked (length, checksum, counter) and decoded through the "
        "shipped DBC (bms/vehicle/ssb_bms.dbc).",
        epilog="examples:\n"
        "  bms vcu socketcan:can0                         # request close, print a line a second\n"
        "  bms vcu serial:/dev/pts/10 --duration 20 --stop-heartbeat-after 10\n"
        "  bms vcu pcan:PCAN_USBBUS1 --open-after 30 --json > frames.jsonl\n\n"
        "exit codes: 0 ok, 2 usage, 4 the CAN interface cannot open, 1 internal error",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("can", metavar="INTERFACE:CHANNEL",
                    help="python-can backend and channel (socketcan:can0, serial:/dev/pts/N, "
                    "slcan:/dev/ttyACM0, pcan:PCAN_USBBUS1, kvaser:0, virtual:NAME, ...)")
    ap.add_argument("--request", choices=tuple(REQUESTS), default="close",
                    help="StateRequest to send from the start (default close)")
    ap.add_argument("--open-after", type=positive_seconds, default=None, metavar="S",
                    help="request Open after S seconds")
    ap.add_argument("--reset-after", type=positive_seconds, default=None, metavar="S",
                    help="request Reset after S seconds (then the --request again 0.5 s later)")
    ap.add_argument("--stop-heartbeat-after", type=positive_seconds, default=None, metavar="S",
                    help="stop sending VCU_Heartbeat after S seconds (on purpose: the BMS "
                    "raises VEHICLE_HEARTBEAT_LOST after its timeout)")
    ap.add_argument("--duration", type=positive_seconds, default=None, metavar="S",
                    help="stop after S seconds (default: until Ctrl-C or SIGTERM)")
    ap.add_argument("--json", action="store_true",
                    help="one JSON object per received frame on stdout")
    return ap


class Vehicle:
    """The VCU's side of the link: its frames out, the BMS's frames checked and decoded."""

    def __init__(self, bus: Any) -> None:
        from bms.vehicle.codec import Codec

        self.bus = bus
        self.codec = Codec()
        self.request_spec = self.codec.frame("VCU_Request")
        self.heartbeat_spec = self.codec.frame("VCU_Heartbeat")
        self.counters: dict[int, int] = {}
        self.rx_counters: dict[int, int] = {}
        self.counts = {"rx_frames": 0, "tx_frames": 0, "bad_checksum": 0, "bad_length": 0,
                       "bad_counter": 0, "unknown_id": 0, "send_errors": 0}
        self.latest: dict[str, dict[str, Any]] = {}
        self.faults: dict[int, dict[str, Any]] = {}

    def send(self, spec: Any, values: dict[str, Any]) -> None:
        import can

        counter = (self.counters.get(spec.frame_id, -1) + 1) % 15
        data = self.codec.encode(spec, counter, values)
        try:
            self.bus.send(can.Message(arbitration_id=spec.frame_id, data=data,
                                      is_extended_id=False), timeout=0.05)
        except can.CanError:
            self.counts["send_errors"] += 1
            return
        self.counters[spec.frame_id] = counter
        self.counts["tx_frames"] += 1

    def receive(self, msg: Any, t: float) -> dict[str, Any] | None:
        """Check and decode one frame; a dict for the --json line (None: not a BMS frame)."""
        from bms.vehicle.codec import FRAME_BYTES, e2e_crc

        self.counts["rx_frames"] += 1
        spec = self.codec.by_id.get(msg.arbitration_id)
        if spec is None or msg.is_extended_id or spec.message.senders != ["BMS"]:
            self.counts["unknown_id"] += 1
            return None
        out: dict[str, Any] = {"t_s": round(t, 6), "id": msg.arbitration_id, "name": spec.name,
                               "data": bytes(msg.data).hex()}
        if msg.dlc != FRAME_BYTES:
            self.counts["bad_length"] += 1
            out["error"] = f"length {msg.dlc}"
            return out
        if msg.data[0] != e2e_crc(spec.frame_id, msg.data):
            self.counts["bad_checksum"] += 1
            out["error"] = "checksum"
            return out
        signals = self.codec.decode(spec, msg.data, choices=True)
        counter = int(signals[spec.counter_signal])
        last = self.rx_counters.get(spec.frame_id)
        if last is not None and (counter - last) % 15 != 1:
            self.counts["bad_counter"] += 1
            out["counter_jump"] = [last, counter]
        self.rx_counters[spec.frame_id] = counter
        out["signals"] = signals
        self.latest[spec.name] = signals
        if spec.name == "BMS_Faults":
            n = signals["FaultListLength"]
            self.faults = {k: v for k, v in self.faults.items() if k < n}
            if n:
                self.faults[signals["FaultIndex"]] = signals
        return out

    def line(self, t: float) -> str:
        s, p = self.latest.get("BMS_Status", {}), self.latest.get("BMS_Pack", {})
        soc, lim = self.latest.get("BMS_SOC", {}), self.latest.get("BMS_Limits", {})
        faults = sorted(f"{f['FaultCode']}({f['FaultSeverity']})" for f in self.faults.values())
        return (f"{t:7.1f} s  {s.get('BmsState', '?')!s:<9} pos {s.get('ContactorPositive', '?')} "
                f"neg {s.get('ContactorNegative', '?')}  {_f(p.get('PackVoltage'), 'V')} "
                f"{_f(p.get('PackCurrent'), 'A')}  SOC {_f(soc.get('PackSOC'), '%')}  "
                f"limits +{_f(lim.get('ChargeCurrentLimit'), 'A')} "
                f"-{_f(lim.get('DischargeCurrentLimit'), 'A')}  faults "
                f"{', '.join(faults) or 'none'}  rx {self.counts['rx_frames']}")


def _f(value: Any, unit: str) -> str:
    return f"{value:.2f} {unit}" if isinstance(value, (int, float)) else f"- {unit}"


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    bus = open_bus(args.can, "channel")
    stop = {"signal": None}

    def _stop(signum: int, frame: object) -> None:
        stop["signal"] = signal.Signals(signum).name

    # Signals reach the main thread only (a caller may run this in a thread of its own).
    main_thread = threading.current_thread() is threading.main_thread()
    handlers = ({sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
                if main_thread else {})
    try:
        return _play(args, bus, stop)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        bus.shutdown()


def _play(args: argparse.Namespace, bus: Any, stop: dict[str, Any]) -> int:
    v = Vehicle(bus)
    period_s = v.heartbeat_spec.cycle_s
    t0 = time.monotonic()
    next_send = t0
    next_line = t0 + 1.0
    request = REQUESTS[args.request]
    beating = True
    while stop["signal"] is None:
        now = time.monotonic()
        t = now - t0
        if args.duration is not None and t >= args.duration:
            break
        if now >= next_send:
            next_send += period_s
            if args.stop_heartbeat_after is not None and t >= args.stop_heartbeat_after:
                if beating:
                    beating = False
                    print(f"bms vcu: heartbeat stopped at {t:.2f} s", file=sys.stderr,
                          flush=True)
            if args.open_after is not None and t >= args.open_after:
                request = REQUESTS["open"]
            if args.reset_after is not None and args.reset_after <= t:
                request = (REQUESTS["reset"] if t < args.reset_after + 0.5
                           else REQUESTS[args.request])
            if beating:
                v.send(v.heartbeat_spec, {"VehicleUptime": t})
            v.send(v.request_spec, {"StateRequest": request})
        try:
            msg = bus.recv(timeout=max(0.0, min(next_send, next_line) - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - a bus error is a line, the VCU goes on
            print(f"bms vcu: receive failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            time.sleep(period_s)
            continue
        if msg is not None:
            out = v.receive(msg, time.monotonic() - t0)
            if out is not None and args.json:
                print(json.dumps(out), flush=True)
        if not args.json and time.monotonic() >= next_line:
            next_line += 1.0
            print(v.line(time.monotonic() - t0), flush=True)
    summary = {"vcu": v.counts, "duration_s": time.monotonic() - t0,
               "stopped_by": stop["signal"] or "duration"}
    print(json.dumps(summary) if args.json else
          f"bms vcu: {v.counts['rx_frames']} frames in ({v.counts['bad_checksum']} bad "
          f"checksums, {v.counts['bad_counter']} counter jumps, {v.counts['bad_length']} bad "
          f"lengths), {v.counts['tx_frames']} out", file=sys.stderr if args.json else sys.stdout)
    return 0
