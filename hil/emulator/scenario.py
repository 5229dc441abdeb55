"""Scenario files: the load on the stack over time, faults at given times, ambient temperature.

Format (YAML, safe-loaded; docs/emulator.md has the full description)::

    schema: ssb-bms/scenario/1
    name: udds-twice
    initial: {soc: 0.9, temperature_c: 25.0}   # optional; CLI flags are the defaults
    loop: false                                 # repeat the segments forever
    segments:
      - {kind: rest, duration_s: 60}
      - {kind: current, current_a: -5.0, duration_s: 600, until_min_cell_v: 3.2}
      - {kind: cccv, current_a: 5.0, cv_cell_v: 4.2, cutoff_a: 0.25, duration_s: 7200}
      - {kind: drive, csv: udds-current.csv, scale: 1.0, repeat: 2}
    faults:
      - {at_s: 120, fault: CELL_SOFT_SHORT, target: 5, value: 10.0}
      - {at_s: 300, fault: CELL_SOFT_SHORT, target: 5, clear: true}
    ambient:
      - {at_s: 0, temperature_c: 25.0}

Segment currents are + = charge. ``current`` and ``drive`` obey the SET_OUTPUTS limits unless
``respect_limits: false``; ``cccv`` always obeys the charge limit. A segment ends after
``duration_s`` or when its load is done (CC-CV cutoff, until_* voltage, end of the profile).
After the last segment the stack rests (or the segments repeat with ``loop: true``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from boards.config import TIME_EPS_S
from hil.emulator.faults import FaultError, InjectedFault, fault_code
from hil.emulator.plant import CcCvCharge, ConstantCurrent, CurrentProfile, Load, Plant, Rest

SCENARIO_SCHEMA = "ssb-bms/scenario/1"
SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
SEGMENT_KINDS = ("rest", "current", "cccv", "drive")


class ScenarioError(ValueError):
    """An invalid scenario file: names the file, the key and what is allowed."""

    def __init__(self, file: str | Path, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"{file}: {key}: {value!r} is invalid; allowed: {allowed}")


@dataclass(frozen=True)
class Segment:
    kind: str
    duration_s: float = math.inf
    current_a: float = 0.0
    cv_cell_v: float = 4.2
    cutoff_a: float = 0.25
    until_min_cell_v: float | None = None
    until_max_cell_v: float | None = None
    csv: Path | None = None
    scale: float = 1.0
    repeat: int = 1
    respect_limits: bool = True

    def make_load(self) -> Load:
        if self.kind == "rest":
            return Rest()
        if self.kind == "current":
            return ConstantCurrent(self.current_a, self.until_min_cell_v, self.until_max_cell_v,
                                   respect_limits=self.respect_limits)
        if self.kind == "cccv":
            return CcCvCharge(self.current_a, self.cv_cell_v, self.cutoff_a)
        assert self.csv is not None  # noqa: S101 (validated at load)
        prof = CurrentProfile.from_csv(self.csv, scale=self.scale,
                                       respect_limits=self.respect_limits)
        if self.repeat > 1:
            span = prof.duration_s + (prof.time_s[1] - prof.time_s[0])
            import numpy as np

            t = np.concatenate([prof.time_s + k * span for k in range(self.repeat)])
            a = np.tile(prof.current_a, self.repeat)
            prof = CurrentProfile(t, a, scale=self.scale, respect_limits=self.respect_limits)
        return prof


@dataclass(frozen=True)
class FaultEvent:
    at_s: float
    code: InjectedFault
    target: int = 0xFF
    value: float = 0.0
    clear: bool = False


@dataclass(frozen=True)
class Scenario:
    name: str
    segments: tuple[Segment, ...]
    faults: tuple[FaultEvent, ...] = ()
    ambient: tuple[tuple[float, float], ...] = ()
    initial_soc: float | None = None
    initial_temperature_c: float | None = None
    loop: bool = False
    path: Path | None = None


def _num(file: Path, key: str, value: Any, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or not lo <= value <= hi:
        raise ScenarioError(file, key, value, f"a finite number in [{lo}, {hi}]")
    return float(value)


def resolve_scenario_path(name_or_path: str | Path) -> Path:
    """A path, or the name of a shipped scenario in hil/scenarios/ (``udds``)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return SCENARIO_DIR / f"{name_or_path}.yaml"


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Read and validate a scenario file; raises ScenarioError naming file and key."""
    path = resolve_scenario_path(name_or_path)
    data = _read_top(path)
    soc0, t0 = _parse_initial(path, data)
    segments = _parse_segments(path, data)
    faults = _parse_faults(path, data)
    ambient = _parse_ambient(path, data)
    loop = data.get("loop", False)
    if not isinstance(loop, bool):
        raise ScenarioError(path, "loop", loop, "true or false")
    return Scenario(
        name=str(data.get("name", path.stem)), segments=tuple(segments),
        faults=tuple(sorted(faults, key=lambda e: e.at_s)),
        ambient=tuple(sorted(ambient)), initial_soc=soc0, initial_temperature_c=t0,
        loop=loop, path=path,
    )


_TOP_KEYS = {"schema", "name", "description", "initial", "loop", "segments", "faults", "ambient"}
_SEGMENT_KEYS = {"kind", "duration_s", "current_a", "cv_cell_v", "cutoff_a", "until_min_cell_v",
                 "until_max_cell_v", "csv", "scale", "repeat", "respect_limits"}
_SEGMENT_NUMBERS = (("current_a", -1e4, 1e4), ("cv_cell_v", 0.5, 6.0), ("cutoff_a", 0.0, 1e4),
                    ("until_min_cell_v", 0.0, 6.0), ("until_max_cell_v", 0.0, 6.0),
                    ("scale", -1e3, 1e3))


def _read_top(path: Path) -> dict[str, Any]:
    """The file's YAML mapping, with the right schema and only known top-level keys."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(path, "<file>", str(path), f"a readable file ({exc.strerror})") \
            from None
    except yaml.YAMLError as exc:
        raise ScenarioError(path, "<yaml>", str(exc).splitlines()[0], "valid YAML") from None
    if not isinstance(data, dict):
        raise ScenarioError(path, "<top>", data, "a mapping")
    if data.get("schema") != SCENARIO_SCHEMA:
        raise ScenarioError(path, "schema", data.get("schema"), SCENARIO_SCHEMA)
    for key in data:
        if key not in _TOP_KEYS:
            raise ScenarioError(path, key, "<unknown key>", ", ".join(sorted(_TOP_KEYS)))
    return data


def _parse_initial(path: Path, data: dict[str, Any]) -> tuple[float | None, float | None]:
    """``initial``: (soc, temperature_c), each None when not given."""
    initial = data.get("initial") or {}
    if not isinstance(initial, dict):
        raise ScenarioError(path, "initial", initial, "a mapping")
    soc0 = _num(path, "initial.soc", initial["soc"], 0.0, 1.0) if "soc" in initial else None
    t0 = (_num(path, "initial.temperature_c", initial["temperature_c"], -40.0, 80.0)
          if "temperature_c" in initial else None)
    return soc0, t0


def _parse_segments(path: Path, data: dict[str, Any]) -> list[Segment]:
    raw_segments = data.get("segments")
    if not isinstance(raw_segments, list) or not raw_segments:
        raise ScenarioError(path, "segments", raw_segments, "a non-empty list")
    return [_parse_segment(path, f"segments[{i}]", item) for i, item in enumerate(raw_segments)]


def _parse_segment(path: Path, key: str, item: Any) -> Segment:
    if not isinstance(item, dict):
        raise ScenarioError(path, key, item, "a mapping")
    for k in item:
        if k not in _SEGMENT_KEYS:
            raise ScenarioError(path, f"{key}.{k}", "<unknown key>",
                                ", ".join(sorted(_SEGMENT_KEYS)))
    kind = item.get("kind")
    if kind not in SEGMENT_KINDS:
        raise ScenarioError(path, f"{key}.kind", kind, ", ".join(SEGMENT_KINDS))
    kw: dict[str, Any] = {"kind": kind}
    _segment_numbers(path, key, item, kind, kw)
    _segment_options(path, key, item, kw)
    if kind == "drive":
        kw["csv"] = _segment_csv(path, key, item)
    return Segment(**kw)


def _segment_numbers(path: Path, key: str, item: dict[str, Any], kind: str,
                     kw: dict[str, Any]) -> None:
    """duration_s (required for rest and current) and the numeric keys, into ``kw``."""
    if "duration_s" in item:
        kw["duration_s"] = _num(path, f"{key}.duration_s", item["duration_s"], 0.0, 1e9)
    elif kind in ("rest", "current"):
        raise ScenarioError(path, f"{key}.duration_s", "<missing>",
                            "a duration for rest and current segments")
    for k, lo, hi in _SEGMENT_NUMBERS:
        if k in item:
            kw[k] = _num(path, f"{key}.{k}", item[k], lo, hi)
    if kind in ("current", "cccv") and "current_a" not in item:
        raise ScenarioError(path, f"{key}.current_a", "<missing>", "a current in A")
    if kind == "cccv" and kw["current_a"] <= 0:
        raise ScenarioError(path, f"{key}.current_a", kw["current_a"], "> 0 (charge)")


def _segment_options(path: Path, key: str, item: dict[str, Any], kw: dict[str, Any]) -> None:
    """repeat and respect_limits, into ``kw``."""
    if "repeat" in item:
        r = item["repeat"]
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 10000:
            raise ScenarioError(path, f"{key}.repeat", r, "an integer in [1, 10000]")
        kw["repeat"] = r
    if "respect_limits" in item:
        if not isinstance(item["respect_limits"], bool):
            raise ScenarioError(path, f"{key}.respect_limits", item["respect_limits"],
                                "true or false")
        kw["respect_limits"] = item["respect_limits"]


def _segment_csv(path: Path, key: str, item: dict[str, Any]) -> Path:
    """A drive segment's CSV: beside the scenario file, else in hil/scenarios/."""
    csv = item.get("csv")
    if not isinstance(csv, str):
        raise ScenarioError(path, f"{key}.csv", csv, "a CSV file name")
    csv_path = (path.parent / csv) if (path.parent / csv).exists() else SCENARIO_DIR / csv
    if not csv_path.exists():
        raise ScenarioError(path, f"{key}.csv", csv, "an existing CSV (time_s,current_a)")
    return csv_path


def _parse_faults(path: Path, data: dict[str, Any]) -> list[FaultEvent]:
    return [_parse_fault(path, f"faults[{i}]", item)
            for i, item in enumerate(data.get("faults") or [])]


def _parse_fault(path: Path, key: str, item: Any) -> FaultEvent:
    if not isinstance(item, dict):
        raise ScenarioError(path, key, item, "a mapping")
    try:
        code = fault_code(item.get("fault", ""))
    except FaultError as exc:
        raise ScenarioError(path, f"{key}.fault", item.get("fault"), str(exc)) from None
    target = item.get("target", 0xFF)
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target <= 0xFF:
        raise ScenarioError(path, f"{key}.target", target, "an integer 0..255")
    clear = item.get("clear", False)
    if not isinstance(clear, bool):
        raise ScenarioError(path, f"{key}.clear", clear, "true or false")
    return FaultEvent(
        at_s=_num(path, f"{key}.at_s", item.get("at_s"), 0.0, 1e9), code=code,
        target=target, value=_num(path, f"{key}.value", item.get("value", 0.0)),
        clear=clear)


def _parse_ambient(path: Path, data: dict[str, Any]) -> list[tuple[float, float]]:
    ambient = []
    for i, item in enumerate(data.get("ambient") or []):
        key = f"ambient[{i}]"
        if not isinstance(item, dict):
            raise ScenarioError(path, key, item, "a mapping {at_s, temperature_c}")
        ambient.append((_num(path, f"{key}.at_s", item.get("at_s"), 0.0, 1e9),
                        _num(path, f"{key}.temperature_c", item.get("temperature_c"),
                             -60.0, 150.0)))
    return ambient


Injector = Callable[[InjectedFault, int, float, bool], None]
# ScenarioRunner.quiet_before_s's margin (s): far above the rounding of a plant time (~1e-12 s
# at a day) and far below a tick
_QUIET_MARGIN_S = 1e-6


@dataclass
class ScenarioRunner:
    """Applies a scenario to a plant: call :meth:`advance` before every ``plant.step``.

    ``inject`` receives every fault event (the board routes link faults to itself and the rest
    to the plant); default: the plant's own inject_fault, which rejects link faults, so they
    are skipped when driving a plant without a board.
    """

    scenario: Scenario
    plant: Plant
    inject: Injector | None = None
    segment_index: int = -1
    _segment_t0: float = 0.0
    _next_fault: int = 0
    _next_ambient: int = 0
    errors: list[str] = field(default_factory=list)
    advances: int = 0  # calls of advance(): what quiet_before_s() depends on changes only there

    def __post_init__(self) -> None:
        self._start_segment(0)

    @property
    def finished(self) -> bool:
        return self.segment_index >= len(self.scenario.segments)

    def _start_segment(self, index: int) -> None:
        if index >= len(self.scenario.segments) and self.scenario.loop:
            index = 0
        self.segment_index = index
        self._segment_t0 = self.plant.t_s
        if index < len(self.scenario.segments):
            self.plant.set_load(self.scenario.segments[index].make_load())
        else:
            self.plant.set_load(Rest())

    def due(self) -> bool:
        """True if :meth:`advance` would do something at the plant's current time."""
        t = self.plant.t_s + TIME_EPS_S
        sc = self.scenario
        if self._next_fault < len(sc.faults) and sc.faults[self._next_fault].at_s <= t:
            return True
        if self._next_ambient < len(sc.ambient) and sc.ambient[self._next_ambient][0] <= t:
            return True
        if self.finished:
            return False
        seg = sc.segments[self.segment_index]
        return self.plant.load.done or t - self._segment_t0 >= seg.duration_s

    def quiet_before_s(self) -> float:
        """A plant time before which :meth:`due` is False while the load is not done and
        :meth:`advance` is not called: the next fault, ambient change or segment end, less
        TIME_EPS_S and a margin far above the rounding of ``t_s + TIME_EPS_S`` (the board's
        fast lane asks due() only from then on)."""
        sc = self.scenario
        t = math.inf
        if self._next_fault < len(sc.faults):
            t = min(t, sc.faults[self._next_fault].at_s)
        if self._next_ambient < len(sc.ambient):
            t = min(t, sc.ambient[self._next_ambient][0])
        if not self.finished:
            t = min(t, self._segment_t0 + sc.segments[self.segment_index].duration_s)
        return t - TIME_EPS_S - _QUIET_MARGIN_S

    def advance(self) -> None:
        """Apply the events due at the plant's time and move to the next segment if done."""
        self.advances += 1
        t = self.plant.t_s + TIME_EPS_S  # events at t fire before the step that starts at t
        sc = self.scenario
        while self._next_fault < len(sc.faults) and sc.faults[self._next_fault].at_s <= t:
            ev = sc.faults[self._next_fault]
            self._next_fault += 1
            try:
                if self.inject is not None:
                    self.inject(ev.code, ev.target, ev.value, ev.clear)
                else:
                    self.plant.inject_fault(ev.code, ev.target, ev.value, ev.clear)
            except FaultError as exc:
                self.errors.append(f"t={ev.at_s}: {exc}")
        while self._next_ambient < len(sc.ambient) and sc.ambient[self._next_ambient][0] <= t:
            self.plant.set_ambient(sc.ambient[self._next_ambient][1])
            self._next_ambient += 1
        # bounded: with loop: true, segments that are all done at once must not spin forever
        for _ in range(len(sc.segments) + 1):
            if self.finished:
                break
            seg = sc.segments[self.segment_index]
            if not (self.plant.load.done or t - self._segment_t0 >= seg.duration_s):
                break
            self._start_segment(self.segment_index + 1)
