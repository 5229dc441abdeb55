"""The C plant engine (csrc/ssb_plant.c, ``Plant(engine="c")``, the default) against the NumPy
reference (``Plant(engine="reference")``): the same seed and the same calls on both, long runs,
every load, output state and plant fault, compared step by step.

Tolerances, and why:
- State (SOC, RC and hysteresis, temperatures, voltages, pressures, currents): relative 1e-9
  (with an absolute floor per quantity for values that pass through zero). The C code keeps
  the reference's operation order and numpy's pairwise summation, so the only differences are
  where glibc's exp and the C loops' dot products (thermal matrix, swelling) round differently
  from numpy's SIMD exp and BLAS: last bits, ~1e-16 relative per step. The plant is
  contractive (RC decay, thermal losses), so they do not grow: after thousands of steps they
  stay near 1e-14 relative (measured), and 1e-9 leaves a wide margin while any wrong rule
  (a term dropped, a sign, an order of updates) is off by far more.
- Sensor counts: equal, except that a count may differ by +-1 where the value fell within a
  last-bit distance of a rounding boundary (x.5 before rint): with continuous noise that is
  about one chance in 1e12 per channel, so at most RARE_COUNT_DIFFS of all counts compared may
  differ, each by 1. A broken count rule (floor for rint, a wrong offset or scale) changes
  about half of the counts or moves them by more than 1.
- Time, load progress (done flags) and the flags derived from faults: exact.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from boards.config import load_board, load_pack
from hil.emulator.faults import LINK_CODES, InjectedFault
from hil.emulator.plant import (
    CcCvCharge,
    ConstantCurrent,
    CurrentProfile,
    Load,
    Plant,
    Rest,
    SensorCounts,
)
from hil.emulator.scenario import ScenarioRunner, load_scenario

PACK = load_pack("ssb-23")
BOARD = load_board("emu-23")
N = 23
RTOL = 1e-9
# absolute floors (quantities that cross zero): volts, amperes, kelvin/deg C, kPa, state
ATOL = {"v": 1e-12, "a": 1e-10, "c": 1e-9, "kpa": 1e-9, "x": 1e-12}
FIELDS = {  # PlantTruth field -> absolute floor
    "current_a": "a", "bus_voltage_v": "v", "stack_voltage_v": "v", "pressure_kpa": "kpa",
    "load_cell_pressure_kpa": "kpa", "soc": "x", "cell_voltage_v": "v", "ocv_v": "v",
    "temperature_c": "c", "plate_temperature_c": "c", "coolant_temperature_c": "c",
    "leak_current_a": "a", "cell_current_a": "a", "series_resistance_ohm": "x",
    "hysteresis_v": "v", "rc_voltage_v": "v",
}
RARE_COUNT_DIFFS = 1e-4
DTS = (0.05, 0.1, 0.25, 1.0)


class Pair:
    """A C plant and a NumPy plant driven by the same calls."""

    def __init__(self, seed: int = 1, soc: float = 0.5, temperature_c: float = 25.0,
                 pack=PACK, board=BOARD) -> None:
        self.c = Plant(pack, 0, board, seed=seed, initial_soc=soc, temperature_c=temperature_c,
                       engine="c")
        self.ref = Plant(pack, 0, board, seed=seed, initial_soc=soc,
                         temperature_c=temperature_c, engine="reference")
        assert self.c.engine == "c" and self.ref.engine == "reference"
        self.counts = 0
        self.count_diffs = 0
        self.steps = 0

    def do(self, method: str, *args, **kwargs) -> None:
        getattr(self.c, method)(*args, **kwargs)
        getattr(self.ref, method)(*args, **kwargs)

    def set_load(self, make) -> None:
        self.c.set_load(make())
        self.ref.set_load(make())

    def step(self, dt_s: float) -> None:
        self.c.step(dt_s)
        self.ref.step(dt_s)
        self.steps += 1

    def check(self) -> None:
        a, b = self.c.truth(), self.ref.truth()
        assert a.t_s == b.t_s
        assert a.ambient_temperature_c == b.ambient_temperature_c
        np.testing.assert_array_equal(a.capacity_ah, b.capacity_ah)
        for name, floor in FIELDS.items():
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=RTOL,
                                       atol=ATOL[floor], err_msg=f"{name} after {self.steps}")
        assert self.c.gas_kpa == pytest.approx(self.ref.gas_kpa, rel=RTOL, abs=1e-12)
        assert self.c.load.done == self.ref.load.done

    def sense(self) -> tuple[SensorCounts, SensorCounts]:
        a, b = self.c.sensor_counts(), self.ref.sensor_counts()
        assert a.sensor_error == b.sensor_error
        for name in ("cell_raw", "thermistor_raw", "load_cell_raw"):
            x, y = np.array(getattr(a, name)), np.array(getattr(b, name))
            assert x.shape == y.shape
            d = np.abs(x - y)
            assert d.max(initial=0) <= 1, (name, self.steps, x, y)
            self.count_diffs += int(np.count_nonzero(d))
            self.counts += len(x)
        for name in ("current_raw", "bus_voltage_raw"):
            d = abs(getattr(a, name) - getattr(b, name))
            assert d <= 1, (name, self.steps)
            self.count_diffs += d
            self.counts += 1
        return a, b

    def run(self, steps: int, dt_s: float | None = None, rng: np.random.Generator | None = None,
            check_every: int = 25) -> None:
        for i in range(steps):
            self.step(dt_s if dt_s is not None else float(rng.choice(DTS)))
            self.sense()
            if i % check_every == 0 or i == steps - 1:
                self.check()

    def finish(self) -> None:
        self.check()
        assert self.count_diffs <= RARE_COUNT_DIFFS * self.counts, (
            f"{self.count_diffs} of {self.counts} counts differ")


def rand_mask(rng: np.random.Generator, n: int = N) -> int:
    """A random balancing mask over n cells (about a third of them bleeding)."""
    return sum(1 << int(i) for i in np.flatnonzero(rng.random(n) < 0.35))


def closed(pair: Pair, mask: int = 0, charge_a: float = 10.0, discharge_a: float = 15.0) -> None:
    pair.do("set_outputs", contactor_pos=True, contactor_neg=True, balance_mask=mask,
            charge_limit_a=charge_a, discharge_limit_a=discharge_a)


# --------------------------------------------------------------------------- loads, outputs


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_outputs_and_constant_current_over_a_long_random_run(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pair = Pair(seed=seed, soc=float(rng.uniform(0.3, 0.9)),
                temperature_c=float(rng.uniform(5.0, 40.0)))
    pair.check()
    pair.sense()
    pair.run(300, rng=rng)                                     # open contactors, rest
    pair.do("set_outputs", contactor_neg=True, precharge=True)  # precharge the link
    pair.run(300, rng=rng)
    closed(pair)
    pair.set_load(lambda: ConstantCurrent(-5.0, until_min_cell_v=3.0))
    for _ in range(8):                                         # random bleed masks
        closed(pair, mask=rand_mask(rng))
        pair.run(250, rng=rng)
    pair.set_load(lambda: ConstantCurrent(4.0, until_max_cell_v=4.25))
    closed(pair, mask=rand_mask(rng), charge_a=3.0)  # the limit clips the load
    pair.run(500, rng=rng)
    pair.do("set_ambient", float(rng.uniform(-10.0, 45.0)))
    pair.do("open_all")
    pair.run(300, rng=rng)
    pair.finish()


def test_cccv_charge_ends_on_the_same_step() -> None:
    pair = Pair(seed=3, soc=0.93)
    closed(pair, charge_a=4.0)
    pair.set_load(lambda: CcCvCharge(5.0, cv_cell_v=4.2, cutoff_a=0.25))
    for _ in range(6000):
        pair.step(1.0)
        pair.sense()
        if pair.steps % 50 == 0:
            pair.check()
        assert pair.c.load.done == pair.ref.load.done
        if pair.c.load.done:
            break
    assert pair.c.load.done, "the charge should end (CV current below cutoff)"
    pair.finish()


def test_udds_drive_cycle_and_the_scenario_runner() -> None:
    sc = load_scenario("udds")
    pair = Pair(seed=5, soc=sc.initial_soc if sc.initial_soc is not None else 0.9)
    closed(pair, charge_a=15.0, discharge_a=15.0)
    runners = [ScenarioRunner(sc, pair.c), ScenarioRunner(sc, pair.ref)]
    assert isinstance(pair.c.load, Rest)
    saw_profile = False
    for _ in range(3600):
        for r in runners:
            r.advance()
        saw_profile |= isinstance(pair.c.load, CurrentProfile)
        pair.step(1.0)
        pair.sense()
        if pair.steps % 20 == 0:
            pair.check()
    assert saw_profile
    pair.finish()


def test_drive_profile_with_variable_steps() -> None:
    t = np.linspace(0.0, 600.0, 121)
    i = 12.0 * np.sin(t / 17.0) * np.cos(t / 71.0)
    rng = np.random.default_rng(11)
    pair = Pair(seed=11, soc=0.6, temperature_c=0.0)
    closed(pair, charge_a=8.0, discharge_a=12.0)
    pair.set_load(lambda: CurrentProfile(t, i, loop=True, respect_limits=False))
    pair.run(3000, rng=rng)
    pair.finish()


# --------------------------------------------------------------------------- faults

PLANT_FAULTS = {  # code -> (target, value)
    InjectedFault.CELL_SOFT_SHORT: (7, 5.0),
    InjectedFault.CELL_CONTACT_LOSS: (3, 0.6),
    InjectedFault.GAS_SWELLING: (0xFF, 3.0),
    InjectedFault.LOADCELL_STUCK: (1, 0.0),
    InjectedFault.LOADCELL_OFFSET: (2, 150.0),
    InjectedFault.LOADCELL_OPEN: (0, 0.0),
    InjectedFault.VTAP_OPEN: (10, 0.0),
    InjectedFault.VTAP_OFFSET: (4, 0.3),
    InjectedFault.CONTACTOR_WELD: (0, 0.0),
    InjectedFault.THERMISTOR_OPEN: (2, 0.0),
    InjectedFault.THERMISTOR_SHORT: (4, 0.0),
    InjectedFault.CURRENT_OFFSET: (0xFF, 0.7),
    InjectedFault.COOLANT_LOSS: (0xFF, 0.0),
    InjectedFault.PRECHARGE_FAIL: (0xFF, 0.0),
    InjectedFault.LOAD_CURRENT: (0xFF, -25.0),
    InjectedFault.AMBIENT_TEMP: (0xFF, 48.0),
    InjectedFault.CELL_HEAT: (12, 2.5),
}


def test_every_plant_fault_is_in_the_table() -> None:
    plant_codes = set(InjectedFault) - set(LINK_CODES) - {InjectedFault.CLEAR_ALL}
    assert plant_codes == set(PLANT_FAULTS)


@pytest.mark.parametrize("code", list(PLANT_FAULTS), ids=lambda c: c.name)
def test_each_plant_fault_injected_and_cleared(code: InjectedFault) -> None:
    target, value = PLANT_FAULTS[code]
    rng = np.random.default_rng(int(code))
    pair = Pair(seed=int(code), soc=0.7)
    if code == InjectedFault.PRECHARGE_FAIL:
        pair.do("set_outputs", contactor_neg=True, precharge=True)
    else:
        closed(pair, mask=0b101 << 5)
        pair.set_load(lambda: ConstantCurrent(-5.0))
    pair.run(100, rng=rng)
    pair.do("inject_fault", code, target, value)
    pair.run(500, rng=rng, check_every=10)
    if code == InjectedFault.CONTACTOR_WELD:  # the welded contactor stays closed
        pair.do("open_all")
        assert pair.c.outputs == pair.ref.outputs and pair.c.outputs.contactor_pos
        pair.run(100, rng=rng, check_every=10)
    pair.do("inject_fault", code, target, value, clear=True)
    pair.run(300, rng=rng, check_every=10)
    pair.finish()


def test_faults_tour_scenario_and_several_faults_at_once() -> None:
    sc = load_scenario("faults-tour")
    pair = Pair(seed=2, soc=0.7)
    closed(pair)
    runners = [ScenarioRunner(sc, pair.c), ScenarioRunner(sc, pair.ref)]
    for _ in range(2400):
        for r in runners:
            r.advance()
        pair.step(1.0)
        pair.sense()
        if pair.steps % 20 == 0:
            pair.check()
    # pile up: several cells, sensors and the coolant at once, then clear all
    for code, (target, value) in PLANT_FAULTS.items():
        if code not in (InjectedFault.PRECHARGE_FAIL, InjectedFault.LOAD_CURRENT):
            pair.do("inject_fault", code, target, value)
    pair.do("inject_fault", InjectedFault.CELL_SOFT_SHORT, 19, 40.0)
    pair.do("inject_fault", InjectedFault.CELL_CONTACT_LOSS, 20, 0.3)
    pair.run(600, rng=np.random.default_rng(2), check_every=10)
    pair.do("inject_fault", InjectedFault.CLEAR_ALL)
    pair.run(300, rng=np.random.default_rng(3), check_every=10)
    pair.finish()


# --------------------------------------------------------------------------- other sizes


def _resized(n: int, k: int, m: int):
    pos = tuple(float(x) for x in np.linspace(0.0, n - 1.0, k)) if k else ()
    stack = replace(PACK.stacks[0], cells=n, thermistor_cell_positions=pos)
    pack = replace(PACK, stacks=(stack,))
    board = replace(BOARD, cells=n, thermistors=k, load_cells=m,
                    load_cell_kpa_per_count=BOARD.load_cell_kpa_per_count[:m],
                    load_cell_offset_counts=BOARD.load_cell_offset_counts[:m])
    return pack, board


@pytest.mark.parametrize(("n", "k", "m"), [(1, 0, 0), (7, 1, 1), (9, 3, 2), (150, 6, 4)])
def test_other_stack_sizes(n: int, k: int, m: int) -> None:
    """n < 8, a non-multiple of 8 and n > 128 take every branch of the pairwise sums."""
    pack, board = _resized(n, k, m)
    rng = np.random.default_rng(n)
    pair = Pair(seed=n, soc=0.6, pack=pack, board=board)
    closed(pair, mask=rand_mask(rng, min(n, 60)))  # set_outputs: masks up to 63 bits
    pair.set_load(lambda: ConstantCurrent(-3.0))
    pair.do("inject_fault", InjectedFault.CELL_SOFT_SHORT, n - 1, 20.0)
    pair.run(800, rng=rng)
    pair.finish()


# --------------------------------------------------------------------------- C engine only


def test_snapshot_restore_is_exact_with_the_c_engine() -> None:
    plant = Plant(PACK, 0, BOARD, seed=4, initial_soc=0.6)
    plant.set_outputs(True, True, balance_mask=0b11, charge_limit_a=10, discharge_limit_a=15)
    plant.set_load(ConstantCurrent(-5.0, until_min_cell_v=3.3))
    for _ in range(100):
        plant.step(0.5)
        plant.sensor_counts()
    before = plant.truth()
    snap = plant.snapshot()
    first = []
    for _ in range(700):  # crosses a noise batch boundary
        plant.step(0.5)
        first.append((plant.sensor_counts(), plant.truth()))
    plant.restore(snap)
    again = plant.truth()
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(again, name), getattr(before, name))
    for counts, truth in first:
        plant.step(0.5)
        assert plant.sensor_counts() == counts
        np.testing.assert_array_equal(plant.truth().soc, truth.soc)
        np.testing.assert_array_equal(plant.truth().temperature_c, truth.temperature_c)


class _NanLoad(Load):
    respect_limits = False

    def demand_a(self, t_s: float, v_open: np.ndarray, r_eff: np.ndarray) -> float:
        return math.nan


def test_c_engine_rejects_a_nan_current_without_touching_the_state() -> None:
    plant = Plant(PACK, 0, BOARD, seed=1)
    plant.set_outputs(True, True, charge_limit_a=10, discharge_limit_a=15)
    plant.step(1.0)
    soc, temp = plant.truth().soc, plant.truth().temperature_c
    plant.set_load(_NanLoad())
    with pytest.raises(ValueError, match="not finite"):
        plant.step(1.0)
    np.testing.assert_array_equal(plant.truth().soc, soc)
    np.testing.assert_array_equal(plant.truth().temperature_c, temp)
    assert plant.t_s == 1.0
    with pytest.raises(ValueError):
        Plant(PACK, 0, BOARD, engine="fortran")


def test_c_functions_return_error_codes() -> None:
    from hil.emulator import _plant

    ffi, lib = _plant.ffi, _plant.lib
    plant = Plant(PACK, 0, BOARD, seed=1)
    c = plant._c
    sums, p_out = ffi.new("double[2]"), ffi.new("double *")
    minv, c_dt, amb = c.thermal_pointers(plant, 1.0)
    assert lib.ssb_plant_begin(c.cfg, c.st, 500.0, sums) == 0
    assert lib.ssb_plant_begin(ffi.NULL, c.st, 500.0, sums) == lib.SSB_PLANT_ERR_NULL
    assert lib.ssb_plant_begin(c.cfg, c.st, math.nan, sums) == lib.SSB_PLANT_ERR_PARAM
    bad = ffi.new("ssb_plant_config_t *", c.cfg[0])
    bad.n = 0
    assert lib.ssb_plant_begin(bad, c.st, 500.0, sums) == lib.SSB_PLANT_ERR_SIZE
    for dt in (0.0, -1.0, math.nan, math.inf):
        assert lib.ssb_plant_finish(c.cfg, c.st, 1.0, dt, minv, c_dt, amb, 0.0, p_out) \
            == lib.SSB_PLANT_ERR_PARAM
    assert lib.ssb_plant_finish(c.cfg, c.st, math.inf, 1.0, minv, c_dt, amb, 0.0, p_out) \
        == lib.SSB_PLANT_ERR_PARAM
    plant.soc[3] = math.nan  # a corrupted state is refused, not propagated
    assert lib.ssb_plant_begin(c.cfg, c.st, 500.0, sums) == lib.SSB_PLANT_ERR_STATE
    with pytest.raises(ValueError, match="not finite"):
        plant.step(1.0)


def test_ambient_and_coolant_changes_at_a_fixed_step() -> None:
    """With one dt the C engine keeps its thermal matrices: every change of ambient, ambient
    override or coolant must still reach the step."""
    pair = Pair(seed=9, soc=0.5)
    closed(pair)
    pair.set_load(lambda: ConstantCurrent(-8.0))
    pair.run(100, dt_s=0.1)
    pair.do("set_ambient", 40.0)
    pair.run(200, dt_s=0.1)
    pair.do("inject_fault", InjectedFault.AMBIENT_TEMP, 0xFF, -5.0)
    pair.run(200, dt_s=0.1)
    pair.do("inject_fault", InjectedFault.COOLANT_LOSS)
    pair.run(200, dt_s=0.1)
    pair.do("inject_fault", InjectedFault.AMBIENT_TEMP, clear=True)
    pair.do("inject_fault", InjectedFault.COOLANT_LOSS, clear=True)
    pair.run(200, dt_s=0.1)
    pair.finish()
