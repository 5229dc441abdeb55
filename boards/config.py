"""Pack files and board profiles: YAML, safe-loaded, validated into frozen dataclasses.

An invalid file raises :class:`ConfigError`, whose message names the file, the key path, the bad
value and what is allowed, so the CLI can print one line instead of a traceback.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PACK_SCHEMA = "ssb-bms/pack/1"
BOARD_SCHEMA = "ssb-bms/board/1"
PACK_DIR = Path(__file__).resolve().parent / "packs"
BOLTZMANN_EV_PER_K = 8.617333262e-5
KELVIN_OFFSET = 273.15
#: 25 degC in kelvin: the NTC datasheet reference temperature (R25, Beta 25/85) and the usual
#: reference of Arrhenius fits.
T25_K = 25.0 + KELVIN_OFFSET
#: Tolerance of every comparison of times built from sums of ticks: ten ticks of 0.1 s add up
#: to 0.9999999999999999 s, which must count as 1 s. Far below any tick (>= 1 ms) and far above
#: float64 rounding of run times (1e-16 relative). The C protection engine's
#: SSB_PROT_TIME_EPS_S is the same number (checked by tests/test_layers.py).
TIME_EPS_S = 1e-9


class ConfigError(ValueError):
    """A pack file or board profile is missing a key, has a key it should not, or holds a
    value out of range. ``str()`` is one line naming the file, the key path and what is
    allowed; values print as plain numbers and lists (never numpy reprs)."""

    def __init__(self, file: str | Path, key: str, value: Any, allowed: str,
                 text: str | None = None) -> None:
        self.file = str(file)
        self.key = key
        self.value = _plain(value)
        self.allowed = allowed
        super().__init__(f"{self.file}: {key}: "
                         + (text or f"{self.value!r} is invalid; allowed: {allowed}"))


def _plain(value: Any) -> Any:
    """numpy scalars and arrays, tuples -> Python numbers and lists (for messages)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _closest(key: str, allowed: list[str]) -> str:
    match = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
    return f"did you mean {match[0]!r}? " if match else ""


# --------------------------------------------------------------------------- validated reading


class _Reader:
    """Reads typed values out of a nested mapping, raising ConfigError with the key path."""

    def __init__(self, file: str | Path, data: Any, path: str = "") -> None:
        self.file = file
        self.data = data
        self.path = path
        self._read: set[str] = set()  # keys asked for (present or not)
        self._children: list[_Reader] = []

    def item(self, key: str, index: int) -> _Reader:
        """A reader for the mapping at ``key[index]`` (a list of mappings), checked by
        :meth:`finish` like a :meth:`sub` section."""
        child = _Reader(self.file, self.raw(key)[index], self._key(f"{key}[{index}]"))
        self._children.append(child)
        return child

    def finish(self) -> None:
        """Refuse keys nobody read (a typo, a key of another version, a section that does
        not exist), in this section and every section read from it: one error naming the
        key, the closest allowed one and what is allowed here."""
        if isinstance(self.data, dict):
            unknown = [k for k in self.data if k not in self._read]
            if unknown:
                key = str(unknown[0])
                allowed = sorted(self._read)
                raise ConfigError(self.file, self._key(key), "<unknown key>",
                                  ", ".join(allowed),
                                  f"unknown key; {_closest(key, allowed)}"
                                  f"allowed here: {', '.join(allowed)}")
        for child in self._children:
            child.finish()

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(self.file, self._key(key), value, allowed)

    def has(self, key: str) -> bool:
        return isinstance(self.data, dict) and key in self.data

    def raw(self, key: str, default: Any = ...) -> Any:
        self._read.add(key)
        if not isinstance(self.data, dict):
            raise ConfigError(self.file, self.path or "<top>", self.data, "a mapping")
        if key not in self.data:
            if default is ...:
                raise self.error(key, "<missing>", "a value (required key)")
            return default
        return self.data[key]

    def sub(self, key: str, default: Any = ...) -> _Reader:
        value = self.raw(key, default)
        if not isinstance(value, dict):
            raise self.error(key, value, "a mapping")
        child = _Reader(self.file, value, self._key(key))
        self._children.append(child)
        return child

    def number(
        self, key: str, lo: float = -math.inf, hi: float = math.inf, default: Any = ...,
        lo_open: bool = False,
    ) -> float:
        value = self.raw(key, default)
        return self._check_number(key, value, lo, hi, lo_open)

    def _check_number(self, key: str, value: Any, lo: float, hi: float, lo_open: bool) -> float:
        bracket = "(" if lo_open else "["
        allowed = f"a finite number in {bracket}{lo}, {hi}]"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, value, allowed)
        v = float(value)
        if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
            raise self.error(key, value, allowed)
        return v

    def integer(self, key: str, lo: int, hi: int, default: Any = ...) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.error(key, value, f"an integer in [{lo}, {hi}]")
        return int(value)

    def boolean(self, key: str, default: Any = ...) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, value, "true or false")
        return value

    def string(self, key: str, default: Any = ..., choices: tuple[str, ...] | None = None) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str) or not value:
            raise self.error(key, value, "a non-empty string")
        if choices is not None and value not in choices:
            raise self.error(key, value, "one of " + ", ".join(choices))
        return value

    def numbers(
        self, key: str, lo: float = -math.inf, hi: float = math.inf, length: int | None = None,
        min_length: int = 1, increasing: bool = False, default: Any = ..., lo_open: bool = False,
    ) -> tuple[float, ...]:
        value = self.raw(key, default)
        if not isinstance(value, list) or len(value) < min_length:
            raise self.error(key, value, f"a list of at least {min_length} numbers")
        if length is not None and len(value) != length:
            raise self.error(key, value, f"a list of exactly {length} numbers")
        out = tuple(
            self._check_number(f"{key}[{i}]", v, lo, hi, lo_open) for i, v in enumerate(value)
        )
        if increasing and any(b <= a for a, b in zip(out, out[1:], strict=False)):
            raise self.error(key, value, "strictly increasing numbers")
        return out

    def table(
        self, key: str, rows: int, cols: int, lo: float = -math.inf, hi: float = math.inf,
        lo_open: bool = False,
    ) -> np.ndarray:
        value = self.raw(key)
        if not isinstance(value, list) or len(value) != rows:
            raise self.error(key, value, f"a list of {rows} rows")
        out = np.empty((rows, cols))
        for i, row in enumerate(value):
            sub = _Reader(self.file, {f"{key}[{i}]": row}, self.path)
            out[i] = sub.numbers(f"{key}[{i}]", lo, hi, length=cols, lo_open=lo_open)
        return out


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML says keys are unique;
    PyYAML would keep the last one silently)."""


def _unique_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _load_yaml(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, "<file>", str(path), f"a readable file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "<file>", f"byte {exc.start}", "a UTF-8 text file",
                          f"not UTF-8 text (byte {exc.start}: {raw[exc.start]:#04x}); "
                          "save the file as UTF-8") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise ConfigError(path, "<yaml>", where, f"valid YAML ({exc.__class__.__name__})",
                          f"{where}: {problem}; allowed: valid YAML") from None
    except RecursionError:
        raise ConfigError(path, "<yaml>", "nesting", "YAML nested a few levels deep",
                          "nested too deeply to be a pack file or board profile") from None


# --------------------------------------------------------------------------- pack file


@dataclass(frozen=True)
class CellModel:
    """Nominal per-cell model: the estimator's model and the emulator's starting point."""

    capacity_ah: float
    unit_layers: int
    electrode_area_cm2: float
    areal_capacity_mah_cm2: float
    thickness_um: float
    lithium_um_per_mah_cm2: float
    cathode_um_per_layer_full: float
    soc_grid: np.ndarray            # (n_soc,)
    temperature_grid_c: np.ndarray  # (n_temp,)
    ocv_v: np.ndarray               # (n_temp, n_soc)
    r0_ohm: np.ndarray              # (n_temp, n_soc), Arrhenius-expanded
    r1_ohm: np.ndarray              # (n_temp, n_soc), Arrhenius-expanded
    c1_f: np.ndarray                # (n_temp, n_soc); tau = r1 c1 scales with r1
    reference_temperature_c: float
    activation_energy_ev: float
    contact_resistance_ref_ohm: float
    contact_pressure_ref_kpa: float
    heat_capacity_j_per_k: float
    coulombic_efficiency: float

    @property
    def swelling_um_full(self) -> float:
        """Cell thickness change from 0 to 100 % SOC (lithium plating minus cathode shrink)."""
        lithium = self.lithium_um_per_mah_cm2 * self.areal_capacity_mah_cm2
        return self.unit_layers * (lithium + self.cathode_um_per_layer_full)

    def arrhenius_factor(self, temperature_c: float | np.ndarray) -> float | np.ndarray:
        """Resistance multiplier at temperature_c relative to reference_temperature_c."""
        t_k = np.asarray(temperature_c) + KELVIN_OFFSET
        t_ref = self.reference_temperature_c + KELVIN_OFFSET
        return np.exp(self.activation_energy_ev / BOLTZMANN_EV_PER_K * (1.0 / t_k - 1.0 / t_ref))


@dataclass(frozen=True)
class FixtureConfig:
    preload_kpa: float
    stiffness_kpa_per_um: float
    thermal_um_per_k: float
    reference_temperature_c: float
    load_cells_xy_mm: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class StackConfig:
    name: str
    cells: int
    board: str
    thermistor_cell_positions: tuple[float, ...]


@dataclass(frozen=True)
class EstimatorConfig:
    voltage_noise_v: float
    current_noise_a: float
    soc_process_noise_per_s: float
    rc_process_noise_v_per_s: float
    initial_soc_sigma: float
    innovation_gate_sigma: float
    pressure_fusion: bool
    pressure_noise_kpa: float
    leak_alarm_a: float
    soh_forgetting: float


@dataclass(frozen=True)
class PowerLimitConfig:
    horizons_s: tuple[float, ...]
    max_charge_current_a: float
    max_discharge_current_a: float


@dataclass(frozen=True)
class ProtectionLimit:
    """Three-level limit on one quantity (foxBMS 2 style: operating / recommended / safety)."""

    name: str
    direction: str  # "above" or "below"
    warning: float
    fault: float
    critical: float
    hysteresis: float
    debounce_s: float

    def level_thresholds(self) -> tuple[tuple[str, float], ...]:
        return (("warning", self.warning), ("fault", self.fault), ("critical", self.critical))


@dataclass(frozen=True)
class ContactorConfig:
    precharge_fraction: float
    precharge_timeout_s: float
    precharge_retries: int
    heartbeat_timeout_s: float


@dataclass(frozen=True)
class BalancingConfig:
    enabled: bool
    mode: str
    start_delta_soc: float
    stop_delta_soc: float
    min_cell_voltage_v: float
    max_temperature_c: float
    duty_cycle: float
    bleed_resistance_ohm: float


@dataclass(frozen=True)
class ControllerConfig:
    tick_s: float
    measurement_timeout_s: float


@dataclass(frozen=True)
class PackConfig:
    path: Path
    name: str
    description: str
    cell: CellModel
    fixture: FixtureConfig
    stacks: tuple[StackConfig, ...]
    estimator: EstimatorConfig
    power_limits: PowerLimitConfig
    protections: dict[str, ProtectionLimit] = field(default_factory=dict)
    contactors: ContactorConfig | None = None
    balancing: BalancingConfig | None = None
    controller: ControllerConfig | None = None

    @property
    def n_cells(self) -> int:
        return sum(s.cells for s in self.stacks)


#: The protections, in their stable order (fault codes 101.. follow it, bms.faults), each with
#: what it watches: one channel per cell, per thermistor, per stack, or one for the pack. The one
#: list: the pack file's sections, the fault codes and the engine's channel layout derive from it.
PROTECTIONS: tuple[tuple[str, str], ...] = (
    ("cell_overvoltage_v", "cell"),
    ("cell_undervoltage_v", "cell"),
    ("cell_overtemperature_charge_c", "thermistor"),
    ("cell_overtemperature_discharge_c", "thermistor"),
    ("cell_undertemperature_charge_c", "thermistor"),
    ("cell_undertemperature_discharge_c", "thermistor"),
    ("charge_overcurrent_a", "pack"),
    ("discharge_overcurrent_a", "pack"),
    ("stack_pressure_low_kpa", "stack"),
    ("stack_pressure_high_kpa", "stack"),
    ("stack_pressure_rate_kpa_per_s", "stack"),
    ("stack_pressure_residual_kpa", "stack"),
    ("load_cell_imbalance_kpa", "stack"),
    ("cell_leak_a", "cell"),
)
PROTECTION_NAMES = tuple(name for name, _ in PROTECTIONS)
PROTECTION_CHANNEL = dict(PROTECTIONS)


def _read_cell(r: _Reader) -> CellModel:
    soc = np.array(r.numbers("soc_grid", 0.0, 1.0, min_length=2, increasing=True))
    if soc[0] != 0.0 or soc[-1] != 1.0:
        raise r.error("soc_grid", list(soc), "a grid that starts at 0.0 and ends at 1.0")
    temps = np.array(r.numbers("temperature_grid_c", -60.0, 120.0, min_length=2, increasing=True))
    n_t, n_s = len(temps), len(soc)
    ocv = r.table("ocv_v", n_t, n_s, 0.5, 6.0)
    if np.any(np.diff(ocv, axis=1) <= 0):
        raise r.error("ocv_v", "non-increasing row", "OCV strictly increasing with SOC per row")
    ref_c = r.number("reference_temperature_c", -40.0, 80.0)
    ea = r.number("activation_energy_ev", 0.0, 2.0)
    r0 = np.array(r.numbers("r0_ohm", 0.0, 10.0, length=n_s, lo_open=True))
    r1 = np.array(r.numbers("r1_ohm", 0.0, 10.0, length=n_s, lo_open=True))
    c1 = np.array(r.numbers("c1_f", 0.0, 1e7, length=n_s, lo_open=True))
    factor = np.exp(
        ea / BOLTZMANN_EV_PER_K * (1.0 / (temps + KELVIN_OFFSET) - 1.0 / (ref_c + KELVIN_OFFSET))
    )[:, None]
    return CellModel(
        capacity_ah=r.number("capacity_ah", 0.0, 10000.0, lo_open=True),
        unit_layers=r.integer("unit_layers", 1, 1000),
        electrode_area_cm2=r.number("electrode_area_cm2", 0.0, 1e5, lo_open=True),
        areal_capacity_mah_cm2=r.number("areal_capacity_mah_cm2", 0.0, 50.0, lo_open=True),
        thickness_um=r.number("thickness_um", 0.0, 1e5, lo_open=True),
        lithium_um_per_mah_cm2=r.number("lithium_um_per_mah_cm2", 0.0, 20.0),
        cathode_um_per_layer_full=r.number("cathode_um_per_layer_full", -100.0, 100.0),
        soc_grid=soc,
        temperature_grid_c=temps,
        ocv_v=ocv,
        r0_ohm=r0[None, :] * factor,
        r1_ohm=r1[None, :] * factor,
        # The RC time constant follows the interface kinetics, so C1 is kept per SOC and the
        # time constant tau = R1 C1 grows with the same Arrhenius factor as R1.
        c1_f=np.broadcast_to(c1[None, :], (n_t, n_s)).copy(),
        reference_temperature_c=ref_c,
        activation_energy_ev=ea,
        contact_resistance_ref_ohm=r.number("contact_resistance_ref_ohm", 0.0, 10.0),
        contact_pressure_ref_kpa=r.number("contact_pressure_ref_kpa", 0.0, 1e6, lo_open=True),
        heat_capacity_j_per_k=r.number("heat_capacity_j_per_k", 0.0, 1e7, lo_open=True),
        coulombic_efficiency=r.number("coulombic_efficiency", 0.5, 1.0),
    )


def _read_fixture(r: _Reader) -> FixtureConfig:
    xy_raw = r.raw("load_cells_xy_mm")
    if not isinstance(xy_raw, list) or not 1 <= len(xy_raw) <= 16:
        raise r.error("load_cells_xy_mm", xy_raw, "a list of 1 to 16 [x, y] pairs")
    xy = []
    for i, pair in enumerate(xy_raw):
        sub = _Reader(r.file, {f"load_cells_xy_mm[{i}]": pair}, r.path)
        x, y = sub.numbers(f"load_cells_xy_mm[{i}]", -1e4, 1e4, length=2)
        xy.append((x, y))
    return FixtureConfig(
        preload_kpa=r.number("preload_kpa", 0.0, 1e6, lo_open=True),
        stiffness_kpa_per_um=r.number("stiffness_kpa_per_um", 0.0, 1e3, lo_open=True),
        thermal_um_per_k=r.number("thermal_um_per_k", -1e3, 1e3),
        reference_temperature_c=r.number("reference_temperature_c", -40.0, 80.0),
        load_cells_xy_mm=tuple(xy),
    )


def _read_stacks(r: _Reader) -> tuple[StackConfig, ...]:
    raw = r.raw("stacks")
    if not isinstance(raw, list) or not 1 <= len(raw) <= 64:
        raise r.error("stacks", raw, "a list of 1 to 64 stacks")
    stacks = []
    for i in range(len(raw)):
        s = r.item("stacks", i)
        cells = s.integer("cells", 1, 32)
        stacks.append(
            StackConfig(
                name=s.string("name", default=f"stack-{i + 1}"),
                cells=cells,
                board=s.string("board"),
                thermistor_cell_positions=s.numbers(
                    "thermistor_cell_positions", 0.0, cells - 1.0, increasing=True
                ),
            )
        )
    names = [s.name for s in stacks]
    if len(set(names)) != len(names):
        raise r.error("stacks", names, "unique stack names")
    return tuple(stacks)


def _read_protection(r: _Reader, name: str) -> ProtectionLimit:
    p = r.sub(name)
    direction = p.string("direction", choices=("above", "below"))
    warning, fault, critical = p.number("warning"), p.number("fault"), p.number("critical")
    ordered = (warning <= fault <= critical) if direction == "above" else (
        warning >= fault >= critical)
    if not ordered:
        rule = "warning <= fault <= critical" if direction == "above" else (
            "warning >= fault >= critical")
        raise p.error("fault", [warning, fault, critical], rule + f" for direction {direction}")
    return ProtectionLimit(
        name=name,
        direction=direction,
        warning=warning,
        fault=fault,
        critical=critical,
        hysteresis=p.number("hysteresis", 0.0, 1e6),
        debounce_s=p.number("debounce_s", 0.0, 3600.0),
    )


def _deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = _deep_merge(base.get(key), value)
        return out
    return override


def _load_pack_data(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """YAML of a pack file with its ``base:`` chain merged in (mappings merge, lists replace)."""
    data = _load_yaml(path)
    if isinstance(data, dict) and "base" in data:
        base_name = data["base"]
        if not isinstance(base_name, str):
            raise ConfigError(path, "base", base_name, "the name or path of another pack file")
        base_path = resolve_pack_path(base_name)
        if not base_path.is_absolute():
            base_path = (path.parent / base_path) if (path.parent / base_path).exists() \
                else base_path
        if base_path.resolve() in seen:
            raise ConfigError(path, "base", base_name, "a pack file that does not include itself")
        base = _load_pack_data(base_path, seen + (path.resolve(),))
        data = _deep_merge(base, {k: v for k, v in data.items() if k != "base"})
    return data


def load_pack(path_or_name: str | Path = "ssb-23") -> PackConfig:
    """Load and validate a pack file: a path, or the name of a built-in pack (``ssb-23``).

    A pack file may start from another with ``base: NAME``; its own keys override the base's
    (mappings merge key by key, lists and values replace).
    """
    path = resolve_pack_path(path_or_name)
    r = _Reader(path, _load_pack_data(path))
    schema = r.string("schema")
    if schema != PACK_SCHEMA:
        raise r.error("schema", schema, PACK_SCHEMA)
    cell = _read_cell(r.sub("cell"))
    fixture = _read_fixture(r.sub("fixture"))
    stacks = _read_stacks(r)
    e = r.sub("estimator")
    estimator = EstimatorConfig(
        voltage_noise_v=e.number("voltage_noise_v", 0.0, 1.0, lo_open=True),
        current_noise_a=e.number("current_noise_a", 0.0, 100.0),
        soc_process_noise_per_s=e.number("soc_process_noise_per_s", 0.0, 1.0),
        rc_process_noise_v_per_s=e.number("rc_process_noise_v_per_s", 0.0, 1.0),
        initial_soc_sigma=e.number("initial_soc_sigma", 0.0, 1.0, lo_open=True),
        innovation_gate_sigma=e.number("innovation_gate_sigma", 1.0, 100.0),
        pressure_fusion=e.boolean("pressure_fusion"),
        pressure_noise_kpa=e.number("pressure_noise_kpa", 0.0, 1e5, lo_open=True),
        leak_alarm_a=e.number("leak_alarm_a", 0.0, 1e3, lo_open=True),
        soh_forgetting=e.number("soh_forgetting", 0.9, 1.0),
    )
    pl = r.sub("power_limits")
    power = PowerLimitConfig(
        horizons_s=pl.numbers("horizons_s", 0.0, 3600.0, increasing=True, lo_open=True),
        max_charge_current_a=pl.number("max_charge_current_a", 0.0, 1e5),
        max_discharge_current_a=pl.number("max_discharge_current_a", 0.0, 1e5),
    )
    pr = r.sub("protections")
    protections = {name: _read_protection(pr, name) for name in PROTECTION_NAMES}
    c = r.sub("contactors")
    contactors = ContactorConfig(
        precharge_fraction=c.number("precharge_fraction", 0.5, 1.0),
        precharge_timeout_s=c.number("precharge_timeout_s", 0.0, 60.0, lo_open=True),
        precharge_retries=c.integer("precharge_retries", 0, 10),
        heartbeat_timeout_s=c.number("heartbeat_timeout_s", 0.05, 60.0),
    )
    b = r.sub("balancing")
    balancing = BalancingConfig(
        enabled=b.boolean("enabled"),
        mode=b.string("mode", choices=("soc", "voltage")),
        start_delta_soc=b.number("start_delta_soc", 0.0, 1.0, lo_open=True),
        stop_delta_soc=b.number("stop_delta_soc", 0.0, 1.0),
        min_cell_voltage_v=b.number("min_cell_voltage_v", 0.0, 6.0),
        max_temperature_c=b.number("max_temperature_c", -40.0, 120.0),
        duty_cycle=b.number("duty_cycle", 0.0, 1.0, lo_open=True),
        bleed_resistance_ohm=b.number("bleed_resistance_ohm", 0.0, 1e6, lo_open=True),
    )
    if balancing.stop_delta_soc >= balancing.start_delta_soc:
        raise b.error("stop_delta_soc", balancing.stop_delta_soc, "less than start_delta_soc")
    ct = r.sub("controller")
    controller = ControllerConfig(
        tick_s=ct.number("tick_s", 0.001, 10.0),
        measurement_timeout_s=ct.number("measurement_timeout_s", 0.001, 60.0),
    )
    pack = PackConfig(
        path=path,
        name=r.string("name"),
        description=r.string("description", default=""),
        cell=cell,
        fixture=fixture,
        stacks=stacks,
        estimator=estimator,
        power_limits=power,
        protections=protections,
        contactors=contactors,
        balancing=balancing,
        controller=controller,
    )
    r.finish()
    return pack


def resolve_pack_path(path_or_name: str | Path) -> Path:
    """A built-in pack name (``ssb-23``, ``ssb-4x23``) or a path to a pack file."""
    candidate = Path(path_or_name)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    builtin = PACK_DIR / f"{path_or_name}.yaml"
    if builtin.exists():
        return builtin
    names = ", ".join(sorted(p.stem for p in PACK_DIR.glob("*.yaml")))
    raise ConfigError(path_or_name, "<pack>", str(path_or_name), f"a file path or one of {names}")


# --------------------------------------------------------------------------- board profiles


@dataclass(frozen=True)
class ThermistorScaling:
    lsb_v: float
    vref_v: float
    pullup_ohm: float
    r25_ohm: float
    beta_k: float

    def counts_to_c(self, counts: np.ndarray) -> np.ndarray:
        """NTC divider voltage (counts) -> temperature in C by the Beta equation.

        An open NTC reads at vref and a shorted one at 0 V; both map to non-finite or extreme
        values that the controller's plausibility check rejects.
        """
        v = np.asarray(counts, dtype=float) * self.lsb_v
        with np.errstate(divide="ignore", invalid="ignore"):
            r_ntc = self.pullup_ohm * v / (self.vref_v - v)
            inv_t = 1.0 / T25_K + np.log(r_ntc / self.r25_ohm) / self.beta_k
            t_c = 1.0 / inv_t - KELVIN_OFFSET
        return np.where((v > 0) & (v < self.vref_v) & (inv_t > 0), t_c, np.nan)

    def c_to_counts(self, temperature_c: np.ndarray) -> np.ndarray:
        """Inverse of counts_to_c (used by the emulator to synthesise readings)."""
        t_k = np.asarray(temperature_c, dtype=float) + KELVIN_OFFSET
        r_ntc = self.r25_ohm * np.exp(self.beta_k * (1.0 / t_k - 1.0 / T25_K))
        v = self.vref_v * r_ntc / (r_ntc + self.pullup_ohm)
        return v / self.lsb_v


@dataclass(frozen=True)
class BoardProfile:
    path: Path
    name: str
    kind: str
    cells: int
    thermistors: int
    load_cells: int
    sample_period_s: float
    cell_lsb_v: float
    cell_offset_v: float
    thermistor: ThermistorScaling
    load_cell_kpa_per_count: tuple[float, ...]
    load_cell_offset_counts: tuple[float, ...]
    current_lsb_a: float
    current_offset_a: float
    bus_lsb_v: float


def load_board(path_or_name: str | Path) -> BoardProfile:
    """Load and validate a board profile: a path or a built-in name from boards/ (``emu-23``)."""
    from boards import PROFILE_DIR, profile_path

    candidate = Path(path_or_name)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        path = candidate
    else:
        path = profile_path(str(path_or_name))
        if not path.exists():
            names = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
            raise ConfigError(path_or_name, "<board>", str(path_or_name), f"one of {names}")
    r = _Reader(path, _load_yaml(path))
    schema = r.string("schema")
    if schema != BOARD_SCHEMA:
        raise r.error("schema", schema, BOARD_SCHEMA)
    n_load = r.integer("load_cells", 0, 16)
    cv, th, lc = r.sub("cell_voltage"), r.sub("thermistor"), r.sub("load_cell")
    cur, bus = r.sub("current"), r.sub("bus_voltage")
    profile = BoardProfile(
        path=path,
        name=r.string("name"),
        kind=r.string("kind", choices=("emulated", "firmware", "real")),
        cells=r.integer("cells", 1, 32),
        thermistors=r.integer("thermistors", 0, 16),
        load_cells=n_load,
        sample_period_s=r.number("sample_period_s", 0.001, 10.0),
        cell_lsb_v=cv.number("lsb_v", 0.0, 1.0, lo_open=True),
        cell_offset_v=cv.number("offset_v", -1.0, 1.0),
        thermistor=ThermistorScaling(
            lsb_v=th.number("lsb_v", 0.0, 1.0, lo_open=True),
            vref_v=th.number("vref_v", 0.0, 10.0, lo_open=True),
            pullup_ohm=th.number("pullup_ohm", 0.0, 1e7, lo_open=True),
            r25_ohm=th.number("r25_ohm", 0.0, 1e7, lo_open=True),
            beta_k=th.number("beta_k", 100.0, 10000.0),
        ),
        load_cell_kpa_per_count=lc.numbers("kpa_per_count", -1e3, 1e3, length=n_load,
                                           min_length=0),
        load_cell_offset_counts=lc.numbers("offset_counts", -2**31, 2**31, length=n_load,
                                           min_length=0),
        current_lsb_a=cur.number("lsb_a", 0.0, 100.0, lo_open=True),
        current_offset_a=cur.number("offset_a", -1e4, 1e4),
        bus_lsb_v=bus.number("lsb_v", 0.0, 100.0, lo_open=True),
    )
    r.finish()
    return profile
