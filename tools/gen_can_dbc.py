"""Write bms/vehicle/ssb_bms.dbc, the one description of the BMS's CAN frames.

The DBC is the source the code reads (bms/vehicle/codec.py encodes and decodes only through
cantools from it); this script only writes it, because several hundred multiplexed cell signals
are error-prone to type. Run it after changing a frame here, commit both, and the tests check
the shipped file against it (tests/test_can_dbc.py)::

    .venv/bin/python tools/gen_can_dbc.py            # rewrite the DBC
    .venv/bin/python tools/gen_can_dbc.py --check    # exit 1 when the shipped one differs

Layout rules of every frame (docs/can.md): 8 data bytes, Intel byte order; byte 0 the CRC-8
(SAE J1850, AUTOSAR E2E profile 1 style), byte 1 bits 0-3 the alive counter 0..14.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

DBC_PATH = Path(__file__).resolve().parent.parent / "bms" / "vehicle" / "ssb_bms.dbc"

#: Most cells / stacks / horizons the frames carry (pages of the multiplexed frames).
MAX_STACKS = 16
MAX_HORIZONS = 8
CELLS_VOLTAGE_PER_PAGE = 3
CELLS_SOC_PER_PAGE = 4
CELLS_TEMPERATURE_PER_PAGE = 4
CELL_PAGES = 64  # 6-bit page number: 192 cell voltages, 256 SOCs and temperatures
SNA = "SNA"  # signal not available (J1939 style: all ones)


@dataclass
class Sig:
    name: str
    start: int
    length: int
    scale: float = 1.0
    offset: float = 0.0
    minimum: float = 0.0
    maximum: float = 0.0
    unit: str = ""
    signed: bool = False
    mux: str = ""            # "", "M" or "m<page>"
    comment: str = ""
    choices: dict[int, str] = field(default_factory=dict)
    receivers: str = "VCU"


@dataclass
class Msg:
    frame_id: int
    name: str
    sender: str
    cycle_ms: int
    comment: str
    signals: list[Sig]


def _num(x: float) -> str:
    return f"{x:.10g}"


def _header(prefix: str, receivers: str) -> list[Sig]:
    return [
        Sig(f"{prefix}_CRC", 0, 8, maximum=255, receivers=receivers,
            comment="CRC-8 SAE J1850 (poly 0x1D, init 0xFF, final XOR 0xFF) over the data ID "
            "(frame ID, low byte then high byte) and data bytes 1..7 (AUTOSAR E2E profile 1 "
            "style)"),
        Sig(f"{prefix}_Counter", 8, 4, maximum=14, receivers=receivers,
            comment="alive counter 0..14, +1 per frame of this ID (15 is never sent)"),
    ]


def _sna(sig: Sig) -> Sig:
    """Reserve the all-ones raw value as SNA (no data: a channel invalid or not measured)."""
    sig.choices = {(1 << sig.length) - 1: SNA}
    return sig


def messages() -> list[Msg]:
    st = {0: "STANDBY", 1: "PRECHARGE", 2: "CLOSED", 3: "OPENING", 4: "FAULT", 5: "SAFE"}
    msgs = [
        Msg(0x0A0, "VCU_Request", "VCU", 100,
            "Vehicle -> BMS: contactor request. Acted on when the value changes (and Open on "
            "every frame); Close is refused while a fault is latched or without a live "
            "VCU_Heartbeat.",
            _header("VCU_Request", "BMS") + [
                Sig("StateRequest", 12, 2, maximum=3, receivers="BMS",
                    choices={0: "None", 1: "Close", 2: "Open", 3: "Reset"},
                    comment="Close: precharge and close; Open: open the contactors; Reset: "
                    "operator reset of latched faults (never closes by itself)")]),
        Msg(0x0A1, "VCU_Heartbeat", "VCU", 100,
            "Vehicle -> BMS: the vehicle controller is alive. Missing for vehicle."
            "heartbeat_timeout_s of the pack: VEHICLE_HEARTBEAT_LOST.",
            _header("VCU_Heartbeat", "BMS") + [
                Sig("VehicleUptime", 16, 32, scale=0.001, maximum=4294967.295, unit="s",
                    receivers="BMS", comment="the vehicle controller's own clock (informative)")]),
        Msg(0x100, "BMS_Status", "BMS", 100,
            "BMS -> vehicle: contactor state machine and fault summary.",
            _header("BMS_Status", "VCU") + [
                Sig("BmsState", 12, 4, maximum=5, choices=st,
                    comment="contactor state machine state (docs/safety.md)"),
                Sig("ContactorPositive", 16, 1, maximum=1, comment="commanded closed"),
                Sig("ContactorNegative", 17, 1, maximum=1, comment="commanded closed"),
                Sig("Precharge", 18, 1, maximum=1, comment="precharge relay commanded closed"),
                Sig("FaultLatched", 19, 1, maximum=1,
                    comment="a FAULT or CRITICAL is active or latched: no close until reset"),
                Sig("CriticalLatched", 20, 1, maximum=1,
                    comment="a CRITICAL is active or latched: service reset only"),
                Sig("WarningActive", 21, 1, maximum=1, comment="a warning is active (derated)"),
                Sig("VehicleHeartbeatOk", 22, 1, maximum=1,
                    comment="the BMS sees a live VCU_Heartbeat"),
                Sig("ActiveFaultCount", 24, 8, maximum=255,
                    comment="fault records active or latched (BMS_Faults lists them)"),
                Sig("CloseRequested", 32, 1, maximum=1,
                    comment="a close request is held (cancelled by any forced opening)"),
            ]),
        Msg(0x101, "BMS_Pack", "BMS", 100, "BMS -> vehicle: pack voltage and current.",
            _header("BMS_Pack", "VCU") + [
                _sna(Sig("PackVoltage", 16, 16, scale=0.01, maximum=655.34, unit="V",
                         comment="sum of the cell voltages of all stacks")),
                _sna(Sig("BusVoltage", 32, 16, scale=0.01, maximum=655.34, unit="V",
                         comment="link voltage behind the contactors (precharge)")),
                _sna(Sig("PackCurrent", 48, 16, scale=0.01, signed=True, minimum=-327.68,
                         maximum=327.66, unit="A",
                         comment="positive = charge (into the pack); median over the boards")),
            ]),
    ]
    # The SNA of a signed signal: -1 is all ones; use the lowest raw value instead.
    msgs[-1].signals[-1].choices = {-32768: SNA}
    msgs[-1].signals[-1].minimum = -327.67
    limits = _header("BMS_Limits", "VCU") + [
        Sig("LimitPage", 12, 4, maximum=MAX_HORIZONS, mux="M",
            comment="0: the limits the BMS applies now (derated, CCD); k >= 1: horizon k"),
        Sig("ChargeCurrentLimit", 16, 16, scale=0.01, maximum=655.35, unit="A", mux="m0",
            comment="allowed charge current now (warnings derate it)"),
        Sig("DischargeCurrentLimit", 32, 16, scale=0.01, maximum=655.35, unit="A", mux="m0",
            comment="allowed discharge current now (warnings derate it)"),
    ]
    for k in range(1, MAX_HORIZONS + 1):
        limits += [
            Sig(f"Horizon{k}_Time", 16, 16, scale=0.1, maximum=6553.5, unit="s", mux=f"m{k}",
                comment=f"length of power-limit horizon {k} (pack power_limits.horizons_s)"),
            Sig(f"Horizon{k}_ChargeLimit", 32, 16, scale=0.01, maximum=655.35, unit="A",
                mux=f"m{k}", comment=f"charge current the pack sustains for horizon {k} "
                "(min over stacks, before derating)"),
            Sig(f"Horizon{k}_DischargeLimit", 48, 16, scale=0.01, maximum=655.35, unit="A",
                mux=f"m{k}", comment=f"discharge current the pack sustains for horizon {k} "
                "(min over stacks, before derating)"),
        ]
    msgs.append(Msg(0x102, "BMS_Limits", "BMS", 100,
                    "BMS -> vehicle: current limits; page 0 applied now, pages 1.. per "
                    "power-limit horizon. Every page repeats every cycle.", limits))
    for name, what in (("SOC", "state of charge"), ("SOH", "state of health (capacity / "
                                                      "nominal)")):
        hi = 102.2 if name == "SOC" else 204.6
        bits = 10 if name == "SOC" else 11
        sigs = _header(f"BMS_{name}", "VCU") + [
            _sna(Sig(f"Pack{name}", 12, bits, scale=0.1, maximum=hi, unit="%",
                     comment=f"pack {what}: mean over the cells")),
            _sna(Sig(f"MinCell{name}", 12 + bits, bits, scale=0.1, maximum=hi, unit="%",
                     comment=f"lowest cell {what}")),
            _sna(Sig(f"MaxCell{name}", 12 + 2 * bits, bits, scale=0.1, maximum=hi, unit="%",
                     comment=f"highest cell {what}")),
            Sig(f"MinCell{name}_Index", 12 + 3 * bits, 8, maximum=255,
                comment="pack cell number of the lowest, from 1 (0: none)"),
            Sig(f"MaxCell{name}_Index", 20 + 3 * bits, 8, maximum=255,
                comment="pack cell number of the highest, from 1 (0: none)"),
        ]
        msgs.append(Msg(0x103 if name == "SOC" else 0x104, f"BMS_{name}", "BMS", 1000,
                        f"BMS -> vehicle: {what} of the pack and its extreme cells.", sigs))
    temps = _header("BMS_StackTemperature", "VCU") + [
        Sig("StackTempPage", 12, 4, maximum=MAX_STACKS - 1, mux="M",
            comment="stack number - 1")]
    pres = _header("BMS_StackPressure", "VCU") + [
        Sig("StackPressurePage", 12, 4, maximum=MAX_STACKS - 1, mux="M",
            comment="stack number - 1")]
    for k in range(MAX_STACKS):
        n = k + 1
        for j, (q, what) in enumerate((("Min", "lowest"), ("Max", "highest"),
                                       ("Mean", "mean"))):
            temps.append(_sna(Sig(f"Stack{n}_Temperature{q}", 16 + 12 * j, 12, scale=0.1,
                                  offset=-100.0, minimum=-100.0, maximum=309.4, unit="degC",
                                  mux=f"m{k}", comment=f"{what} thermistor of stack {n}")))
            pres.append(_sna(Sig(f"Stack{n}_Pressure{q}", 16 + 16 * j, 16, scale=0.1,
                                 maximum=6553.4, unit="kPa", mux=f"m{k}",
                                 comment=f"{what} load-cell pressure of stack {n}"
                                 + (" (the core's stack pressure)" if q == "Mean" else ""))))
        temps.append(_sna(Sig(f"Stack{n}_Voltage", 52, 12, scale=0.1, maximum=409.4, unit="V",
                              mux=f"m{k}", comment=f"sum of the cell voltages of stack {n}")))
    msgs.append(Msg(0x105, "BMS_StackTemperature", "BMS", 1000,
                    "BMS -> vehicle: per stack (page = stack - 1) thermistor min/max/mean and "
                    "stack voltage. Each page repeats every cycle.", temps))
    msgs.append(Msg(0x106, "BMS_StackPressure", "BMS", 1000,
                    "BMS -> vehicle: per stack (page = stack - 1) load-cell pressure min/max "
                    "and the stack pressure. Each page repeats every cycle.", pres))
    for frame_id, kind, per_page, bits, sig_kw in (
            (0x110, "Voltage", CELLS_VOLTAGE_PER_PAGE, 13,
             dict(scale=0.001, maximum=8.19, unit="V")),
            (0x111, "SOC", CELLS_SOC_PER_PAGE, 10, dict(scale=0.1, maximum=102.2, unit="%")),
            (0x112, "Temperature", CELLS_TEMPERATURE_PER_PAGE, 11,
             dict(scale=0.1, offset=-50.0, minimum=-50.0, maximum=154.6, unit="degC"))):
        pages = min(CELL_PAGES, 256 // per_page)
        sigs = _header(f"BMS_Cell{kind}", "VCU") + [
            Sig(f"Cell{kind}Page", 12, 6, maximum=pages - 1, mux="M",
                comment=f"cells {per_page} * page + 1 .. {per_page} * (page + 1)")]
        for page in range(pages):
            for j in range(per_page):
                n = page * per_page + j + 1
                what = {"Voltage": "voltage", "SOC": "state of charge",
                        "Temperature": "temperature (the core's, between thermistors)"}[kind]
                sigs.append(_sna(Sig(f"Cell{n}_{kind}", 18 + bits * j, bits, mux=f"m{page}",
                                     comment=f"cell {n} {what}", **sig_kw)))  # type: ignore[arg-type]
        msgs.append(Msg(frame_id, f"BMS_Cell{kind}", "BMS", 1000,
                        f"BMS -> vehicle: every cell's {kind.lower()}, {per_page} cells per page "
                        "(pages of one cycle are spread over its ticks; each page repeats "
                        "every cycle).", sigs))
    msgs.append(Msg(0x120, "BMS_Faults", "BMS", 100,
                    "BMS -> vehicle: rolling list of the fault records active or latched, one "
                    "entry per frame (FaultIndex 0..FaultListLength-1, then again).",
                    _header("BMS_Faults", "VCU") + [
                        Sig("FaultIndex", 12, 6, maximum=63, comment="entry of this frame"),
                        Sig("FaultListLength", 18, 6, maximum=63,
                            comment="entries in the list (0: no fault; saturates at 63)"),
                        Sig("FaultCode", 24, 16, maximum=65535, comment="DTC number "
                            "(bms/faults.py, docs/safety.md); 0 when the list is empty"),
                        Sig("FaultSeverity", 40, 2, maximum=3,
                            choices={0: "None", 1: "Warning", 2: "Fault", 3: "Critical"}),
                        Sig("FaultActive", 42, 1, maximum=1, comment="condition present now"),
                        Sig("FaultLatchedEntry", 43, 1, maximum=1, comment="latched until reset"),
                        Sig("FaultStack", 44, 4, maximum=15, comment="stack number (0: pack)"),
                        Sig("FaultCell", 48, 8, maximum=255,
                            comment="channel number within the stack (0: none)"),
                        Sig("FaultOccurrences", 56, 8, maximum=255,
                            comment="times raised this run (saturates at 255)"),
                    ]))
    return msgs


def render() -> str:
    out = ['VERSION "ssb-bms 1"', "", "", "NS_ :", "", "BS_:", "", "BU_: BMS VCU", ""]
    comments: list[str] = [
        'CM_ "ssb-bms CAN frames (written by tools/gen_can_dbc.py; docs/can.md). Every frame: '
        "8 bytes, Intel byte order; byte 0 CRC-8 SAE J1850 (poly 0x1D, init 0xFF, final XOR "
        "0xFF) over the frame ID (low byte, high byte) and bytes 1..7 (AUTOSAR E2E profile 1 "
        "style); byte 1 bits 0..3 an alive counter 0..14 per frame ID. GenMsgCycleTime is the "
        "period of every page of a multiplexed frame; cycles are multiples of the BMS tick "
        '(0.1 s). Raw all-ones (signed: the lowest value) = SNA, no data.";']
    values: list[str] = []
    for m in messages():
        out.append(f"BO_ {m.frame_id} {m.name}: 8 {m.sender}")
        for s in m.signals:
            mux = f" {s.mux}" if s.mux else ""
            sign = "-" if s.signed else "+"
            out.append(f" SG_ {s.name}{mux} : {s.start}|{s.length}@1{sign} "
                       f"({_num(s.scale)},{_num(s.offset)}) [{_num(s.minimum)}|"
                       f"{_num(s.maximum)}] \"{s.unit}\" {s.receivers}")
            if s.comment:
                comments.append(f'CM_ SG_ {m.frame_id} {s.name} "{s.comment}";')
            if s.choices:
                vals = " ".join(f'{k} "{v}"' for k, v in sorted(s.choices.items()))
                values.append(f"VAL_ {m.frame_id} {s.name} {vals} ;")
        out.append("")
        comments.insert(len([c for c in comments if c.startswith("CM_ BO_")]) + 1,
                        f'CM_ BO_ {m.frame_id} "{m.comment}";')
    out += comments
    out += ['BA_DEF_ BO_ "GenMsgCycleTime" INT 0 65535;',
            'BA_DEF_ BO_ "GenMsgSendType" ENUM "Cyclic","NotUsed";',
            'BA_DEF_ "BusType" STRING ;',
            'BA_DEF_DEF_ "GenMsgCycleTime" 0;',
            'BA_DEF_DEF_ "GenMsgSendType" "Cyclic";',
            'BA_DEF_DEF_ "BusType" "CAN";',
            'BA_ "BusType" "CAN";']
    out += [f'BA_ "GenMsgCycleTime" BO_ {m.frame_id} {m.cycle_ms};' for m in messages()]
    out += values
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare, do not write")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        same = DBC_PATH.exists() and DBC_PATH.read_text() == text
        print(f"{DBC_PATH}: {'up to date' if same else 'DIFFERS from tools/gen_can_dbc.py'}")
        return 0 if same else 1
    DBC_PATH.write_text(text)
    print(f"wrote {DBC_PATH} ({len(messages())} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
