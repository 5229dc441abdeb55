"""The frame of ``bms monitor``: one snapshot of the monitor socket laid out for a W x H terminal.

Pure layout, no terminal and no rich: a frame is a list of lines, a line a list of ``(text,
style)`` segments (rich style strings); :func:`plain` joins the text, bms/app/monitor.py hands
the styles to rich. Every cell of every stack is in the frame as long as the terminal is at least
80 x 24 for 92 cells (ssb-4x23): :data:`LAYOUTS` go from the richest (absolute voltage, SOC,
3-sigma bound, temperature and leak current per cell) to the most compact (per cell: mV above the
stack's lowest cell, SOC %, temperature, in 3-character columns), and :func:`frame` takes the
first that fits. The cells of a stack are columns; a stack too wide for one line of columns is
cut into equal chunks, each under its own cell-number line.

Per cell: a ``*`` before the voltage marks a cell that is bleeding (balance_mask), a ``!`` a cell
whose leak flag is set. Colours (rich only): voltage and SOC as a heat map over the stack's own
range (at least 20 mV / 5 % wide, so that noise on a flat stack stays one colour), temperature by
fixed display bands; the stack's lowest and highest cell voltage, and its hottest cell, reversed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hil.protocol import Outputs

Segment = tuple[str, str]
Line = list[Segment]

#: Width of the row labels in front of the cell columns ("V", "SOC%", ...).
LABEL_W = 6
#: The heat-map's colours, lowest to highest.
HEAT = ("blue", "cyan", "green", "yellow", "red")
#: The smallest span the voltage and SOC heat maps spread over: a stack within 20 mV (5 % SOC)
#: is one or two colours, not a rainbow of ADC noise (display choice, an assumption).
HEAT_MIN_SPAN_V = 0.020
HEAT_MIN_SPAN_SOC = 0.05
#: Temperature colour bands, C (display only: the protections use the pack's own limits).
TEMP_BANDS_C = ((0.0, "blue"), (15.0, "cyan"), (35.0, "green"), (45.0, "yellow"))
#: A 3-sigma SOC bound wider than this (%) is shown as not yet converged (display choice).
WIDE_BOUND_PCT = 5.0

STATE_STYLE = {"CLOSED": "bold green", "PRECHARGE": "bold yellow", "OPENING": "bold yellow",
               "STANDBY": "bold", "FAULT": "bold white on red", "SAFE": "bold white on red"}
#: SET_OUTPUTS bits by display name, from their one definition (hil.protocol.Outputs;
#: docs/protocol.md): POS, NEG, PRECHARGE.
OUTPUT_NAMES = tuple((int(bit), str(bit.name).removeprefix("CONTACTOR_")) for bit in Outputs)


@dataclass(frozen=True)
class Layout:
    """One way to lay out the stacks: ``col_w`` characters per cell column (0: no per-cell
    rows, only the summaries), the per-cell ``rows`` in order, and the summary lines per stack."""

    name: str
    col_w: int
    rows: tuple[str, ...]
    summary_lines: int


LAYOUTS: tuple[Layout, ...] = (
    Layout("full", 6, ("v", "soc", "bound", "temp", "leak"), 2),
    Layout("wide", 6, ("v", "soc", "bound", "temp"), 2),
    Layout("cells", 6, ("v", "soc", "temp"), 2),
    Layout("compact", 3, ("dv", "soc", "temp"), 2),
    Layout("compact-1", 3, ("dv", "soc", "temp"), 1),
    Layout("summary", 0, (), 2),
    Layout("summary-1", 0, (), 1),
)

ROW_LABELS = {"v": "V", "soc": "SOC%", "bound": "3sig%", "temp": "T C", "leak": "leakmA"}


def _num(value: Any) -> float:
    """A snapshot number (strict JSON carries NaN as null)."""
    return math.nan if value is None else float(value)


def _nums(values: Any) -> list[float]:
    return [_num(v) for v in values or []]


def _finite(values: Sequence[float]) -> list[tuple[int, float]]:
    return [(i, v) for i, v in enumerate(values) if math.isfinite(v)]


def _heat(value: float, low: float, span: float) -> str:
    if not math.isfinite(value):
        return "dim"
    k = int((value - low) / span * len(HEAT)) if span > 0 else 0
    return HEAT[min(max(k, 0), len(HEAT) - 1)]


def _temp_style(t: float) -> str:
    if not math.isfinite(t):
        return "dim"
    for upper, style in TEMP_BANDS_C:
        if t < upper:
            return style
    return "bold red"


@dataclass
class _Stack:
    """One stack's numbers, prepared once per frame (every layout reads them)."""

    name: str
    lost: bool
    v: list[float]
    soc: list[float]
    bound_pct: list[float]
    temp: list[float]
    leak_ma: list[float]
    leak: list[bool]
    bal: list[bool]
    sensors_c: list[float]
    load_cells: list[float]
    imbalance_kpa: float
    pressure_kpa: float
    expected_kpa: float

    @property
    def n(self) -> int:
        return len(self.v)

    @classmethod
    def of(cls, s: dict[str, Any]) -> _Stack:
        v = _nums(s.get("cell_voltage_v"))
        n = len(v)
        mask = int(s.get("balance_mask") or 0)
        flags = list(s.get("leak_flag") or [])
        temp = _nums(s.get("cell_temperature_c")) or [math.nan] * n
        return cls(
            name=str(s.get("name", "?")), lost=bool(s.get("lost")), v=v,
            soc=(_nums(s.get("soc")) + [math.nan] * n)[:n],
            bound_pct=([300.0 * x for x in _nums(s.get("soc_sigma"))] + [math.nan] * n)[:n],
            temp=(temp + [math.nan] * n)[:n],
            leak_ma=([1000.0 * x for x in _nums(s.get("leak_a"))] + [math.nan] * n)[:n],
            leak=[bool(flags[i]) if i < len(flags) else False for i in range(n)],
            bal=[bool(mask >> i & 1) for i in range(n)],
            sensors_c=_nums(s.get("temperature_c")), load_cells=_nums(s.get("load_cell_kpa")),
            imbalance_kpa=_num(s.get("load_cell_imbalance_kpa")),
            pressure_kpa=_num(s.get("pressure_kpa")),
            expected_kpa=_num(s.get("pressure_expected_kpa")))

    def extreme(self, values: list[float], highest: bool) -> tuple[int, float] | None:
        ok = _finite(values)
        if not ok:
            return None
        return (max if highest else min)(ok, key=lambda iv: iv[1])


# ------------------------------------------------------------------ lines


def _fit(parts: Sequence[Line], width: int, sep: str = "  ") -> Line:
    """The parts (in priority order) that fit in ``width``, separated by ``sep``; a part that
    does not fit is left out and the later (shorter) ones still tried."""
    line: Line = []
    used = 0
    for part in parts:
        size = sum(len(t) for t, _ in part)
        extra = size + (len(sep) if line else 0)
        if used + extra > width:
            continue
        if line:
            line.append((sep, ""))
        line.extend(part)
        used += extra
    return line


def _width(line: Line) -> int:
    return sum(len(t) for t, _ in line)


def _header(snap: dict[str, Any], width: int, age_s: float | None) -> Line:
    state = str(snap.get("state", "?"))
    outputs = int(snap.get("outputs") or 0)
    closed = [name for bit, name in OUTPUT_NAMES if outputs & bit]
    parts: list[Line] = [
        [(f"t {_num(snap.get('time_s')):.1f} s", "bold")],
        [(state, STATE_STYLE.get(state, "bold"))],
        [(f"I {_num(snap.get('current_a')):+.2f} A", "")],
        [(f"limits +{_num(snap.get('charge_limit_a')):.1f}/"
          f"-{_num(snap.get('discharge_limit_a')):.1f} A", "")],
        [("closed " + "+".join(closed), "green")] if closed else [("contactors open", "")],
    ]
    if age_s is not None and age_s >= 2.0:
        parts.insert(1, [(f"NO DATA FOR {age_s:.0f} s", "bold white on red")])
    return _fit(parts, width)


def _fault_lines(snap: dict[str, Any], width: int, max_lines: int) -> list[Line]:
    """The active faults (red) and the latched ones no longer active (yellow), word-wrapped; a
    last ``+N more`` when ``max_lines`` cannot hold them all."""
    active = [str(f) for f in snap.get("active_faults") or []]
    latched = [str(f) for f in snap.get("latched_faults") or [] if f not in active]
    if not active and not latched:
        return [[("faults: none", "green")]]
    words: list[Segment] = []
    if active:
        words.append(("active:", "bold"))
        words += [(f, "bold red") for f in active]
    if latched:
        words.append(("latched:", "bold"))
        words += [(f, "yellow") for f in latched]
    lines: list[Line] = [[]]
    for k, word in enumerate(words):
        line = lines[-1]
        need = len(word[0]) + (1 if line else 0)
        if _width(line) + need > width:
            if len(lines) == max_lines:
                more = f" +{sum(1 for w in words[k:] if not w[0].endswith(':'))} more"
                while line and _width(line) + len(more) > width:
                    line.pop()
                line.append((more, "bold"))
                return lines
            lines.append([])
            line = lines[-1]
            need = len(word[0])
        if line:
            line.append((" ", ""))
        line.append(word)
    return lines


def _summary_parts(st: _Stack) -> tuple[list[Line], list[Line]]:
    """The stack's summary as (first-line parts, second-line parts)."""
    first: list[Line] = [[(st.name, "bold")]]
    if st.lost:
        first.append([("LOST", "bold white on red")])
    lo, hi = st.extreme(st.v, False), st.extreme(st.v, True)
    if lo is None or hi is None:
        first.append([("no data", "dim")])
        return first, []
    first.append([("V ", ""), (f"{lo[1]:.3f} #{lo[0] + 1}", "bold blue"), ("..", ""),
                  (f"{hi[1]:.3f} #{hi[0] + 1}", "bold red"),
                  (f" ({1000 * (hi[1] - lo[1]):.0f} mV)", "")])
    slo, shi = st.extreme(st.soc, False), st.extreme(st.soc, True)
    bounds = _finite(st.bound_pct)
    if slo and shi:
        bound = max(b for _, b in bounds) if bounds else math.nan
        first.append([(f"SOC {100 * slo[1]:.1f}..{100 * shi[1]:.1f} ", ""),
                      (f"+/-{bound:.1f}", "yellow" if bound > WIDE_BOUND_PCT else ""),
                      (" %", "")])
    thi = st.extreme(st.temp, True)
    if thi:
        first.append([(f"Tmax {thi[1]:.1f} #{thi[0] + 1}", _temp_style(thi[1]))])
    second: list[Line] = [[(f"p {st.pressure_kpa:.0f} kPa (exp {st.expected_kpa:.0f})", "")]]
    leaking = [i + 1 for i, f in enumerate(st.leak) if f]
    shown = " ".join(f"#{i}" for i in leaking[:3]) + (f" +{len(leaking) - 3}"
                                                        if len(leaking) > 3 else "")
    leak_part: Line = [("leak " + (shown or "none"), "bold red" if leaking else "dim")]
    if leaking:  # before the load cells: a leaking cell matters more than the corner loads
        second.append(leak_part)
    if st.load_cells:
        cells = " ".join("--" if not math.isfinite(x) else f"{x:.0f}" for x in st.load_cells)
        second.append([(f"lc {cells} imb {st.imbalance_kpa:.0f}", "")])
    n_bal = sum(st.bal)
    second.append([(f"bal {n_bal}", "magenta" if n_bal else "dim")])
    if not leaking:
        second.append(leak_part)
    return first, second


def _summary_lines(st: _Stack, width: int, n_lines: int, name_w: int) -> list[Line]:
    first, second = _summary_parts(st)
    first[0] = [(f"{st.name:<{name_w}}", "bold")]
    if n_lines == 1:
        return [_fit(first + second, width)]
    return [_fit(first, width), _fit([[("", "")]] + second, width)]  # indented by the sep


def _chunks(n: int, per_line: int) -> list[range]:
    """Cells 0..n-1 in equal chunks of at most ``per_line``."""
    if n == 0:
        return []
    k = -(-n // per_line)
    size = -(-n // k)
    return [range(a, min(a + size, n)) for a in range(0, n, size)]


def _dv_scale(st: _Stack) -> tuple[float, str]:
    """The compact voltage row's unit: 1 mV while the stack's spread fits 2 digits, else 10 mV,
    else 100 mV (always exact to the unit shown)."""
    lo, hi = st.extreme(st.v, False), st.extreme(st.v, True)
    spread = 0.0 if lo is None or hi is None else hi[1] - lo[1]
    if spread < 0.0995:
        return 0.001, "+mV"
    if spread < 0.995:
        return 0.01, "+10mV"
    return 0.1, "+0.1V"


def _cell_rows(st: _Stack, layout: Layout, width: int, index_line: bool) -> list[Line]:
    w = layout.col_w
    per_line = max((width - LABEL_W) // w, 1)
    lo, hi = st.extreme(st.v, False), st.extreme(st.v, True)
    vmin = lo[1] if lo else math.nan
    vspan = max(hi[1] - lo[1], HEAT_MIN_SPAN_V) if lo and hi else 1.0
    slo, shi = st.extreme(st.soc, False), st.extreme(st.soc, True)
    smin = slo[1] if slo else math.nan
    sspan = max(shi[1] - slo[1], HEAT_MIN_SPAN_SOC) if slo and shi else 1.0
    thi = st.extreme(st.temp, True)
    extremes = {lo[0], hi[0]} if lo and hi else set()
    unit, dv_label = _dv_scale(st)
    lines: list[Line] = []
    for chunk in _chunks(st.n, per_line):
        if index_line:
            lines.append([(f"{'cell':<{LABEL_W}}", "dim")]
                         + [(f"{i + 1:>{w}}", "dim") for i in chunk])
        for row in layout.rows:
            label = dv_label if row == "dv" else ROW_LABELS[row]
            line: Line = [(f"{label:<{LABEL_W}}", "bold")]
            for i in chunk:
                line.extend(_cell(row, i, st, w, vmin, vspan, smin, sspan, unit, extremes,
                                  thi[0] if thi else -1))
            lines.append(line)
    return lines


def _cell(row: str, i: int, st: _Stack, w: int, vmin: float, vspan: float, smin: float,
          sspan: float, unit: float, extremes: set[int], hottest: int) -> list[Segment]:
    """One cell's column in one row: a flag character (voltage rows) and the value."""
    if row in ("v", "dv"):
        flag, fstyle = ("!", "bold red") if st.leak[i] else ("*", "bold magenta") if st.bal[i] \
            else (" ", "")
        v = st.v[i]
        style = _heat(v, vmin, vspan) + (" reverse bold" if i in extremes else "")
        if not math.isfinite(v):
            text = "-" * (w - 1)
        elif row == "v":
            text = f"{v:{w - 1}.3f}"
        else:
            text = f"{round((v - vmin) / unit):>{w - 1}d}"
        return [(flag, fstyle), (text, style)]
    if row == "soc":
        x = st.soc[i]
        style = _heat(x, smin, sspan)
        if not math.isfinite(x):
            return [(f"{'--':>{w}}", "dim")]
        return [(f"{100 * x:>{w}.1f}" if w >= 6 else f"{round(100 * x):>{w}d}", style)]
    if row == "bound":
        b = st.bound_pct[i]
        return [(f"{b:>{w}.2f}" if math.isfinite(b) else f"{'--':>{w}}",
                 "yellow" if b > WIDE_BOUND_PCT else "dim")]
    if row == "temp":
        t = st.temp[i]
        style = _temp_style(t) + (" reverse bold" if i == hottest else "")
        if not math.isfinite(t):
            return [(f"{'--':>{w}}", "dim")]
        return [(f"{t:>{w}.1f}" if w >= 6 else f"{round(t):>{w}d}", style)]
    leak = st.leak_ma[i]
    return [(f"{round(leak):>{w}d}" if math.isfinite(leak) else f"{'--':>{w}}",  # never "-0"
             "bold red" if st.leak[i] else "")]


def _pack_line(stacks: list[_Stack], width: int) -> Line:
    """The pack's lowest and highest cell and its hottest cell, by stack and number."""
    cells = [(st.name, i, st.v[i], st.temp[i]) for st in stacks for i in range(st.n)]
    volts = [c for c in cells if math.isfinite(c[2])]
    temps = [c for c in cells if math.isfinite(c[3])]
    parts: list[Line] = [[("pack", "bold")]]
    if volts:
        lo, hi = min(volts, key=lambda c: c[2]), max(volts, key=lambda c: c[2])
        parts.append([(f"V {lo[2]:.3f} {lo[0]} #{lo[1] + 1}", "bold blue"), (" .. ", ""),
                      (f"{hi[2]:.3f} {hi[0]} #{hi[1] + 1}", "bold red")])
    if temps:
        hot = max(temps, key=lambda c: c[3])
        parts.append([(f"T max {hot[3]:.1f} C {hot[0]} #{hot[1] + 1}", _temp_style(hot[3]))])
    return _fit(parts, width)


LEGEND = "*V balancing  !V leak  reversed: lowest/highest V, hottest"
LEGEND_DV = "  +mV: above lowest V"


def frame(snap: dict[str, Any], width: int = 80, height: int = 24,
          age_s: float | None = None) -> tuple[list[Line], str]:
    """The lines of one snapshot for a ``width`` x ``height`` terminal and the name of the
    layout used. No line is longer than ``width``; at most ``height`` lines (the most compact
    layout is cropped, with a last line saying so, when even it does not fit). ``age_s``: the
    wall time since the snapshot arrived (shown when the BMS has gone quiet)."""
    width = max(width, 20)
    height = max(height, 3)
    stacks = [_Stack.of(s) for s in snap.get("stacks") or []]
    name_w = max([len(st.name) for st in stacks] + [4])
    head = _header(snap, width, age_s)
    same_n = len({st.n for st in stacks}) == 1
    chosen: list[Line] | None = None
    used = LAYOUTS[-1]
    for max_fault_lines in (4, 1):
        faults = _fault_lines(snap, width, max_fault_lines)
        for layout in LAYOUTS:
            if layout.col_w and stacks:
                per_line = max((width - LABEL_W) // layout.col_w, 1)
                if per_line < 8:
                    continue  # a grid of a few cells per line is not a view of the stack
            lines = [head, *faults]
            shared_index = bool(layout.col_w and stacks and same_n
                                and stacks[0].n <= (width - LABEL_W) // layout.col_w)
            if shared_index:
                lines.append([(f"{'cell':<{LABEL_W}}", "dim")]
                             + [(f"{i + 1:>{layout.col_w}}", "dim")
                                for i in range(stacks[0].n)])
            for st in stacks:
                lines += _summary_lines(st, width, layout.summary_lines, name_w)
                if layout.col_w and st.n:
                    lines += _cell_rows(st, layout, width, index_line=not shared_index)
            if len(lines) <= height:
                chosen, used = lines, layout
                break
        if chosen is not None:
            break
    if chosen is None:
        chosen = lines[:height - 1] + [[(f"... {len(lines) - height + 1} more lines: enlarge "
                                          "the terminal", "bold")]]
    else:
        spare = height - len(chosen)
        if spare >= 2 and len(stacks) > 1:  # under the faults: the pack's worst cells first
            chosen.insert(1 + len(faults), _pack_line(stacks, width))
            spare -= 1
        if spare >= 1 and used.col_w:
            legend = LEGEND + (LEGEND_DV if "dv" in used.rows else "")
            chosen.append([(legend, "dim")])
    return [_crop(line, width) for line in chosen], used.name


def _crop(line: Line, width: int) -> Line:
    out: Line = []
    used = 0
    for text, style in line:
        if used + len(text) > width:
            text = text[:width - used]
        if text:
            out.append((text, style))
            used += len(text)
        if used >= width:
            break
    return out


def plain(lines: list[Line]) -> str:
    """The frame as plain text (no colours): the fallback without rich or a terminal."""
    return "\n".join("".join(t for t, _ in line).rstrip() for line in lines)
