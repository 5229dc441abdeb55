"""The C plant engine's binding (csrc/ssb_plant.h, cffi module hil.emulator._plant).

The plant's dynamic arrays (soc, _x, _temp, cell_v, _ocv, _i_cell, _r_series, _lc_kpa) become
views of one state vector that the C code updates in place, so Plant.snapshot() copies that
vector (one copy) and restore() writes it back. What depends on outputs and faults is copied
into fixed buffers by :meth:`CEngine.sync` (from Plant._refresh_derived). The step runs
ssb_plant_begin (everything up to v_open/r_eff), the load in Python (Plant._stack_current),
then ssb_plant_finish; the same equations and order as the reference engine in plant.py.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from boards.config import KELVIN_OFFSET, T25_K
from hil.emulator.params import SOC_HI, SOC_LO, SOC_STEP
from hil.emulator.sensors import SensorCounts

if TYPE_CHECKING:
    from hil.emulator.plant import Plant

C_ERRORS = {-1: "a NULL pointer", -2: "a bad size",
            -3: "dt, stack current, pressure or gas pressure not finite",
            -4: "a SOC, temperature or RC state that is not finite"}
_STATE_FIELDS = ("soc", "x", "temp", "cell_v", "ocv", "i_cell", "r_series", "lc")
_FAULT_BUFFERS = ("r0_factor", "r_scale", "rc_factor", "local_frac", "g_static", "inv_short",
                  "cell_heat_w", "vtap_open_since_s")


def c_error(func: str, rc: int) -> ValueError:
    return ValueError(f"plant step: {func} refused {C_ERRORS.get(rc, 'input')} (error {rc})")


def _load_module() -> Any:
    try:
        from hil.emulator import _plant  # built by pip install (setup.py cffi_modules)
    except ImportError as exc:
        raise RuntimeError("hil.emulator._plant is not built: rebuild it "
                           "(pip install --no-build-isolation -e .) or use engine='reference'"
                           ) from exc
    return _plant


class CEngine:
    """The C engine's buffers and configuration structs for one Plant."""

    def __init__(self, plant: Plant) -> None:
        module = _load_module()
        self.ffi, self.lib = module.ffi, module.lib
        lib = self.lib
        self.begin, self.finish, self.sense = (lib.ssb_plant_begin, lib.ssb_plant_finish,
                                               lib.ssb_plant_sense)
        n, k, m = plant.n, plant.k, plant.m
        self.nch = n + k + m + 2
        views = self._move_state(plant)
        self.work = np.zeros((lib.SSB_PLANT_WORK_ROWS, n + 3))
        self.v_open = self.work[lib.SSB_PLANT_W_V_OPEN, :n]
        self.r_eff = self.work[lib.SSB_PLANT_W_R_EFF, :n]
        self.bufs = {name: np.zeros(n) for name in _FAULT_BUFFERS}
        self.bufs["lc_factor"] = np.zeros(m)
        for name in ("ch_a", "ch_s", "ch_c"):
            self.bufs[name] = np.zeros(self.nch)
        s = plant._sensors
        self.static = {
            "tab": plant._tab_step, "capacity_as": np.ascontiguousarray(plant._capacity_as),
            "self_discharge_a": np.ascontiguousarray(plant._self_discharge_a),
            "hyst_k_per_as": np.ascontiguousarray(plant._hyst_k),
            "swell_um": np.ascontiguousarray(plant._swell_um),
            "th_weights": np.ascontiguousarray(s.th_weights),
            "th_off_kelvin": np.ascontiguousarray(s.th_off_k_kelvin),
            "ch_lo": np.ascontiguousarray(s.ch_lo), "ch_hi": np.ascontiguousarray(s.ch_hi)}
        self.cfg = self._step_config(plant)
        self.st = self._state_struct(views)
        self.scfg = self._sense_config(plant)
        self.raw = np.zeros(self.nch, dtype=np.int64)
        self.raw_p = self.ptr(self.raw, "int64_t *")
        self.sense_buf = np.zeros(self.nch)
        self.sense_buf_p = self.ptr(self.sense_buf)
        self.sums, self.p_out = self.ffi.new("double[2]"), self.ffi.new("double *")
        self.thermal: dict[tuple[float, bool, float], tuple[Any, ...]] = {}
        self.th_dt, self.th = math.nan, None
        self.noise_src: np.ndarray | None = None
        self.noise_p: Any = None
        self.sync(plant)

    def ptr(self, a: np.ndarray, ctype: str = "double *") -> Any:
        return self.ffi.cast(ctype, self.ffi.from_buffer(a))

    def _move_state(self, plant: Plant) -> dict[str, np.ndarray]:
        """One state vector; the plant's dynamic arrays become views of it (values kept)."""
        n, m = plant.n, plant.m
        sizes = (n, 3 * n, n + 3, n, n, n, n, m)
        self.state = np.zeros(sum(sizes))
        views, at = {}, 0
        for name, size in zip(_STATE_FIELDS, sizes, strict=True):
            views[name] = self.state[at:at + size]
            at += size
        views["soc"][...] = plant.soc
        views["x"][...] = plant._x.ravel()
        views["temp"][...] = plant._temp
        views["cell_v"][...] = plant.cell_v
        views["ocv"][...] = plant._ocv
        views["i_cell"][...] = plant._i_cell
        views["r_series"][...] = plant._r_series
        views["lc"][...] = plant._lc_kpa
        plant.soc, plant._temp, plant.cell_v = views["soc"], views["temp"], views["cell_v"]
        plant._ocv, plant._x = views["ocv"], views["x"].reshape(3, n)
        plant._i_cell, plant._r_series = views["i_cell"], views["r_series"]
        plant._lc_kpa = views["lc"]
        return views

    def _step_config(self, plant: Plant) -> Any:
        """ssb_plant_config_t: the step's constants and pointers to the fault buffers."""
        p, fx, ptr = plant.params, plant.pack.fixture, self.ptr
        cfg = self.ffi.new("ssb_plant_config_t *")
        cfg.n, cfg.m, cfg.n_soc = plant.n, plant.m, plant._tab_step.shape[1]
        cfg.tab = ptr(self.static["tab"])
        cfg.soc_lo, cfg.soc_hi, cfg.inv_soc_step = SOC_LO, SOC_HI - 1e-6, 1.0 / SOC_STEP
        cfg.kelvin_offset, cfg.inv_t_ref_per_k = KELVIN_OFFSET, plant._inv_t_ref
        cfg.ea_over_kb_k, cfg.t_ref_c = plant._ea_over_kb, plant._t_ref_c
        cfg.r2_over_r1, cfg.hysteresis_v, cfg.tau2_s = p.r2_over_r1, p.hysteresis_v, p.tau2_s
        cfg.one_minus_eta = plant._one_minus_eta
        cfg.min_local_pressure_kpa = p.min_local_pressure_kpa
        for name in ("capacity_as", "self_discharge_a", "hyst_k_per_as", "swell_um"):
            setattr(cfg, name, ptr(self.static[name]))
        for name in ("r0_factor", "r_scale", "rc_factor", "local_frac", "g_static",
                     "inv_short", "cell_heat_w", "lc_factor"):
            setattr(cfg, name, ptr(self.bufs[name]))
        cfg.thermal_um_per_k, cfg.fixture_ref_c = fx.thermal_um_per_k, fx.reference_temperature_c
        cfg.swell_full_total_um = plant._swell_full_total
        cfg.fixture_stiffening, cfg.preload_kpa = p.fixture_stiffening, fx.preload_kpa
        cfg.k_fix_kpa_per_um = plant._k_fix
        return cfg

    def _state_struct(self, views: dict[str, np.ndarray]) -> Any:
        """ssb_plant_state_t: pointers into the state vector and the work rows."""
        ptr = self.ptr
        st = self.ffi.new("ssb_plant_state_t *")
        st.soc, st.x, st.temp_c = ptr(views["soc"]), ptr(views["x"]), ptr(views["temp"])
        st.cell_v, st.ocv_v = ptr(views["cell_v"]), ptr(views["ocv"])
        st.i_cell_a, st.r_series_ohm = ptr(views["i_cell"]), ptr(views["r_series"])
        st.lc_kpa, st.work = ptr(views["lc"]), ptr(self.work)
        return st

    def _sense_config(self, plant: Plant) -> Any:
        """ssb_plant_sense_config_t: the channels' constants (plant.sensors) and the NTC."""
        ptr, th = self.ptr, plant.board.thermistor
        scfg = self.ffi.new("ssb_plant_sense_config_t *")
        scfg.n, scfg.k, scfg.m = plant.n, plant.k, plant.m
        scfg.th_weights = ptr(self.static["th_weights"])
        scfg.th_off_kelvin = ptr(self.static["th_off_kelvin"])
        scfg.inv_t25_per_k, scfg.beta_k = 1.0 / T25_K, float(th.beta_k)
        scfg.r25_ohm, scfg.pullup_ohm = float(th.r25_ohm), float(th.pullup_ohm)
        scfg.th_counts_per_unit = th.vref_v / th.lsb_v
        scfg.vtap_open_since_s = ptr(self.bufs["vtap_open_since_s"])
        scfg.vtap_open_tau_s = plant.params.vtap_open_tau_s
        for name in ("ch_a", "ch_s", "ch_c"):
            setattr(scfg, name, ptr(self.bufs[name]))
        scfg.ch_lo, scfg.ch_hi = ptr(self.static["ch_lo"]), ptr(self.static["ch_hi"])
        return scfg

    def sync(self, plant: Plant) -> None:
        """Copy what depends on outputs and faults into the buffers."""
        b, f, cfg, s = self.bufs, plant.faults, self.cfg, plant._sensors
        b["r0_factor"][...] = plant._r0_factor
        b["r_scale"][...] = plant._r_scale
        b["rc_factor"][...] = plant._rc_factor
        b["local_frac"][...] = plant._local_frac
        b["g_static"][...] = plant._g_static
        b["inv_short"][...] = plant._inv_short
        b["cell_heat_w"][...] = f.cell_heat_w
        b["lc_factor"][...] = plant._lc_factor
        b["vtap_open_since_s"][...] = f.vtap_open_since_s
        b["ch_a"][...] = s.ch_a
        b["ch_s"][...] = s.ch_s
        b["ch_c"][...] = s.ch_c
        cfg.loss_any, cfg.g_any = int(plant._loss_any), int(plant._g_any)
        cfg.heat_fault_any = int(plant._heat_fault_any)
        cfg.collapse_um = plant._collapse_um
        self.scfg.vtap_any = int(s.vtap_any)
        self.th_dt = math.nan  # faults may have changed the coolant or the ambient override

    def sync_bleed(self, plant: Plant) -> None:
        """:meth:`sync` of what the bleed switches change (Plant._refresh_bleed)."""
        self.bufs["g_static"][...] = plant._g_static
        self.cfg.g_any = int(plant._g_any)

    def thermal_pointers(self, plant: Plant, dt_s: float) -> tuple[Any, Any, Any]:
        """Plant._thermal_matrix as C pointers, cached under the same key."""
        key = (dt_s, plant.faults.coolant_lost, plant.ambient_effective_c)
        hit = self.thermal.get(key)
        if hit is None:
            arrays = tuple(np.ascontiguousarray(a) for a in plant._thermal_matrix(dt_s))
            if len(self.thermal) > 16:
                self.thermal.clear()
            # the arrays ride along so that the pointers stay valid
            hit = self.thermal[key] = (*(self.ptr(a) for a in arrays), arrays)
        return hit[0], hit[1], hit[2]

    def step(self, plant: Plant, dt_s: float) -> None:
        """Plant.step on the C engine."""
        rc = self.begin(self.cfg, self.st, plant.pressure_kpa, self.sums)
        if rc:
            raise c_error("ssb_plant_begin", rc)
        sums = self.sums
        i_s = plant._stack_current(dt_s, self.v_open, self.r_eff, sums[0], sums[1])
        if dt_s != self.th_dt:  # th_dt is reset when ambient or coolant may have changed
            self.th = self.thermal_pointers(plant, dt_s)
            self.th_dt = dt_s
        minv, c_dt, amb = self.th
        gas = plant.gas_kpa
        if plant.faults.gas_ramp_kpa_per_s:
            gas += plant.faults.gas_ramp_kpa_per_s * dt_s
        rc = self.finish(self.cfg, self.st, i_s, dt_s, minv, c_dt, amb, gas, self.p_out)
        if rc:
            raise c_error("ssb_plant_finish", rc)
        plant.gas_kpa = gas
        plant.t_s += dt_s
        plant.pressure_kpa = self.p_out[0]
        plant.current_a = i_s
        plant.load.observe(plant.cell_v)

    def sensor_counts(self, plant: Plant) -> SensorCounts:
        """Plant.sensor_counts on the C engine: ssb_plant_sense, then the sensor faults."""
        s = plant._sensors
        row = s.next_noise_row()
        if self.noise_src is not s.noise:  # a new batch, or one put back by restore()
            self.noise_src = s.noise
            self.noise_p = self.ptr(s.noise)
        rc = self.sense(self.scfg, self.st, plant.t_s, plant.current_a, plant.bus_v,
                        self.noise_p + row * self.nch, self.sense_buf_p, self.raw_p)
        if rc:
            s.noise_i -= 1  # the row was not used
            raise c_error("ssb_plant_sense", rc)
        return s.finish(self.raw, plant.faults)


__all__ = ["C_ERRORS", "CEngine", "c_error"]
