"""``bms plot LOG -o run.png``: one figure, one time axis, everything a run log holds.

Panels (each drawn only if its columns exist; names as in :func:`bms.runlog.standard_columns`):
cell voltages and SOC (with +/- 3 sigma bounds) of every cell in grey, the cells the faults name
and the lowest and highest cell coloured and labelled ("cell 8 CELL_LEAK", numbered from 1 as
ticks.csv numbers them); temperatures; stack pressure (load cells measured,
expected dashed); current with the charge/discharge limits (the stacks' dendrite-safe CCD
limits dotted); contactor state with fault markers
from events.jsonl (warning, fault, critical in rising colours).

Uses matplotlib's object API (``Figure`` + Agg canvas), never pyplot, so nothing depends on a
display or on global backend state.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bms.app.errors import CliError, DataFileError, OutputError, Parser, UnreadableFileError, report
from bms.faults import CHANNEL_KIND, FaultCode, fault_where
from bms.runlog import EVENTS, TICKS, load_events, load_ticks
from boards.config import ConfigError, load_pack

_CELL_V = re.compile(r"^cell\d+_voltage_v$")
_CELL_V_NUM = re.compile(r"^cell(\d+)_voltage_v$")
_CELL_SOC = re.compile(r"^cell(\d+)_soc$")
_TEMP = re.compile(r"^t\d+_c$")
_LOADCELL = re.compile(r"^pressure_lc\d+_kpa$")
_EXPECTED = re.compile(r"^pressure_expected(_s\d+)?_kpa$")
_CCD = re.compile(r"^ccd_limit(_s\d+)?_a$")
_SEVERITY_COLOUR = {"warning": "tab:orange", "fault": "tab:red", "critical": "darkred"}
_STATE_NAMES = ["STANDBY", "PRECHARGE", "CLOSED", "OPENING", "FAULT", "SAFE"]


def _cols(ticks: dict[str, np.ndarray], pattern: re.Pattern[str]) -> list[str]:
    return [c for c in ticks if pattern.match(c) and ticks[c].dtype.kind == "f"]


def plot_run(log_dir: str | Path, out_png: str | Path) -> Path:
    """Draw the run in ``log_dir`` into ``out_png``; returns the PNG path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    log_dir = Path(log_dir)
    ticks, events = _load_run(log_dir)
    t = ticks["time_s"]
    panels = _panels(ticks)
    fig = Figure(figsize=(12, 2.2 * len(panels) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    marked = _marked_cells(ticks, events)
    for name, ax in zip(panels, axes, strict=True):
        if name in ("voltage", "soc"):
            _DRAW_CELLS[name](ax, t, ticks, marked)
        else:
            _DRAW[name](ax, t, ticks)
    _mark_faults(axes[-1], axes, events)  # the "state" panel is always the last
    axes[-1].set_xlabel("time (s)")
    for a in axes:
        a.grid(True, linewidth=0.3)
    fig.suptitle(f"run log {log_dir.name}")
    out = Path(out_png)
    try:
        fig.savefig(out, dpi=100)
    except OSError as exc:
        raise OutputError(f"{exc.filename or out}: cannot write ({exc.strerror or exc})",
                          "give -o a PNG path in a folder you can write") from exc
    return out


def _load_run(log_dir: Path) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """ticks.csv (must have time_s rows, in time order) and events.jsonl (empty if absent)."""
    try:
        ticks = load_ticks(log_dir / TICKS)
        events = load_events(log_dir / EVENTS) if (log_dir / EVENTS).exists() else []
    except OSError as exc:
        raise UnreadableFileError(
            f"{exc.filename or log_dir / TICKS}: cannot read ({exc.strerror or exc})",
            "bms plot takes a run's log folder (the --log DIR of bms run or bms demo)") from exc
    t = ticks.get("time_s")
    if t is None or len(t) == 0 or t.dtype.kind != "f":
        raise DataFileError(f"{log_dir / TICKS}: no complete rows with a numeric time_s column")
    back = np.flatnonzero(~(np.diff(t) > 0.0))
    if back.size:
        k = int(back[0]) + 1
        raise DataFileError(f"{log_dir / TICKS}: time_s does not increase at data row {k + 1} "
                            f"({t[k - 1]:g} s -> {t[k]:g} s): rows of two runs in one file, or "
                            "not a run log")
    return ticks, events


def _panels(ticks: dict[str, np.ndarray]) -> list[str]:
    """The panels the log's columns fill, top to bottom; "state" always."""
    panels = []
    if _cols(ticks, _CELL_V):
        panels.append("voltage")
    if any(_CELL_SOC.match(c) for c in ticks):
        panels.append("soc")
    if _cols(ticks, _TEMP):
        panels.append("temperature")
    if _cols(ticks, _LOADCELL) or _cols(ticks, _EXPECTED):
        panels.append("pressure")
    if "current_a" in ticks:
        panels.append("current")
    panels.append("state")
    return panels


_THIN = {"linewidth": 0.7}
#: The other cells: thin and grey, under the marked ones (23 or 92 coloured traces and a colour
#: cycle of 10 say nothing about which cell is which).
_OTHER = {"linewidth": 0.5, "color": "0.65", "alpha": 0.6}
_MARK_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown")


def _marked_cells(ticks: dict[str, np.ndarray], events: list[dict[str, Any]]
                  ) -> dict[int, str]:
    """The cells the voltage and SOC panels colour and label (1-based pack-wide number ->
    why): each cell a fault event names (its name), then the lowest and the highest cell
    voltage of the run; at most len(_MARK_COLOURS)."""
    marked: dict[int, str] = {}
    offsets = _stack_offsets(events)
    for ev in events:
        if ev.get("type") != "fault" or ev.get("event") != "raise" or ev.get("cell") is None:
            continue
        if CHANNEL_KIND.get(_code(ev)) != "cell":
            continue
        stack = int(ev.get("stack") or 0)
        if stack >= len(offsets):
            continue
        number = offsets[stack] + int(ev["cell"]) + 1
        marked.setdefault(number, str(ev.get("name", "fault")))
    volts = _cols(ticks, _CELL_V)
    if volts:
        with np.errstate(all="ignore"):
            lows = [np.nanmin(ticks[c]) if np.isfinite(ticks[c]).any() else np.inf
                    for c in volts]
            highs = [np.nanmax(ticks[c]) if np.isfinite(ticks[c]).any() else -np.inf
                     for c in volts]
        for k, why in ((int(np.argmin(lows)), "lowest V"), (int(np.argmax(highs)), "highest V")):
            number = int(_CELL_V_NUM.match(volts[k]).group(1))  # type: ignore[union-attr]
            marked.setdefault(number, why)
    return dict(list(marked.items())[:len(_MARK_COLOURS)])


def _code(ev: dict[str, Any]) -> FaultCode | None:
    try:
        return FaultCode(int(ev.get("code", -1)))
    except ValueError:
        return None


def _stack_offsets(events: list[dict[str, Any]]) -> list[int]:
    """Each stack's first pack-wide cell index (ticks.csv numbers the cells across the pack;
    events count within a stack), from the pack file the run's meta event names; one stack
    when it cannot be read."""
    meta = next((e for e in events if e.get("type") == "meta"), {})
    try:
        pack = load_pack(meta.get("pack_file") or meta["pack"])
    except (KeyError, TypeError, ConfigError):
        return [0]
    return [int(x) for x in np.cumsum([0] + [s.cells for s in pack.stacks])[:-1]]


def _cell_traces(ticks: dict[str, np.ndarray], pattern: re.Pattern[str]
                 ) -> list[tuple[int, str]]:
    return sorted((int(m.group(1)), c) for c in ticks
                  if (m := pattern.match(c)) and ticks[c].dtype.kind == "f")


def _draw_cells(ax: Any, t: np.ndarray, traces: list[tuple[int, np.ndarray]],
                marked: dict[int, str], sigma: dict[int, np.ndarray] | None = None) -> None:
    """Every cell grey, then the marked ones in their colours with a label each ("cell 8
    CELL_LEAK"), the same colour for the same cell in every panel."""
    others = [(n, y) for n, y in traces if n not in marked]
    for k, (_, y) in enumerate(others):
        ax.plot(t, y, **_OTHER, label=f"other cells ({len(others)})" if k == 0 else None)
    for colour, (number, why) in zip(_MARK_COLOURS, marked.items(), strict=False):
        y = dict(traces).get(number)
        if y is None:
            continue
        ax.plot(t, y, color=colour, linewidth=0.9, label=f"cell {number} {why}")
        if sigma is not None and number in sigma:
            ax.fill_between(t, y - 3 * sigma[number], y + 3 * sigma[number], color=colour,
                            alpha=0.15, linewidth=0)
    _legend_above(ax, ncol=len(marked) + 1)


def _draw_voltage(ax: Any, t: np.ndarray, ticks: dict[str, np.ndarray],
                  marked: dict[int, str]) -> None:
    _draw_cells(ax, t, [(n, ticks[c]) for n, c in _cell_traces(ticks, _CELL_V_NUM)], marked)
    ax.set_ylabel("cell voltage (V)")


def _draw_soc(ax: Any, t: np.ndarray, ticks: dict[str, np.ndarray],
              marked: dict[int, str]) -> None:
    columns = _cell_traces(ticks, _CELL_SOC)
    sigma = {n: 100.0 * ticks[c + "_sigma"] for n, c in columns if c + "_sigma" in ticks}
    _draw_cells(ax, t, [(n, 100.0 * ticks[c]) for n, c in columns], marked, sigma)
    ax.set_ylabel("SOC (%), ±3σ (marked cells)")


def _legend_above(ax: Any, ncol: int) -> None:
    """The panel's legend in the gap above it, not on it: a legend inside covered the start of
    the traces (the current's 2C charge, the thermistors' rise)."""
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize="x-small", ncol=ncol,
              frameon=False, borderaxespad=0.1)


def _draw_temperature(ax: Any, t: np.ndarray, ticks: dict[str, np.ndarray]) -> None:
    for c in _cols(ticks, _TEMP):
        ax.plot(t, ticks[c], label=c[:-2], **_THIN)
    ax.set_ylabel("temperature (°C)")
    _legend_above(ax, ncol=8)


def _draw_pressure(ax: Any, t: np.ndarray, ticks: dict[str, np.ndarray]) -> None:
    for c in _cols(ticks, _LOADCELL):
        ax.plot(t, ticks[c], label=c.removeprefix("pressure_").removesuffix("_kpa"), **_THIN)
    for c in _cols(ticks, _EXPECTED):
        ax.plot(t, ticks[c], "k--", linewidth=1.0,
                label=c.removeprefix("pressure_").removesuffix("_kpa"))
    ax.set_ylabel("stack pressure (kPa)")
    _legend_above(ax, ncol=6)


def _draw_current(ax: Any, t: np.ndarray, ticks: dict[str, np.ndarray]) -> None:
    ax.plot(t, ticks["current_a"], color="tab:blue", linewidth=0.8, label="current")
    if "charge_limit_a" in ticks:
        ax.plot(t, ticks["charge_limit_a"], color="tab:green", linewidth=0.8,
                label="charge limit")
    for c in _cols(ticks, _CCD):  # the dendrite-safe part of it (nan: the pack has none)
        ax.plot(t, ticks[c], color="tab:green", linestyle=":", linewidth=0.8,
                label=c.removesuffix("_a").replace("_", " "))
    if "discharge_limit_a" in ticks:
        ax.plot(t, -ticks["discharge_limit_a"], color="tab:red", linewidth=0.8,
                label="-discharge limit")
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_ylabel("current (A), + charge")
    _legend_above(ax, ncol=4)


def _draw_state(ax: Any, t: np.ndarray, ticks: dict[str, np.ndarray]) -> None:
    if "state" in ticks and ticks["state"].dtype.kind == "f":
        ax.step(t, ticks["state"], where="post", color="black", linewidth=1.0)
    ax.set_yticks(range(len(_STATE_NAMES)), _STATE_NAMES, fontsize="x-small")
    ax.set_ylim(-0.5, len(_STATE_NAMES) - 0.5)
    ax.set_ylabel("state")


_DRAW: dict[str, Callable[[Any, np.ndarray, dict[str, np.ndarray]], None]] = {
    "temperature": _draw_temperature, "pressure": _draw_pressure, "current": _draw_current,
    "state": _draw_state,
}
_DRAW_CELLS: dict[str, Callable[[Any, np.ndarray, dict[str, np.ndarray], dict[int, str]],
                                None]] = {"voltage": _draw_voltage, "soc": _draw_soc}


def _mark_faults(ax: Any, axes: Any, events: list[dict[str, Any]]) -> None:
    """Each raised fault: a line across every panel, a marker (and its name) on ``ax``."""
    seen: set[str] = set()
    seen_names: list[float] = []
    span = float(np.ptp(ax.get_xlim())) or 1.0
    shift = 0  # names closer than 1 % of the time axis are set side by side, not on each other
    for ev in events:
        if ev.get("type") != "fault" or ev.get("event") != "raise":
            continue
        sev = str(ev.get("severity", "fault"))
        colour = _SEVERITY_COLOUR.get(sev, "tab:purple")
        ts = ev.get("time_s")
        if ts is None:
            continue
        for a in axes:
            a.axvline(ts, color=colour, linewidth=0.6, alpha=0.5)
        label = sev if sev not in seen else None
        seen.add(sev)
        ax.plot([ts], [len(_STATE_NAMES) - 1], marker="v", color=colour, linestyle="none",
                label=label)
        if len(seen_names) < 40:  # keep a long run's figure readable
            shift = shift + 1 if seen_names and ts - seen_names[-1] < 0.01 * span else 0
            seen_names.append(ts)
            code = _code(ev)
            where = ev.get("where") or ("" if code is None else  # a log from before `where`
                                        fault_where(code, ev.get("stack"), ev.get("cell")))
            text = " ".join(str(x) for x in (ev.get("name", ev.get("code", "")), where) if x)
            ax.annotate(text, (ts, len(_STATE_NAMES) - 1.4),
                        xytext=(7 * shift, 0), textcoords="offset points",
                        fontsize="xx-small", rotation=90, va="top", color=colour)
    if seen:
        ax.legend(loc="lower right", fontsize="x-small")


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(
        prog="bms plot", description="Plot a run log (ticks.csv + events.jsonl) to a PNG.",
        epilog="examples:\n"
               "  bms demo --log runs/demo && bms plot runs/demo          # -> runs/demo/run.png\n"
               "  bms run --duration 600 --log runs/r1 && bms plot runs/r1 -o r1.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", help="run-log directory (holds ticks.csv)")
    parser.add_argument("-o", "--output", help="PNG to write (default: LOG/run.png)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    out = Path(args.output) if args.output else Path(args.log) / "run.png"
    try:  # the one error path (bms/app/errors.py): a log that cannot be read 5, unusable 3
        path = plot_run(args.log, out)
    except CliError as exc:
        return report("plot", exc)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
