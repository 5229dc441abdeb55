"""Pack files and board profiles: YAML, safe-loaded, validated into frozen dataclasses.

An invalid file raises :class:`ConfigError`, whose message names the file, the key path, the bad
value and what is allowed, so the CLI can print one line instead of a traceback.
"""

from __future__ import annotations

import copy
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


#: Parsed YAML by file content (a copy handed out each time): the same bytes parse the same,
#: and PyYAML's pure-Python loader costs ~19 ms per load_pack of ssb-23, which a campaign run
#: paid twice (its controller's pack, its emulated boards'), and now its fork server once for
#: every run (bms/app/campaign/forkserver.py).
_PARSED: dict[bytes, Any] = {}
_PARSED_MAX = 256


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
    hit = _PARSED.get(raw)
    if hit is not None:
        return copy.deepcopy(hit)
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
        if len(_PARSED) < _PARSED_MAX:
            _PARSED[raw] = copy.deepcopy(data)
        return data
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
class ParamTable:
    """One model quantity (a resistance, a time constant, a hysteresis voltage) over SOC and
    temperature, on its own breakpoints: piecewise linear in each, held constant beyond the end
    breakpoints. ``values`` has one row per temperature breakpoint and one column per SOC
    breakpoint; a single breakpoint means no dependence on that variable. With
    ``activation_energy_ev`` set the table has one row, valid at ``reference_temperature_c``,
    and scales with exp(Ea / kB (1/T - 1/T_ref)) (Arrhenius)."""

    soc: np.ndarray            # (n_s,) strictly increasing in [0, 1]
    temperature_c: np.ndarray  # (n_t,) strictly increasing
    values: np.ndarray         # (n_t, n_s)
    activation_energy_ev: float | None = None
    reference_temperature_c: float | None = None

    def at(self, soc: np.ndarray, temperature_c: np.ndarray) -> np.ndarray:
        """Values on the grid soc x temperature_c: shape (len(temperature_c), len(soc))."""
        soc = np.atleast_1d(np.asarray(soc, dtype=float))
        temps = np.atleast_1d(np.asarray(temperature_c, dtype=float))
        rows = np.array([np.interp(soc, self.soc, row) for row in self.values])
        if self.activation_energy_ev is not None:
            return rows[0][None, :] * arrhenius(self.activation_energy_ev,
                                                self.reference_temperature_c, temps)[:, None]
        if len(self.temperature_c) == 1:
            return np.broadcast_to(rows[0], (len(temps), len(soc))).copy()
        out = np.empty((len(temps), len(soc)))
        for k in range(len(soc)):
            out[:, k] = np.interp(temps, self.temperature_c, rows[:, k])
        return out


def arrhenius(activation_energy_ev: float, reference_temperature_c: float,
              temperature_c: float | np.ndarray) -> np.ndarray:
    """Resistance multiplier exp(Ea / kB (1/T - 1/T_ref)) at temperature_c."""
    t_k = np.asarray(temperature_c, dtype=float) + KELVIN_OFFSET
    return np.exp(activation_energy_ev / BOLTZMANN_EV_PER_K
                  * (1.0 / t_k - 1.0 / (reference_temperature_c + KELVIN_OFFSET)))


@dataclass(frozen=True)
class RcBranch:
    """One RC branch of the equivalent circuit: R and its time constant tau = R C."""

    r_ohm: ParamTable
    tau_s: ParamTable | None         # given as a time constant ...
    c_f: ParamTable | None = None    # ... or as a capacitance (then tau = R C, following R)

    def tau_at(self, soc: np.ndarray, temperature_c: np.ndarray) -> np.ndarray:
        if self.tau_s is not None:
            return self.tau_s.at(soc, temperature_c)
        assert self.c_f is not None
        return self.r_ohm.at(soc, temperature_c) * self.c_f.at(soc, temperature_c)


@dataclass(frozen=True)
class CellEcm:
    """The estimator's equivalent-circuit model: OCV (the cell's own tables) + R0 + one or two
    RC branches, R0 optionally different on charge, optional one-state OCV hysteresis
    (Plett, J. Power Sources 134 (2004) 262: h' = -gamma |eta I| / Q (h - sgn I),
    OCV_eff = OCV + M h)."""

    rc_branches: int
    r0_ohm: ParamTable               # discharge (and charge, unless r0_charge_ohm)
    r0_charge_ohm: ParamTable
    rc: tuple[RcBranch, ...]
    hysteresis_max_v: ParamTable | None = None
    hysteresis_rate: float = 0.0
    # Optional charge-transfer overpotential (symmetric Butler-Volmer):
    # eta = (2 R T / F) asinh(I / (2 I0)); R0 is then the ohmic part alone.
    exchange_current_a: ParamTable | None = None


#: The second RC branch the first cell format (``r0_ohm``/``r1_ohm``/``c1_f`` lists on the OCV
#: grid, one activation energy) implied: R2 = 0.5 R1, tau2 = 15 tau1 (assumption of that format:
#: a slow diffusion branch about half of R1, tau2 ~450 s for tau1 ~30 s). Packs in that format
#: load as a 2-branch model built with these.
V1_FORMAT_R2_OVER_R1 = 0.5
V1_FORMAT_TAU2_OVER_TAU1 = 15.0
#: Cell keys of the solid-state description (swelling): all or none. Without them the cell does
#: not swell in the model, the pressure is not fused as a SOC measurement, and ``bms check``
#: says the pressure features are off.
SOLID_STATE_KEYS = ("unit_layers", "electrode_area_cm2", "areal_capacity_mah_cm2",
                    "thickness_um", "lithium_um_per_mah_cm2", "cathode_um_per_layer_full")


@dataclass(frozen=True)
class CellModel:
    """Nominal per-cell model: the estimator's model and the emulator's starting point.

    ``r0_ohm``, ``r1_ohm``, ``c1_f`` (on the OCV grid, R0 on discharge and the first branch)
    and ``reference_temperature_c`` / ``activation_energy_ev`` are derived from ``ecm`` for the
    emulator's plant and the plausibility checks; the estimator runs ``ecm`` itself."""

    capacity_ah: float
    unit_layers: int | None
    electrode_area_cm2: float | None
    areal_capacity_mah_cm2: float | None
    thickness_um: float | None
    lithium_um_per_mah_cm2: float | None
    cathode_um_per_layer_full: float | None
    soc_grid: np.ndarray            # (n_soc,)
    temperature_grid_c: np.ndarray  # (n_temp,)
    ocv_v: np.ndarray               # (n_temp, n_soc)
    r0_ohm: np.ndarray              # (n_temp, n_soc)
    r1_ohm: np.ndarray              # (n_temp, n_soc)
    c1_f: np.ndarray                # (n_temp, n_soc)
    reference_temperature_c: float
    activation_energy_ev: float
    contact_resistance_ref_ohm: float
    contact_pressure_ref_kpa: float
    heat_capacity_j_per_k: float
    coulombic_efficiency: float
    ecm: CellEcm | None = None

    @property
    def solid_state(self) -> bool:
        """True when the swelling description (SOLID_STATE_KEYS) is given."""
        return self.unit_layers is not None

    @property
    def plating_area_cm2(self) -> float | None:
        """Lithium plating area: electrode area x unit layers in parallel."""
        if self.unit_layers is None or self.electrode_area_cm2 is None:
            return None
        return self.electrode_area_cm2 * self.unit_layers

    @property
    def swelling_um_full(self) -> float:
        """Cell thickness change from 0 to 100 % SOC (lithium plating minus cathode shrink);
        0 without the solid-state description."""
        if not self.solid_state:
            return 0.0
        lithium = self.lithium_um_per_mah_cm2 * self.areal_capacity_mah_cm2
        return self.unit_layers * (lithium + self.cathode_um_per_layer_full)

    def arrhenius_factor(self, temperature_c: float | np.ndarray) -> float | np.ndarray:
        """Resistance multiplier at temperature_c relative to reference_temperature_c."""
        return arrhenius(self.activation_energy_ev, self.reference_temperature_c,
                         temperature_c)


@dataclass(frozen=True)
class FixtureConfig:
    preload_kpa: float
    stiffness_kpa_per_um: float
    thermal_um_per_k: float
    reference_temperature_c: float
    load_cells_xy_mm: tuple[tuple[float, float], ...]
    #: The stiffness rises by this fraction over the stack's full swelling stroke (springs and
    #: pouch stiffen as they compress): k (1 + s dx / dx_full). 0: a linear fixture.
    stiffening: float = 0.0


@dataclass(frozen=True)
class StackConfig:
    name: str
    cells: int
    board: str
    thermistor_cell_positions: tuple[float, ...]


#: estimator.voltage_noise_r0_rel when a pack does not give it (docs/estimation.md, "Noise").
DEFAULT_VOLTAGE_NOISE_R0_REL = 0.1


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
    # relative uncertainty k of the model's resistance: R_v = (voltage_noise_v^2 +
    # (k R0 I)^2) x max(1, voltage_corr_s / dt) (docs/estimation.md, "Noise")
    voltage_noise_r0_rel: float = 0.0
    # voltage_noise_v given as a table (over temperature and/or SOC; bms fit writes the
    # model's own error per test temperature): the EKF's R at each cell's SOC and temperature;
    # voltage_noise_v is then the table's largest value (the leak filter's, conservative)
    voltage_noise_table: ParamTable | None = None
    # the voltage noise soc_process_noise_per_s goes with: when given, each cell's SOC random
    # walk is soc_process_noise_per_s x (its voltage noise at its SOC and temperature / this)^2
    # (docs/estimation.md, "Noise"; bms fit writes it with a voltage-noise table); None: constant
    soc_process_noise_ref_v: float | None = None


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
class ChargingConfig:
    """Dendrite-safe charging: the critical current density (CCD) of the lithium-metal anode
    over stack pressure and temperature. The charge current of a stack is kept below
    ``margin`` x CCD x plating area (cell electrode_area_cm2 x unit_layers)."""

    ccd_pressure_kpa: tuple[float, ...]
    ccd_temperature_c: tuple[float, ...]
    ccd_ma_cm2: np.ndarray  # (n_temperature, n_pressure)
    margin: float


@dataclass(frozen=True)
class CoolingConfig:
    """Each stack's cooling at its nominal coolant flow: the BMS's thermal model of a stack
    (bms/thermal_check.py), cells and the coolant in the stack's cold plate."""

    cell_to_coolant_w_per_k: float        # per cell
    coolant_heat_capacity_j_per_k: float  # per stack
    coolant_flow_w_per_k: float           # per stack: mass flow x cp, to the inlet
    end_plates_heat_capacity_j_per_k: float  # per stack, both plates
    cells_to_end_plates_w_per_k: float       # per stack
    end_plates_to_ambient_w_per_k: float     # per stack


@dataclass(frozen=True)
class ControllerConfig:
    tick_s: float
    measurement_timeout_s: float
    #: What a lost board (port gone, or no fresh data for board_lost_after_s) does to a run:
    #: "stop" ends it (contactors open, a non-zero exit), "reconnect" keeps it in SAFE and
    #: reopens the port until the board is back.
    on_board_lost: str = "stop"
    board_lost_after_s: float = 2.0


@dataclass(frozen=True)
class VehicleConfig:
    """The vehicle side over CAN (bms/vehicle/, docs/can.md); used only with ``bms run --can``.
    ``on_*``: "open" raises the fault as FAULT (contactors open, latched until a reset),
    "warn" as WARNING (an event, the pack stays as it is)."""

    #: No valid VCU_Heartbeat for this long: VEHICLE_HEARTBEAT_LOST. Assumption: 5 cycles of
    #: the 100 ms heartbeat (3-5 cycles is the usual class of automotive timeouts).
    heartbeat_timeout_s: float = 0.5
    on_heartbeat_lost: str = "open"
    #: This many invalid vehicle frames (counter, checksum, length) within invalid_window_s:
    #: VEHICLE_FRAME_INVALID. Assumption: one bad frame is noise, three in a second is not.
    invalid_frames: int = 3
    invalid_window_s: float = 1.0
    on_invalid_frames: str = "open"


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
    charging: ChargingConfig | None = None
    vehicle: VehicleConfig = field(default_factory=VehicleConfig)
    cooling: CoolingConfig | None = None

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


def _read_table(r: _Reader, key: str, lo: float, hi: float, lo_open: bool = True,
                default: Any = ...) -> ParamTable | None:
    """A ParamTable: a number (constant), or {soc, temperature_c, values} with either
    breakpoint list optional, or {soc, values, reference_temperature_c, activation_energy_ev}."""
    raw = r.raw(key, default)
    if raw is None and default is None:
        return None
    one = np.array([0.5])
    if not isinstance(raw, dict):
        value = r.number(key, lo, hi, lo_open=lo_open)
        return ParamTable(one, np.array([25.0]), np.array([[value]]))
    t = r.sub(key)
    soc = np.array(t.numbers("soc", 0.0, 1.0, increasing=True)) if t.has("soc") else one
    arrhenius_form = t.has("activation_energy_ev") or t.has("reference_temperature_c")
    if arrhenius_form and t.has("temperature_c"):
        raise t.error("temperature_c", t.raw("temperature_c"),
                      "either temperature_c (a table per temperature) or "
                      "activation_energy_ev with reference_temperature_c, not both")
    if arrhenius_form:
        ea = t.number("activation_energy_ev", 0.0, 2.0)
        ref = t.number("reference_temperature_c", -40.0, 80.0)
        temps = np.array([ref])
    else:
        ea = ref = None
        temps = (np.array(t.numbers("temperature_c", -60.0, 120.0, increasing=True))
                 if t.has("temperature_c") else np.array([25.0]))
    if not t.has("soc") and not t.has("temperature_c"):
        if arrhenius_form:
            values = np.array([[t.number("values", lo, hi, lo_open=lo_open)]])
        else:
            raise t.error("soc", "<missing>", "soc and/or temperature_c breakpoints "
                          "(or a plain number for a constant)")
    elif len(temps) > 1 and t.has("soc"):
        values = t.table("values", len(temps), len(soc), lo, hi, lo_open=lo_open)
    else:
        n = len(soc) if t.has("soc") else len(temps)
        flat = np.array(t.numbers("values", lo, hi, length=n, lo_open=lo_open))
        values = flat[None, :] if t.has("soc") else flat[:, None]
    return ParamTable(soc, temps, values, ea, ref)


def _read_ecm(r: _Reader) -> CellEcm:
    m = r.sub("model")
    n_rc = m.integer("rc_branches", 1, 2)
    r0 = _read_table(m, "r0_ohm", 0.0, 10.0)
    r0_charge = _read_table(m, "r0_charge_ohm", 0.0, 10.0, default=None) or r0
    raw_rc = m.raw("rc")
    if not isinstance(raw_rc, list) or len(raw_rc) != n_rc:
        raise m.error("rc", raw_rc, f"a list of exactly rc_branches = {n_rc} branches, each "
                      "{r_ohm: TABLE, tau_s: TABLE} or {r_ohm: TABLE, c_f: TABLE}")
    branches = []
    for i in range(n_rc):
        b = m.item("rc", i)
        r_ohm = _read_table(b, "r_ohm", 0.0, 10.0)
        if b.has("tau_s") == b.has("c_f"):
            raise b.error("tau_s", "<both or neither>", "exactly one of tau_s and c_f")
        tau = _read_table(b, "tau_s", 0.0, 1e6, default=None)
        c_f = _read_table(b, "c_f", 0.0, 1e9, default=None)
        branches.append(RcBranch(r_ohm, tau, c_f))
    hyst_max = None
    rate = 0.0
    if m.has("hysteresis"):
        h = m.sub("hysteresis")
        hyst_max = _read_table(h, "max_v", 0.0, 1.0, lo_open=False)
        rate = h.number("rate", 0.0, 1e6, lo_open=True)
    i0 = None
    if m.has("charge_transfer"):
        i0 = _read_table(m.sub("charge_transfer"), "exchange_current_a", 0.0, 1e6)
    return CellEcm(n_rc, r0, r0_charge, tuple(branches), hyst_max, rate, i0)


def _v1_ecm(soc: np.ndarray, r0: np.ndarray, r1: np.ndarray, c1: np.ndarray,
            ref_c: float, ea: float) -> CellEcm:
    """The first cell format as a model: Arrhenius R0 and R1 on the OCV grid, C1 without
    temperature dependence (tau = R1 C1 follows R1), the implied second branch."""
    def arr(values: np.ndarray) -> ParamTable:
        return ParamTable(soc, np.array([ref_c]), values[None, :], ea, ref_c)

    def const_t(values: np.ndarray) -> ParamTable:
        return ParamTable(soc, np.array([25.0]), values[None, :])

    r0_t = arr(r0)
    return CellEcm(2, r0_t, r0_t, (
        RcBranch(arr(r1), None, const_t(c1)),
        RcBranch(arr(r1 * V1_FORMAT_R2_OVER_R1), None,
                 const_t(c1 * (V1_FORMAT_TAU2_OVER_TAU1 / V1_FORMAT_R2_OVER_R1))),
    ))


def _effective_arrhenius(ecm: CellEcm, temps: np.ndarray) -> tuple[float, float]:
    """(reference_temperature_c, activation_energy_ev) of R0 at mid SOC: exact for an Arrhenius
    table; a least-squares fit of ln R0 over 1/kT for a per-temperature table (the emulator's
    plant takes one activation energy)."""
    table = ecm.r0_ohm
    if table.activation_energy_ev is not None:
        return float(table.reference_temperature_c), float(table.activation_energy_ev)
    if len(table.temperature_c) < 2:
        return 25.0, 0.0
    tk = table.temperature_c + KELVIN_OFFSET
    r_mid = table.at(np.array([0.5]), table.temperature_c)[:, 0]
    slope = np.polyfit(1.0 / (BOLTZMANN_EV_PER_K * tk), np.log(r_mid), 1)[0]
    return 25.0, float(min(max(slope, 0.0), 2.0))


def _read_cell(r: _Reader) -> CellModel:
    soc = np.array(r.numbers("soc_grid", 0.0, 1.0, min_length=2, increasing=True))
    if soc[0] != 0.0 or soc[-1] != 1.0:
        raise r.error("soc_grid", list(soc), "a grid that starts at 0.0 and ends at 1.0")
    temps = np.array(r.numbers("temperature_grid_c", -60.0, 120.0, min_length=2, increasing=True))
    n_t, n_s = len(temps), len(soc)
    ocv = r.table("ocv_v", n_t, n_s, 0.5, 6.0)
    if np.any(np.diff(ocv, axis=1) <= 0):
        raise r.error("ocv_v", "non-increasing row", "OCV strictly increasing with SOC per row")
    v1_keys = ("r0_ohm", "r1_ohm", "c1_f", "reference_temperature_c", "activation_energy_ev")
    if r.has("model"):
        given = [k for k in v1_keys if r.has(k)]
        if given:
            raise r.error(given[0], r.raw(given[0]),
                          "nothing: the model is in cell.model (remove the first-format key "
                          f"{given[0]}, or remove cell.model)")
        circuit = [k for k in r.data if isinstance(k, str) and k not in SOLID_STATE_KEYS
                   and (k.endswith("_ohm") or k.endswith("_f") or k.startswith("tau"))
                   and not k.startswith("contact_")]
        if circuit:
            raise ConfigError(r.file, r._key(circuit[0]), "<unknown key>", "cell.model",
                              "unknown key; the equivalent circuit is in cell.model "
                              "(r0_ohm, r0_charge_ohm, rc: [{r_ohm, tau_s or c_f}], "
                              "hysteresis)")
        ecm = _read_ecm(r)
    else:
        ref_c = r.number("reference_temperature_c", -40.0, 80.0)
        ea = r.number("activation_energy_ev", 0.0, 2.0)
        r0 = np.array(r.numbers("r0_ohm", 0.0, 10.0, length=n_s, lo_open=True))
        r1 = np.array(r.numbers("r1_ohm", 0.0, 10.0, length=n_s, lo_open=True))
        c1 = np.array(r.numbers("c1_f", 0.0, 1e7, length=n_s, lo_open=True))
        ecm = _v1_ecm(soc, r0, r1, c1, ref_c, ea)
    ref_c, ea = _effective_arrhenius(ecm, temps)
    first = ecm.rc[0]
    r1_grid = first.r_ohm.at(soc, temps)
    present = [k for k in SOLID_STATE_KEYS if r.has(k)]
    if present and len(present) != len(SOLID_STATE_KEYS):
        missing = [k for k in SOLID_STATE_KEYS if not r.has(k)]
        raise r.error(missing[0], "<missing>", "all of " + ", ".join(SOLID_STATE_KEYS)
                      + " (the solid-state description) or none of them")
    solid = bool(present)
    return CellModel(
        capacity_ah=r.number("capacity_ah", 0.0, 10000.0, lo_open=True),
        unit_layers=r.integer("unit_layers", 1, 1000) if solid else None,
        electrode_area_cm2=r.number("electrode_area_cm2", 0.0, 1e5, lo_open=True)
        if solid else None,
        areal_capacity_mah_cm2=r.number("areal_capacity_mah_cm2", 0.0, 50.0, lo_open=True)
        if solid else None,
        thickness_um=r.number("thickness_um", 0.0, 1e5, lo_open=True) if solid else None,
        lithium_um_per_mah_cm2=r.number("lithium_um_per_mah_cm2", 0.0, 20.0) if solid else None,
        cathode_um_per_layer_full=r.number("cathode_um_per_layer_full", -100.0, 100.0)
        if solid else None,
        soc_grid=soc,
        temperature_grid_c=temps,
        ocv_v=ocv,
        r0_ohm=ecm.r0_ohm.at(soc, temps),
        r1_ohm=r1_grid,
        c1_f=first.tau_at(soc, temps) / r1_grid,
        reference_temperature_c=ref_c,
        activation_energy_ev=ea,
        contact_resistance_ref_ohm=r.number("contact_resistance_ref_ohm", 0.0, 10.0, default=0.0),
        contact_pressure_ref_kpa=r.number("contact_pressure_ref_kpa", 0.0, 1e6, lo_open=True,
                                          default=1000.0),
        heat_capacity_j_per_k=r.number("heat_capacity_j_per_k", 0.0, 1e7, lo_open=True),
        coulombic_efficiency=r.number("coulombic_efficiency", 0.5, 1.0),
        ecm=ecm,
    )


def _read_fixture(r: _Reader) -> FixtureConfig:
    xy_raw = r.raw("load_cells_xy_mm")
    if not isinstance(xy_raw, list) or not 0 <= len(xy_raw) <= 16:
        raise r.error("load_cells_xy_mm", xy_raw,
                      "a list of 0 to 16 [x, y] pairs ([]: no load cells, pressure features off)")
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
        stiffening=r.number("stiffening", 0.0, 1.0, default=0.0),
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


def _read_charging(r: _Reader) -> ChargingConfig | None:
    if not r.has("charging"):
        return None
    c = r.sub("charging")
    pressures = c.numbers("ccd_pressure_kpa", 0.0, 1e6, increasing=True)
    temps = c.numbers("ccd_temperature_c", -60.0, 120.0, increasing=True)
    return ChargingConfig(
        ccd_pressure_kpa=pressures,
        ccd_temperature_c=temps,
        ccd_ma_cm2=c.table("ccd_ma_cm2", len(temps), len(pressures), 0.0, 1e3),
        margin=c.number("margin", 0.0, 1.0, lo_open=True),
    )


def _read_cooling(r: _Reader) -> CoolingConfig | None:
    if not r.has("cooling"):
        return None
    c = r.sub("cooling")
    return CoolingConfig(
        cell_to_coolant_w_per_k=c.number("cell_to_coolant_w_per_k", 0.0, 1e4, lo_open=True),
        coolant_heat_capacity_j_per_k=c.number("coolant_heat_capacity_j_per_k", 0.0, 1e8,
                                               lo_open=True),
        coolant_flow_w_per_k=c.number("coolant_flow_w_per_k", 0.0, 1e6, lo_open=True),
        end_plates_heat_capacity_j_per_k=c.number("end_plates_heat_capacity_j_per_k", 0.0, 1e8,
                                                  lo_open=True),
        cells_to_end_plates_w_per_k=c.number("cells_to_end_plates_w_per_k", 0.0, 1e6),
        end_plates_to_ambient_w_per_k=c.number("end_plates_to_ambient_w_per_k", 0.0, 1e6),
    )


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


#: Sections a pack file replaces whole instead of merging into its base's: a cell model is
#: one fit (a fitted 1-branch model must not inherit the base's second branch or tables).
_REPLACED_WHOLE = {("cell", "model")}


def _deep_merge(base: Any, override: Any, path: tuple[str, ...] = ()) -> Any:
    if isinstance(base, dict) and isinstance(override, dict) and path not in _REPLACED_WHOLE:
        out = dict(base)
        for key, value in override.items():
            if value is None:
                # `key: null` removes the base's key (a fitted cell drops the base's
                # solid-state description; bms fit writes that)
                out.pop(key, None)
                continue
            out[key] = _deep_merge(base.get(key), value, path + (key,))
        if path == ("cell",) and "model" in override:
            # the first cell format's model keys of the base give way to the new model
            for key in ("r0_ohm", "r1_ohm", "c1_f", "reference_temperature_c",
                        "activation_energy_ev"):
                if key not in override:
                    out.pop(key, None)
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
    (mappings merge key by key, lists and values replace, ``null`` removes the base's key;
    ``cell.model`` replaces the base's whole model, and the base's first-format model keys with
    it).
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
    vn_table = _read_table(e, "voltage_noise_v", 0.0, 1.0)
    if vn_table is None or vn_table.activation_energy_ev is not None:
        raise e.error("voltage_noise_v", e.raw("voltage_noise_v"), "a number (V) or a table "
                      "{temperature_c: [...], values: [...]} (and/or soc), no Arrhenius form")
    vn_const = vn_table.values.size == 1
    estimator = EstimatorConfig(
        voltage_noise_v=float(np.max(vn_table.values)),
        current_noise_a=e.number("current_noise_a", 0.0, 100.0),
        soc_process_noise_per_s=e.number("soc_process_noise_per_s", 0.0, 1.0),
        rc_process_noise_v_per_s=e.number("rc_process_noise_v_per_s", 0.0, 1.0),
        initial_soc_sigma=e.number("initial_soc_sigma", 0.0, 1.0, lo_open=True),
        innovation_gate_sigma=e.number("innovation_gate_sigma", 1.0, 100.0),
        pressure_fusion=e.boolean("pressure_fusion"),
        pressure_noise_kpa=e.number("pressure_noise_kpa", 0.0, 1e5, lo_open=True),
        leak_alarm_a=e.number("leak_alarm_a", 0.0, 1e3, lo_open=True),
        soh_forgetting=e.number("soh_forgetting", 0.9, 1.0),
        voltage_noise_r0_rel=e.number("voltage_noise_r0_rel", 0.0, 10.0,
                                      default=DEFAULT_VOLTAGE_NOISE_R0_REL),
        voltage_noise_table=None if vn_const else vn_table,
        soc_process_noise_ref_v=(e.number("soc_process_noise_ref_v", 0.0, 1.0, lo_open=True)
                                 if e.raw("soc_process_noise_ref_v", None) is not None
                                 else None),
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
        on_board_lost=ct.string("on_board_lost", "stop", choices=("stop", "reconnect")),
        board_lost_after_s=ct.number("board_lost_after_s", 0.001, 3600.0, default=2.0),
    )
    if controller.board_lost_after_s < controller.measurement_timeout_s:
        raise ct.error("board_lost_after_s", controller.board_lost_after_s,
                       "at least measurement_timeout_s")
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
        charging=_read_charging(r),
        vehicle=_read_vehicle(r, controller),
        cooling=_read_cooling(r),
    )
    r.finish()
    return pack


def _read_vehicle(r: _Reader, controller: ControllerConfig) -> VehicleConfig:
    """The optional ``vehicle:`` section (defaults: VehicleConfig)."""
    d = VehicleConfig()
    v = r.sub("vehicle", default={})
    vehicle = VehicleConfig(
        heartbeat_timeout_s=v.number("heartbeat_timeout_s", 0.0, 60.0, lo_open=True,
                                     default=d.heartbeat_timeout_s),
        on_heartbeat_lost=v.string("on_heartbeat_lost", d.on_heartbeat_lost,
                                   choices=("open", "warn")),
        invalid_frames=v.integer("invalid_frames", 1, 1000, default=d.invalid_frames),
        invalid_window_s=v.number("invalid_window_s", 0.0, 60.0, lo_open=True,
                                  default=d.invalid_window_s),
        on_invalid_frames=v.string("on_invalid_frames", d.on_invalid_frames,
                                   choices=("open", "warn")),
    )
    # Frames are read once per tick: a timeout under two ticks would trip on one late tick.
    if vehicle.heartbeat_timeout_s < 2.0 * controller.tick_s:
        raise v.error("heartbeat_timeout_s", vehicle.heartbeat_timeout_s,
                      f"at least two ticks ({2.0 * controller.tick_s:g} s: controller.tick_s "
                      f"{controller.tick_s:g})")
    return vehicle


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
