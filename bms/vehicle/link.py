"""The vehicle link: once per controller tick, read the vehicle's frames and send the BMS's.

:meth:`VehicleLink.receive` drains the bus without blocking (``recv(timeout=0)`` until empty):
the vehicle's StateRequest and heartbeat frames are checked (length, E2E checksum, alive
counter) and decoded through cantools (:mod:`bms.vehicle.codec`); frames of unknown IDs are
counted. It returns the requests for the controller to apply in the same tick, before the
contactor state machine runs, so a request to open reaches the contactor command in the tick
that received it. It also supervises the heartbeat (VEHICLE_HEARTBEAT_LOST) and the rate of
invalid frames (VEHICLE_FRAME_INVALID), with the pack's ``vehicle:`` reactions.

:meth:`VehicleLink.send` sends the BMS frames due on this tick: every frame has its cycle in
the DBC (GenMsgCycleTime), a whole number of ticks; the pages of a multiplexed frame are spread
over the ticks of its cycle (page p on the ticks k with k mod n == p mod n, n the cycle in
ticks), each page repeating every cycle.

The bus is any python-can bus object, made by the application layer: this module imports no
backend. A bus that raises (an error, a disappeared interface) is counted, one event marks the
first failure and one the recovery, and the tick goes on: the BMS keeps controlling from its
boards, and the heartbeat rule decides what a lost vehicle does.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import can
import cantools
import numpy as np

from bms.contactors import CONTACTOR_NEG, CONTACTOR_POS, PRECHARGE
from bms.faults import FaultCode, FaultTable, Severity
from bms.vehicle.codec import COUNTER_MODULO, FRAME_BYTES, Codec, FrameSpec, e2e_crc
from bms.vehicle.tick import VehicleTick
from boards.config import TIME_EPS_S, PackConfig

#: A counter may jump by up to this much (one frame lost in between is not an error; E2E
#: profile 1's MaxDeltaCounter). 0 (a repeated frame) or more is invalid.
MAX_COUNTER_DELTA = 2
#: Most frames read in one tick: a flooded bus must not starve the control tick. Assumption:
#: 2000 frames is over 10x the frames a 500 kbit/s bus carries in a 0.1 s tick.
MAX_FRAMES_PER_TICK = 2000
REQUESTS = {0: None, 1: "close", 2: "open", 3: "reset"}
VEHICLE_FRAMES = ("VCU_Request", "VCU_Heartbeat")


class VehicleLinkError(ValueError):
    """The DBC's frames do not fit this pack or tick (a cycle that is not a whole number of
    ticks, more cells, stacks or horizons than the frames carry)."""


@dataclass
class _Scheduled:
    spec: FrameSpec
    cycle_ticks: int
    pages: int
    build: Callable[[VehicleTick, int], dict[str, Any]]


def _cell_names(spec: FrameSpec, kind: str) -> dict[int, list[tuple[int, str]]]:
    """Page -> [(pack cell index from 0, signal name)], from the DBC's signal names."""
    pat = re.compile(rf"Cell(\d+)_{kind}$")
    pages: dict[int, list[tuple[int, str]]] = {}
    for sig in spec.message.signals:
        m = pat.match(sig.name)
        if m and sig.multiplexer_ids:
            pages.setdefault(sig.multiplexer_ids[0], []).append((int(m.group(1)) - 1, sig.name))
    return pages


class VehicleLink:
    """One vehicle CAN link. ``bus``: a python-can bus (any backend); ``can_log``: a python-can
    listener (e.g. ``can.Logger(path)``) that gets every frame sent and received."""

    def __init__(self, bus: can.BusABC, pack: PackConfig, codec: Codec | None = None,
                 can_log: can.Listener | None = None, wall_clock: Callable[[], float] = time.time
                 ) -> None:
        self.bus = bus
        self.pack = pack
        self.config = pack.vehicle
        self.codec = codec or Codec()
        self.can_log = can_log
        self.wall_clock = wall_clock
        self.tick_s = pack.controller.tick_s if pack.controller else 0.1
        self.table: FaultTable | None = None
        self.event: Callable[[dict[str, Any]], None] | None = None
        self._rx = {self.codec.frame(n).frame_id: self.codec.frame(n) for n in VEHICLE_FRAMES}
        self._request_spec = self.codec.frame("VCU_Request")
        self._heartbeat_spec = self.codec.frame("VCU_Heartbeat")
        # Pack-cell -> (stack, index in stack), for the per-stack core outputs.
        self._cell_of = [(k, j) for k, s in enumerate(pack.stacks) for j in range(s.cells)]
        self._nominal_ah = pack.cell.capacity_ah
        self._schedule = self._build_schedule()
        self._tx_counter: dict[int, int] = {}
        self._rx_counter: dict[int, tuple[int, float]] = {}
        self._fault_cursor = 0
        # Receive state.
        self.heartbeat_seen = False
        self.last_heartbeat_s = -math.inf
        self.heartbeat_lost = False
        self._invalid_times: deque[float] = deque()
        self.frames_invalid_active = False
        self._last_request: int | None = None
        self._refused: str | None = None
        self._bus_failing = False
        self._log_failing = False
        self.counts = {"rx_frames": 0, "tx_frames": 0, "unknown_id": 0, "bad_length": 0,
                       "bad_checksum": 0, "bad_counter": 0, "repeated_counter": 0,
                       "error_frames": 0, "bus_errors": 0, "log_errors": 0,
                       "requests": 0, "requests_refused": 0, "heartbeats": 0}
        self._check_frames()

    def attach(self, table: FaultTable, event: Callable[[dict[str, Any]], None] | None) -> None:
        """The controller's fault table and run-log event sink."""
        self.table, self.event = table, event

    # ------------------------------------------------------------------ schedule

    def _build_schedule(self) -> list[_Scheduled]:
        pack, codec = self.pack, self.codec
        n_cells, n_stacks = pack.n_cells, len(pack.stacks)
        n_horizons = len(pack.power_limits.horizons_s)
        out = []
        for spec in codec.frames.values():
            if spec.message.senders != ["BMS"]:
                continue
            ticks = spec.cycle_s / self.tick_s
            if abs(ticks - round(ticks)) > 1e-6 or round(ticks) < 1:
                raise VehicleLinkError(
                    f"{codec.path}: frame {spec.name} cycle {spec.cycle_s * 1000:g} ms is not "
                    f"a whole number of ticks of {self.tick_s:g} s (controller.tick_s in "
                    f"{pack.path})")
            pages, build = self._builder(spec, n_cells, n_stacks, n_horizons)
            out.append(_Scheduled(spec, int(round(ticks)), pages, build))
        # The short cycles first: a late frame costs them a larger share of their period.
        out.sort(key=lambda item: item.cycle_ticks)
        return out

    def _builder(self, spec: FrameSpec, n_cells: int, n_stacks: int, n_horizons: int
                 ) -> tuple[int, Callable[[VehicleTick, int], dict[str, Any]]]:
        name = spec.name
        simple = {"BMS_Status": self._status, "BMS_Pack": self._pack, "BMS_SOC": self._soc,
                  "BMS_SOH": self._soh, "BMS_Faults": self._faults}
        if name in simple:
            return 1, simple[name]
        mux_pages = len({i for sig in spec.message.signals for i in sig.multiplexer_ids or ()})
        if name == "BMS_Limits":
            return self._fits(spec, 1 + n_horizons, mux_pages, "power-limit horizons + 1"), \
                self._limits
        if name in ("BMS_StackTemperature", "BMS_StackPressure"):
            build = self._stack_temps if name == "BMS_StackTemperature" else self._stack_press
            return self._fits(spec, n_stacks, mux_pages, "stacks"), build
        m = re.fullmatch(r"BMS_Cell(Voltage|SOC|Temperature)", name)
        if m:
            kind = m.group(1)
            names = _cell_names(spec, kind)
            per_page = len(names.get(0, []))
            pages = self._fits(spec, math.ceil(n_cells / per_page), len(names), "cell pages")
            layout = [[(i, s) for i, s in names[p]] for p in range(pages)]
            return pages, self._cells_builder(spec, kind, layout, n_cells)
        raise VehicleLinkError(f"{self.codec.path}: frame {name} is sent by BMS but this "
                               "version does not fill it")

    def _check_frames(self) -> None:
        """Encode every page once with no data (all SNA) and decode a request: a DBC whose
        signals are not the ones this code fills is refused here, naming the frame, not in
        a tick."""
        stacks = [SimpleNamespace(data=None, out=None, stack_voltage_v=math.nan,
                                  cells=slice(0, 0)) for _ in self.pack.stacks]
        nan = np.full(len(self._cell_of), np.nan)
        v = VehicleTick(state=0, outputs=0, close_wanted=False, fault_latched=False,
                        critical_latched=False, warning_active=False, current_a=math.nan,
                        pack_voltage_v=math.nan, bus_voltage_v=math.nan,
                        charge_limit_a=math.nan, discharge_limit_a=math.nan,
                        cell_voltage_v=nan, soc=nan, stacks=stacks, faults=[])
        for item in self._schedule:
            for page in range(item.pages):
                try:
                    self.codec.encode(item.spec, 0, item.build(v, page))
                except (KeyError, ValueError, cantools.database.Error) as exc:
                    raise VehicleLinkError(f"{self.codec.path}: frame {item.spec.name} page "
                                           f"{page}: its signals are not the ones this BMS "
                                           f"fills ({type(exc).__name__}: {exc})") from None
        names = {s.name for s in self._request_spec.message.signals}
        if "StateRequest" not in names:
            raise VehicleLinkError(f"{self.codec.path}: frame VCU_Request has no signal "
                                   "StateRequest")

    def _fits(self, spec: FrameSpec, need: int, have: int, what: str) -> int:
        if need > have:
            raise VehicleLinkError(f"{self.codec.path}: frame {spec.name} carries {have} pages,"
                                   f" pack {self.pack.name} needs {need} ({what})")
        return need

    # ------------------------------------------------------------------ receive

    def receive(self, t: float, fault_latched: bool) -> list[str]:
        """Drain the bus (non-blocking), check and decode the vehicle's frames, supervise the
        heartbeat and the invalid-frame rate. Returns the requests ("close", "open", "reset")
        to apply now; a close is refused (an event) without a live heartbeat or while a fault
        is latched."""
        request: int | None = None
        for _ in range(MAX_FRAMES_PER_TICK):
            try:
                msg = self.bus.recv(timeout=0.0)
            except Exception as exc:  # noqa: BLE001 - any backend failure: counted, tick goes on
                self._bus_error(t, exc, "receive")
                break
            if msg is None:
                break
            self.counts["rx_frames"] += 1
            if self.can_log is not None:
                # The backend's receive time when it is one (socketcan, virtual: Unix time);
                # else (serial carries the sender's counter) the time the tick read it.
                now = self.wall_clock()
                if abs(msg.timestamp - now) > 3600.0:
                    msg.timestamp = now
                # One bus per log: the backend's channel name (virtual: any text, which
                # the MF4 writer parses for a number) is not logged; TX frames have none.
                msg.channel = None
                self._log_frame(t, msg)
            value = self._check(t, msg)
            if value is not None:
                request = value
        self._supervise(t)
        return self._requests(t, request, fault_latched)

    def _check(self, t: float, msg: can.Message) -> int | None:
        """One received frame; the StateRequest value of a valid request frame, else None."""
        if msg.is_error_frame:
            self.counts["error_frames"] += 1
            return None
        spec = None if msg.is_extended_id or msg.is_remote_frame else self._rx.get(
            msg.arbitration_id)
        if spec is None:
            self.counts["unknown_id"] += 1
            return None
        data = msg.data
        if msg.dlc != FRAME_BYTES or len(data) != FRAME_BYTES:
            return self._invalid(t, spec, "bad_length", f"length {msg.dlc}")
        if data[0] != e2e_crc(spec.frame_id, data):
            return self._invalid(t, spec, "bad_checksum", f"checksum 0x{data[0]:02X}")
        values = self.codec.decode(spec, data)
        counter = int(values[spec.counter_signal])
        last = self._rx_counter.get(spec.frame_id)
        self._rx_counter[spec.frame_id] = (counter, t)
        if counter >= COUNTER_MODULO:
            return self._invalid(t, spec, "bad_counter", f"counter {counter}")
        if last is not None and t - last[1] <= self.config.heartbeat_timeout_s + TIME_EPS_S:
            delta = (counter - last[0]) % COUNTER_MODULO
            if delta == 0:
                return self._invalid(t, spec, "repeated_counter", f"counter {counter} again")
            if delta > MAX_COUNTER_DELTA:
                return self._invalid(t, spec, "bad_counter",
                                     f"counter {last[0]} -> {counter}")
        if spec is self._heartbeat_spec:
            self.counts["heartbeats"] += 1
            self.heartbeat_seen = True
            self.last_heartbeat_s = t
            return None
        return int(values["StateRequest"])

    def _invalid(self, t: float, spec: FrameSpec, kind: str, detail: str) -> None:
        self.counts[kind] += 1
        self._invalid_times.append(t)
        return None

    def _supervise(self, t: float) -> None:
        cfg, table = self.config, self.table
        window = self._invalid_times
        while window and t - window[0] > cfg.invalid_window_s + TIME_EPS_S:
            window.popleft()
        if table is None:
            return
        severity = Severity.FAULT if cfg.on_invalid_frames == "open" else Severity.WARNING
        if len(window) >= cfg.invalid_frames and not self.frames_invalid_active:
            self.frames_invalid_active = True
            table.raise_fault(FaultCode.VEHICLE_FRAME_INVALID, t, severity, float(len(window)))
        elif not window and self.frames_invalid_active:
            self.frames_invalid_active = False
            table.clear_fault(FaultCode.VEHICLE_FRAME_INVALID, t, severity)
        # Supervision starts at the first valid heartbeat (before it, the BMS refuses to close
        # but has nothing to lose).
        silent_s = t - self.last_heartbeat_s
        lost = self.heartbeat_seen and silent_s > cfg.heartbeat_timeout_s + TIME_EPS_S
        severity = Severity.FAULT if cfg.on_heartbeat_lost == "open" else Severity.WARNING
        if lost and not self.heartbeat_lost:
            table.raise_fault(FaultCode.VEHICLE_HEARTBEAT_LOST, t, severity, silent_s)
            self._last_request = None  # a request after the vehicle is back is a new one
        elif self.heartbeat_lost and not lost:
            table.clear_fault(FaultCode.VEHICLE_HEARTBEAT_LOST, t, severity)
        self.heartbeat_lost = lost

    @property
    def heartbeat_ok(self) -> bool:
        return self.heartbeat_seen and not self.heartbeat_lost

    def _requests(self, t: float, value: int | None, fault_latched: bool) -> list[str]:
        """Requests act when the StateRequest value changes (a held Close does not re-close
        after a fault and a reset: the vehicle asks again)."""
        if value is None or value == self._last_request:
            return []
        request = REQUESTS.get(value)
        if request == "close":
            why = ("no live vehicle heartbeat" if not self.heartbeat_ok
                   else "a fault is latched" if fault_latched else None)
            if why is not None:
                self.counts["requests_refused"] += 1
                if why != self._refused and self.event is not None:
                    self.event({"type": "vehicle", "event": "close refused", "time_s": t,
                                "reason": why})
                self._refused = why
                if why == "a fault is latched":
                    self._last_request = value  # the vehicle must ask again after a reset
                return []
        self._refused = None
        self._last_request = value
        if request is None:
            return []
        self.counts["requests"] += 1
        if self.event is not None:
            self.event({"type": "vehicle", "event": f"request {request}", "time_s": t})
        return [request]

    # ------------------------------------------------------------------ send

    def send(self, tick_index: int, v: VehicleTick, t: float) -> None:
        """Send the frames due on this tick. The first bus failure ends this tick's sending
        (counted; one event until the bus works again)."""
        for item in self._schedule:
            n = item.cycle_ticks
            phase = tick_index % n
            for page in range(phase, item.pages, n):
                spec = item.spec
                counter = self._tx_counter.get(spec.frame_id, -1) + 1
                counter %= COUNTER_MODULO
                data = self.codec.encode(spec, counter, item.build(v, page))
                # Timestamp 0 on the wire: some backends carry it (serial: u32 ms, which a
                # Unix time overflows); the log gets the time it was sent.
                msg = can.Message(arbitration_id=spec.frame_id, data=data, is_extended_id=False,
                                  timestamp=0.0, is_rx=False)
                try:
                    self.bus.send(msg, timeout=0.0)
                except Exception as exc:  # noqa: BLE001 - any backend failure: counted
                    self._bus_error(t, exc, "send")
                    return
                self._tx_counter[spec.frame_id] = counter
                self.counts["tx_frames"] += 1
                if self.can_log is not None:
                    msg.timestamp = self.wall_clock()
                    self._log_frame(t, msg)
        self._bus_ok(t)

    # The frames' values (physical units of the DBC; NaN -> SNA).

    def _status(self, v: VehicleTick, page: int) -> dict[str, Any]:
        out = v.outputs
        return {"BmsState": v.state, "ContactorPositive": int(bool(out & CONTACTOR_POS)),
                "ContactorNegative": int(bool(out & CONTACTOR_NEG)),
                "Precharge": int(bool(out & PRECHARGE)), "FaultLatched": int(v.fault_latched),
                "CriticalLatched": int(v.critical_latched),
                "WarningActive": int(v.warning_active),
                "VehicleHeartbeatOk": int(self.heartbeat_ok),
                "ActiveFaultCount": min(len(v.faults), 255),
                "CloseRequested": int(v.close_wanted)}

    def _pack(self, v: VehicleTick, page: int) -> dict[str, Any]:
        return {"PackVoltage": v.pack_voltage_v, "BusVoltage": v.bus_voltage_v,
                "PackCurrent": v.current_a}

    def _limits(self, v: VehicleTick, page: int) -> dict[str, Any]:
        if page == 0:
            return {"LimitPage": 0, "ChargeCurrentLimit": v.charge_limit_a,
                    "DischargeCurrentLimit": v.discharge_limit_a}
        h = page - 1
        outs = [s.out for s in v.stacks if s.out is not None]
        charge = min((float(o.charge_limit_a[h]) for o in outs), default=math.nan)
        discharge = min((float(o.discharge_limit_a[h]) for o in outs), default=math.nan)
        return {"LimitPage": page, f"Horizon{page}_Time": self.pack.power_limits.horizons_s[h],
                f"Horizon{page}_ChargeLimit": charge,
                f"Horizon{page}_DischargeLimit": discharge}

    @staticmethod
    def _extremes(name: str, values: np.ndarray, scale: float) -> dict[str, Any]:
        finite = np.isfinite(values)
        if not finite.any():
            return {f"Pack{name}": math.nan, f"MinCell{name}": math.nan,
                    f"MaxCell{name}": math.nan, f"MinCell{name}_Index": 0,
                    f"MaxCell{name}_Index": 0}
        lo, hi = int(np.nanargmin(values)), int(np.nanargmax(values))
        return {f"Pack{name}": float(np.nanmean(values)) * scale,
                f"MinCell{name}": float(values[lo]) * scale,
                f"MaxCell{name}": float(values[hi]) * scale,
                f"MinCell{name}_Index": min(lo + 1, 255), f"MaxCell{name}_Index": min(hi + 1, 255)}

    def _soc(self, v: VehicleTick, page: int) -> dict[str, Any]:
        return self._extremes("SOC", v.soc, 100.0)

    def _soh(self, v: VehicleTick, page: int) -> dict[str, Any]:
        soh = np.full(len(self._cell_of), np.nan)
        for s in v.stacks:
            if s.out is not None:
                soh[s.cells] = s.out.capacity_ah
        return self._extremes("SOH", soh, 100.0 / self._nominal_ah)

    def _stack_temps(self, v: VehicleTick, page: int) -> dict[str, Any]:
        s = v.stacks[page]
        n = page + 1
        temps = s.data.temperature_c if s.data is not None else np.full(1, np.nan)
        lo, hi, mean = _min_max_mean(temps)
        return {"StackTempPage": page, f"Stack{n}_TemperatureMin": lo,
                f"Stack{n}_TemperatureMax": hi, f"Stack{n}_TemperatureMean": mean,
                f"Stack{n}_Voltage": s.stack_voltage_v}

    def _stack_press(self, v: VehicleTick, page: int) -> dict[str, Any]:
        s = v.stacks[page]
        n = page + 1
        p = s.data.pressure_kpa if s.data is not None else np.full(1, np.nan)
        lo, hi, _ = _min_max_mean(p)
        mean = s.out.pressure_mean_kpa if s.out is not None else math.nan
        return {"StackPressurePage": page, f"Stack{n}_PressureMin": lo,
                f"Stack{n}_PressureMax": hi, f"Stack{n}_PressureMean": mean}

    def _cells_builder(self, spec: FrameSpec, kind: str, layout: list[list[tuple[int, str]]],
                       n_cells: int) -> Callable[[VehicleTick, int], dict[str, Any]]:
        mux = spec.mux_signal
        cell_of = self._cell_of

        def build(v: VehicleTick, page: int) -> dict[str, Any]:
            out: dict[str, Any] = {mux: page}  # type: ignore[dict-item]
            for i, name in layout[page]:
                if i >= n_cells:
                    out[name] = math.nan
                elif kind == "Voltage":
                    out[name] = float(v.cell_voltage_v[i])
                elif kind == "SOC":
                    out[name] = float(v.soc[i]) * 100.0
                else:
                    k, j = cell_of[i]
                    o = v.stacks[k].out
                    out[name] = float(o.cell_temperature_c[j]) if o is not None else math.nan
            return out

        return build

    def _faults(self, v: VehicleTick, page: int) -> dict[str, Any]:
        records = sorted(v.faults, key=lambda r: (-int(r.severity), int(r.code),
                                                  -1 if r.stack is None else r.stack,
                                                  -1 if r.cell is None else r.cell))
        n = len(records)
        if n == 0:
            return {"FaultIndex": 0, "FaultListLength": 0, "FaultCode": 0, "FaultSeverity": 0,
                    "FaultActive": 0, "FaultLatchedEntry": 0, "FaultStack": 0, "FaultCell": 0,
                    "FaultOccurrences": 0}
        n = min(n, 63)
        i = self._fault_cursor % n
        self._fault_cursor = i + 1
        r = records[i]
        return {"FaultIndex": i, "FaultListLength": n, "FaultCode": int(r.code),
                "FaultSeverity": int(r.severity), "FaultActive": int(r.active),
                "FaultLatchedEntry": int(r.latched),
                "FaultStack": 0 if r.stack is None else min(r.stack + 1, 15),
                "FaultCell": 0 if r.cell is None else min(r.cell + 1, 255),
                "FaultOccurrences": min(r.count, 255)}

    # ------------------------------------------------------------------ failures, log

    def _bus_error(self, t: float, exc: BaseException, where: str) -> None:
        self.counts["bus_errors"] += 1
        if not self._bus_failing:
            self._bus_failing = True
            if self.event is not None:
                self.event({"type": "vehicle", "event": "bus error", "time_s": t,
                            "where": where, "error": f"{type(exc).__name__}: {exc}"})

    def _bus_ok(self, t: float) -> None:
        if self._bus_failing:
            self._bus_failing = False
            if self.event is not None:
                self.event({"type": "vehicle", "event": "bus recovered", "time_s": t,
                            "bus_errors": self.counts["bus_errors"]})

    def _log_frame(self, t: float, msg: can.Message) -> None:
        if self.can_log is None:
            return
        try:
            self.can_log.on_message_received(msg)
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop the tick
            self.counts["log_errors"] += 1
            if not self._log_failing:
                self._log_failing = True
                if self.event is not None:
                    self.event({"type": "vehicle", "event": "CAN log write failed",
                                "time_s": t, "error": f"{type(exc).__name__}: {exc}"})

    def summary(self) -> dict[str, Any]:
        return {"channel": str(getattr(self.bus, "channel_info", "")),
                "heartbeat_seen": self.heartbeat_seen, "heartbeat_lost": self.heartbeat_lost,
                **self.counts}

    def close(self) -> None:
        """Stop the log (flushes it); the bus belongs to whoever made it."""
        if self.can_log is not None:
            try:
                self.can_log.stop()
            except Exception:  # noqa: BLE001, S110 - best effort at the end of a run
                self.counts["log_errors"] += 1


def _min_max_mean(values: np.ndarray) -> tuple[float, float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan, math.nan
    return float(finite.min()), float(finite.max()), float(finite.mean())
