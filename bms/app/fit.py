"""``bms fit``: a cell model from cycler data -> a pack file the BMS runs, and a fit report.

Inputs: an OCV test (a C/20-class discharge and charge, or rests) and HPPC pulse tests at one
or more temperatures, as cycler CSVs (``Time [s]``, ``Current [A]``, ``Voltage [V]``,
``Temperature [degC]``, or mapped with ``--columns``). Each file's current sign is given or
found from the data (bms.app.recording). Method: bms.app.fit_ocv (OCV, capacity, OCV over
temperature), bms.app.fit_pulses (R0 and RC branches per HPPC level, in the core's own
discrete model) and bms.app.fit_hysteresis (the OCV hysteresis, when the data show one: then
the OCV and the HPPC levels are fitted again with it as a known input). Output: a whole
pack (``base:`` the bench's pack, default ssb-23) whose ``cell:`` is the fit, and a report
(JSON, Markdown, a PNG per pulse file) that includes the voltage RMSE of the written pack run
through the real core (``bms.core.Core``, open loop).

Importable: ``fit(ocv_path, pulse_paths, ...) -> FitResult``; ``FitResult.write_pack(path)``,
``FitResult.write_report(directory)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from bms.app.errors import CliError, OutputError, Parser, UsageError, report
from bms.app.fit_data import FitError, Trace, parse_columns, read_trace
from bms.app.fit_hysteresis import (
    REST_CHECK_K,
    START_STATE,
    Branch,
    HysteresisFit,
    assess,
    trajectory,
)
from bms.app.fit_ocv import OcvResult, fit_ocv, strictly_increasing, temperature_rows
from bms.app.fit_pulses import (
    DIFFUSION_SLOPE_SMOOTH_SOC,
    PULSE_MAX_S,
    PulseTest,
    diffusion_slope,
    fit_levels,
    prepare,
    simulate,
)
from bms.app.recording import CURRENT_SIGNS
from bms.core import Core, ct_overpotential
from bms.tuning import REST_CURRENT_A
from boards.config import (
    PACK_SCHEMA,
    SOLID_STATE_KEYS,
    ConfigError,
    PackConfig,
    load_pack,
    resolve_pack_path,
)

#: Table SOC breakpoints are the HPPC levels rounded to this (keeps the core's uniform grid at
#: 1 % like the OCV's; a level moves by at most 0.5 % SOC).
TABLE_SOC_STEP = 0.01
#: The voltage model error written as estimator.voltage_noise_v is never below this (1 mV: the
#: accuracy class of a cell-monitor IC, LTC6811 datasheet 1.2 mV total error; a noise-free
#: simulated test must not make the EKF trust the model more than a real monitor allows).
MIN_VOLTAGE_NOISE_V = 0.001
#: The voltage noise written is the model's error at rest: samples with |I| below this (the
#: control path's rest threshold, bms.tuning.REST_CURRENT_A).
NOISE_REST_CURRENT_A = REST_CURRENT_A


@dataclass
class Tables:
    """The fitted model on its own breakpoints: per temperature (rows) and SOC (columns)."""

    soc: np.ndarray
    temperature_c: np.ndarray
    r0_ohm: np.ndarray
    r0_charge_ohm: np.ndarray
    r_ohm: list[np.ndarray]
    tau_s: list[np.ndarray]
    exchange_current_a: np.ndarray | None = None  # charge transfer I0 (None: not fitted)


@dataclass
class FitResult:
    ocv: OcvResult
    tests: list[PulseTest]
    ocv_temperatures_c: np.ndarray
    ocv_rows_v: np.ndarray
    tables: Tables
    rc_branches: int
    base: str
    ocv_path: Path
    voltage_noise_v: float
    core_rmse_v: dict[str, float] = field(default_factory=dict)
    # the core's open-loop error at rest per HPPC file, and the voltage noise written per test
    # temperature (RMS over that temperature's files at rest, at least MIN_VOLTAGE_NOISE_V)
    core_rest_rmse_v: dict[str, float] = field(default_factory=dict)
    voltage_noise_by_temperature_v: dict[float, float] = field(default_factory=dict)
    # ... and per HPPC level (its SOC rounded to TABLE_SOC_STEP) and temperature, the table
    # written: (soc breakpoints, temperatures, values (n_t, n_soc))
    voltage_noise_table: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    # the SOC random walk written: the base's, scaled by (voltage_noise_v / the base's)^2
    soc_process_noise_per_s: float | None = None
    base_noise: tuple[float, float] | None = None  # the base's (voltage_noise_v, q_soc)
    core_voltage_v: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    hysteresis: HysteresisFit | None = None

    # ------------------------------------------------------------------ the pack

    def cell_section(self) -> dict:
        """The fitted ``cell:`` (solid-state keys null: removed from the base's)."""
        t = self.tables
        one_t = len(t.temperature_c) == 1

        def table(values: np.ndarray, digits: int = 7) -> dict:
            rows = [[_num(x, digits) for x in row] for row in values]
            out: dict = {"soc": [_num(s, 4) for s in t.soc]}
            if one_t:
                out["values"] = rows[0]
            else:
                out["temperature_c"] = [_num(x, 3) for x in t.temperature_c]
                out["values"] = rows
            return out

        model: dict = {"rc_branches": self.rc_branches, "r0_ohm": table(t.r0_ohm),
                       "r0_charge_ohm": table(t.r0_charge_ohm),
                       "rc": [{"r_ohm": table(r), "tau_s": table(tau, 5)}
                              for r, tau in zip(t.r_ohm, t.tau_s, strict=True)]}
        if t.exchange_current_a is not None:
            model["charge_transfer"] = {"exchange_current_a": table(t.exchange_current_a, 5)}
        hy = self.hysteresis
        if hy is not None and hy.max_v is not None:
            # one table over SOC for every temperature: M is measured at the OCV test's only
            model["hysteresis"] = {"max_v": {"soc": [_num(x, 4) for x in hy.soc],
                                             "values": [_num(x, 4) for x in hy.max_v]},
                                   "rate": _num(hy.rate, 4)}
        cell: dict = {k: None for k in SOLID_STATE_KEYS}
        cell.update({
            "capacity_ah": _num(self.ocv.capacity_ah, 6),
            "soc_grid": [_num(s, 4) for s in self.ocv.soc_grid],
            "temperature_grid_c": [_num(x, 3) for x in self.ocv_temperatures_c],
            "ocv_v": [[round(float(v), 6) for v in row] for row in self.ocv_rows_v],
            "contact_resistance_ref_ohm": 0.0,
            "model": model,
        })
        return cell

    def pack_data(self, name: str, out_dir: Path) -> dict:
        base = self.base
        base_path = resolve_pack_path(base)
        if Path(base).suffix in (".yaml", ".yml") or Path(base).exists():
            base = os.path.relpath(Path(base_path).resolve(), out_dir.resolve())
        return {
            "schema": PACK_SCHEMA,
            "base": base,
            "name": name,
            "description": f"cell fitted by bms fit from {self.ocv_path.name} and "
                           f"{len(self.tests)} HPPC file(s) at "
                           + ", ".join(f"{t.temperature_c:g}" for t in self.tests) + " C",
            "cell": self.cell_section(),
            "charging": None,
            "estimator": self.estimator_section(),
        }

    def _noise_range(self) -> str:
        if self.voltage_noise_table is None:
            return f"{self.voltage_noise_v * 1e3:.2f} mV"
        v = self.voltage_noise_table[2]
        return f"{v.min() * 1e3:.2f}..{v.max() * 1e3:.2f} mV"

    def estimator_section(self) -> dict:
        """estimator.voltage_noise_v: the model's own voltage error at rest per HPPC level
        and test temperature (a table over SOC and temperature), voltage_noise_r0_rel 0 and
        the scaled SOC random walk (docs/estimation.md, "Fitting your own cell": the pack)."""
        vn: float | dict = _num(self.voltage_noise_v, 5)
        if self.voltage_noise_table is not None:
            socs, temps, values = self.voltage_noise_table
            vn = {"soc": [round(float(x), 4) for x in socs]}
            if len(temps) > 1:
                vn["temperature_c"] = [round(float(t), 3) for t in temps]
                vn["values"] = [[_num(x, 5) for x in row] for row in values]
            else:
                vn["values"] = [_num(x, 5) for x in values[0]]
        out: dict = {"voltage_noise_v": vn, "voltage_noise_r0_rel": 0.0}
        if self.soc_process_noise_per_s is not None:
            out["soc_process_noise_per_s"] = float(f"{self.soc_process_noise_per_s:.3g}")
            if self.voltage_noise_table is not None:
                # the noise that random walk goes with: per cell it follows the table's value
                # at the cell's SOC and temperature (docs/estimation.md, "Noise")
                out["soc_process_noise_ref_v"] = _num(self.voltage_noise_v, 5)
        return out

    def write_pack(self, path: str | Path) -> Path:
        p = Path(path)
        data = self.pack_data(p.stem, p.parent)
        header = [
            f"# {p.name}: written by bms fit (docs/estimation.md, 'Fitting your own cell').",
            f"# OCV test: {self.ocv_path.name}; HPPC: "
            + ", ".join(t.trace.path.name for t in self.tests) + ".",
            "# Everything not here comes from the base pack. Removed from the base (null): the",
            "# solid-state description (a cycler test does not measure swelling: pressure is",
            "# monitored but not fused as SOC) and the CCD charging table (it needs that",
            "# description). contact_resistance_ref_ohm 0: the fitted R0 holds the contact",
            "# resistance at the test's pressure. estimator.voltage_noise_v: the RMS voltage",
            "# error of this model run through the core over the HPPC files at rest (|I| <",
            "# 0.2 A) in the first 60 s after current, per HPPC level and test temperature",
            "# (floor 1 mV); voltage_noise_r0_rel 0 (no extra error under load);",
            "# soc_process_noise_per_s: the base's, scaled by the square of the largest",
            "# per-temperature RMS at rest over the base's voltage_noise_v (docs/estimation.md);",
            "# soc_process_noise_ref_v: that RMS; each cell's random walk is scaled by the",
            "# table's value at its SOC and temperature over it.",
            "# Protections and limits are the base's: check them against the cell's datasheet.",
        ]
        text = "\n".join(header) + "\n" + yaml.safe_dump(
            data, sort_keys=False, default_flow_style=None, width=100)
        p.write_text(text, encoding="utf-8")
        return p

    # ------------------------------------------------------------------ the report

    def summary(self) -> dict:
        t = self.tables
        return {
            "capacity_ah": self.ocv.capacity_ah,
            "ocv": {"file": str(self.ocv_path), "method": self.ocv.method,
                    "temperature_c": self.ocv.temperature_c, "notes": self.ocv.notes,
                    "soc_grid": self.ocv.soc_grid.tolist(),
                    "temperature_grid_c": self.ocv_temperatures_c.tolist(),
                    "ocv_v": self.ocv_rows_v.tolist(),
                    "half_difference_v": [None if not math.isfinite(x) else x
                                          for x in self.ocv.half_difference_v]},
            "rc_branches": self.rc_branches,
            "pulse_files": [{
                "file": str(test.trace.path), "temperature_c": test.temperature_c,
                "temperature_median_c": test.trace.temperature_median_c,
                "sign": test.trace.sign_note, "soc_start": test.soc0, "notes": test.notes,
                "core_rmse_mv": 1e3 * self.core_rmse_v.get(str(test.trace.path), math.nan),
                "levels": [_level_json(lv) for lv in test.levels]} for test in self.tests],
            "tables": {"soc": t.soc.tolist(), "temperature_c": t.temperature_c.tolist(),
                       "r0_ohm": t.r0_ohm.tolist(), "r0_charge_ohm": t.r0_charge_ohm.tolist(),
                       "r_ohm": [r.tolist() for r in t.r_ohm],
                       "tau_s": [x.tolist() for x in t.tau_s],
                       "exchange_current_a": (None if t.exchange_current_a is None
                                              else t.exchange_current_a.tolist())},
            "hysteresis": None if self.hysteresis is None else self.hysteresis.summary(),
            "estimator": {"voltage_noise_v": self.voltage_noise_v,
                          "voltage_noise_table": None if self.voltage_noise_table is None else {
                              "soc": self.voltage_noise_table[0].tolist(),
                              "temperature_c": self.voltage_noise_table[1].tolist(),
                              "values_v": self.voltage_noise_table[2].tolist()},
                          "voltage_noise_by_temperature_v": {
                              f"{t:g}": v for t, v in
                              sorted(self.voltage_noise_by_temperature_v.items())},
                          "voltage_noise_r0_rel": 0.0,
                          "soc_process_noise_per_s": self.soc_process_noise_per_s,
                          "base_voltage_noise_v_and_soc_process_noise_per_s": self.base_noise,
                          "from": "RMS of the core's open-loop voltage error over the HPPC "
                                  f"files at rest (|I| < {NOISE_REST_CURRENT_A:g} A): the "
                                  f"table in the first {PULSE_MAX_S:g} s after current per "
                                  "level and temperature, the SOC random walk's scale per "
                                  "temperature over every rest sample, at least "
                                  f"{MIN_VOLTAGE_NOISE_V * 1e3:g} mV"},
            "notes": self.notes,
        }

    def markdown(self) -> str:
        s = self.summary()
        out = [f"# bms fit report: {self.ocv_path.name} + {len(self.tests)} HPPC file(s)", "",
               f"Capacity (charge counted over the OCV test's discharge): "
               f"**{self.ocv.capacity_ah:.4f} Ah**. Model: OCV + R0 + {self.rc_branches} RC "
               "branch(es)"
               + (" + a Butler-Volmer charge-transfer overpotential (2RT/F) asinh(I / 2 I0)"
                  if self.tables.exchange_current_a is not None else "")
               + ", in the core's discrete form.", "", "## OCV", ""]
        out += [f"- {n}" for n in self.ocv.notes + [n for n in self.notes if "OCV" in n]]
        temps = self.ocv_temperatures_c
        out += ["", "| SOC | " + " | ".join(f"{t:g} C [V]" for t in temps) + " |",
                "|---:|" + "---:|" * len(temps)]
        for k in range(0, len(self.ocv.soc_grid), 5):
            out.append(f"| {self.ocv.soc_grid[k]:.2f} | "
                       + " | ".join(f"{self.ocv_rows_v[j, k]:.4f}" for j in range(len(temps)))
                       + " |")
        out += ["", "(every 5th grid point; the pack and the JSON hold every 1 %)", ""]
        out += self._hysteresis_markdown() + ["## Pulse tests", ""]
        hdr = "| T [C] | SOC | R0 dis [mOhm] | R0 chg [mOhm] | step R0 dis/chg [mOhm] | " + \
            " | ".join(f"R{j + 1} [mOhm] | tau{j + 1} [s]" for j in range(self.rc_branches)) + \
            " | I0 [A] | RMSE window [mV] | RMSE pulses [mV] |"
        for f in s["pulse_files"]:
            out += [f"### {Path(f['file']).name}: {f['temperature_c']:g} C", ""]
            out += [f"- {n}" for n in f["notes"]] + [f"- current: {f['sign']}",
                                                    f"- the written pack run through the core "
                                                    f"(open loop, SOC counted): voltage RMSE "
                                                    f"**{f['core_rmse_mv']:.2f} mV**", ""]
            out += [hdr, "|" + "---:|" * (hdr.count("|") - 1)]
            for lv in f["levels"]:
                rc = " | ".join(f"{1e3 * r:.2f} | {tau:.1f}"
                                for r, tau in zip(lv["r_ohm"], lv["tau_s"], strict=True))
                out.append(f"| {f['temperature_c']:g} | {lv['soc']:.3f} | "
                           f"{1e3 * lv['r0_ohm']:.2f} | {_mohm(lv['r0_charge_ohm'])} | "
                           f"{_mohm(lv['r0_step_ohm'])}/{_mohm(lv['r0_step_charge_ohm'])} | "
                           f"{rc} | {_amp(lv['exchange_current_a'])} | {lv['rmse_mv']:.2f} | "
                           f"{lv['pulse_rmse_mv']:.2f} |")
            out.append("")
        out += ["## Written", "",
                "- cell model tables over SOC " + (
                    ", ".join(f"{x:g}" for x in self.tables.soc) if len(self.tables.soc) <= 20
                    else f"{self.tables.soc[0]:g}..{self.tables.soc[-1]:g} "
                         f"({len(self.tables.soc)} points)") +
                f" and temperature {', '.join(f'{x:g}' for x in self.tables.temperature_c)} C",
                "- estimator.voltage_noise_v: a table over the HPPC levels' SOC and the test "
                "temperatures, " + self._noise_range() + "; per temperature " + ", ".join(
                    f"{v * 1e3:.2f} mV at {t:g} C" for t, v in
                    sorted(self.voltage_noise_by_temperature_v.items()))
                + f" ({s['estimator']['from']}), voltage_noise_r0_rel 0; "
                + ("" if self.soc_process_noise_per_s is None or self.base_noise is None else
                   f"soc_process_noise_per_s {self.soc_process_noise_per_s:.3g} /s (the "
                   f"base's {self.base_noise[1]:.3g} /s x ({self.voltage_noise_v * 1e3:.2f} / "
                   f"{self.base_noise[0] * 1e3:.2f} mV)^2"
                   + ("" if self.voltage_noise_table is None else
                      f", per cell x the table's value / {self.voltage_noise_v * 1e3:.2f} mV: "
                      "soc_process_noise_ref_v") + "); ")
                + "the other estimator settings are the base's",
                ""]
        out += [f"- {n}" for n in self.notes if "OCV" not in n]
        return "\n".join(out) + "\n"

    def _hysteresis_markdown(self) -> list[str]:
        hy = self.hysteresis
        if hy is None:
            return []
        out = ["## OCV hysteresis (Plett one-state: OCV + M(SOC) h)", ""]
        out += [f"- {n}" for n in hy.notes]
        if hy.max_v is not None:
            out += ["", "| SOC | " + " | ".join(f"{x:.1f}" for x in hy.soc) + " |",
                    "|---|" + "---:|" * len(hy.soc),
                    "| M [mV] | " + " | ".join(f"{1e3 * x:.2f}" for x in hy.max_v) + " |", "",
                    f"rate gamma = {hy.rate:.4g} per unit SOC "
                    f"({'fitted' if hy.rate_found else 'assumed'}); every test is taken to "
                    "start from a charged, rested cell (h = +1)"]
        return out + [""]

    def write_report(self, directory: str | Path, stem: str = "fit") -> list[Path]:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        paths = [d / f"{stem}_report.json", d / f"{stem}_report.md"]
        paths[0].write_text(json.dumps(self.summary(), indent=1, default=_json_default) + "\n",
                            encoding="utf-8")
        paths[1].write_text(self.markdown(), encoding="utf-8")
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            self.notes.append("no PNG: matplotlib is not installed (pip install 'ssb-bms[plot]')")
            return paths
        for test in self.tests:
            key = str(test.trace.path)
            if key not in self.core_voltage_v:
                continue
            png = d / f"{stem}_{test.trace.path.stem}.png"
            _plot(test, self.core_voltage_v[key], self.core_rmse_v[key], png, plt)
            paths.append(png)
        return paths


def _num(x: float, digits: int) -> float:
    """A plain float with ``digits`` significant digits (readable YAML)."""
    x = float(x)
    return float(f"{x:.{digits}g}") if x != 0.0 else 0.0


def _amp(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3g}"


def _mohm(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{1e3 * x:.2f}"


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _level_json(lv) -> dict:
    d = dataclasses.asdict(lv)
    d["rmse_mv"], d["pulse_rmse_mv"] = 1e3 * d.pop("rmse_v"), 1e3 * d.pop("pulse_rmse_v")
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in d.items()}


def _plot(test: PulseTest, model_v: np.ndarray, rmse_v: float, png: Path, plt) -> None:
    tr = test.trace
    t_h = (tr.time_s - tr.time_s[0]) / 3600.0
    fig, (ax_v, ax_e) = plt.subplots(2, 1, figsize=(10, 6), sharex=True,
                                     gridspec_kw={"height_ratios": [3, 1]})
    ax_v.plot(t_h, tr.voltage_v, label="measured", lw=1.0)
    ax_v.plot(t_h, model_v, "--", label="model (the pack through the core)", lw=1.0)
    ax_v.set_ylabel("voltage [V]")
    ax_v.set_title(f"{tr.path.name}: {test.temperature_c:g} C, RMSE {1e3 * rmse_v:.2f} mV")
    ax_v.legend(loc="upper right", fontsize="small")
    ax_e.plot(t_h, 1e3 * (model_v - tr.voltage_v), lw=0.8)
    ax_e.set_ylabel("model - measured [mV]")
    ax_e.set_xlabel("time [h]")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- the fit


def _tables(tests: list[PulseTest], n_rc: int, charge_transfer: bool = False,
            ocv_at_t: Callable[[float], Callable[[np.ndarray], np.ndarray]] | None = None
            ) -> tuple[Tables, list[str]]:
    """Per temperature the levels' values over their SOC (rounded to TABLE_SOC_STEP), all
    temperatures on the union of the SOC breakpoints (linear between, held beyond). When the
    slow branch follows the OCV slope (``bms fit --diffusion-slope``; ``ocv_at_t`` gives the
    OCV row at a temperature) every table is on the 1 % grid and the slow branch's
    R is the levels' coefficient (linear between, held beyond) x that row's smoothed slope."""
    notes = []
    by_t: dict[float, list] = {}
    for test in tests:
        by_t.setdefault(test.temperature_c, []).extend(test.levels)
    temps = np.array(sorted(by_t))
    soc_sets = []
    per_t = []
    for t in temps:
        levels = sorted(by_t[t], key=lambda lv: lv.soc)
        soc = np.round(np.array([lv.soc for lv in levels]) / TABLE_SOC_STEP) * TABLE_SOC_STEP
        soc = np.clip(soc, 0.0, 1.0)
        soc, first = np.unique(soc, return_index=True)
        levels = [levels[i] for i in first]
        r0 = np.array([lv.r0_ohm for lv in levels])
        r0c = np.array([lv.r0_charge_ohm for lv in levels])
        ok = np.isfinite(r0c)
        if not ok.any():
            notes.append(f"{t:g} C: no charge pulses: R0 on charge = R0 on discharge")
            r0c = r0.copy()
        elif not ok.all():
            r0c = np.interp(soc, soc[ok], r0c[ok])
            notes.append(f"{t:g} C: R0 on charge at SOC "
                         + ", ".join(f"{s:.2f}" for s in soc[~ok])
                         + " (no charge pulse there) from the neighbouring levels")
        rs = [np.array([lv.r_ohm[j] for lv in levels]) for j in range(n_rc)]
        taus = [np.array([lv.tau_s[j] for lv in levels]) for j in range(n_rc)]
        i0 = np.array([lv.exchange_current_a for lv in levels])
        if charge_transfer and not np.all(np.isfinite(i0)):
            raise FitError(f"{t:g} C: no charge-transfer fit at SOC "
                           + ", ".join(f"{x:.2f}" for x in soc[~np.isfinite(i0)])
                           + " (a level without current?)")
        soc_sets.append(soc)
        per_t.append((soc, r0, r0c, rs, taus, i0))
    soc_all = np.unique(np.concatenate(soc_sets))
    follow = n_rc == 2 and ocv_at_t is not None and all(
        math.isfinite(lv.slow_r_per_slope) for t in by_t.values() for lv in t)
    if follow:
        soc_all = np.round(np.linspace(0.0, 1.0, int(round(1.0 / TABLE_SOC_STEP)) + 1), 6)

    def grid(k: int, j: int | None = None) -> np.ndarray:
        rows = []
        for soc, *vals in per_t:
            v = vals[k] if j is None else vals[k][j]
            rows.append(np.interp(soc_all, soc, v))
        return np.array(rows)

    tables = Tables(soc_all, temps, grid(0), grid(1), [grid(2, j) for j in range(n_rc)],
                    [grid(3, j) for j in range(n_rc)], grid(4) if charge_transfer else None)
    if follow:
        rows = []
        for t in temps:
            levels = sorted(by_t[t], key=lambda lv: lv.soc)
            lsoc = np.array([lv.soc for lv in levels])
            coef = np.array([lv.slow_r_per_slope for lv in levels])
            slope = diffusion_slope(soc_all, ocv_at_t(float(t))(soc_all))
            rows.append(np.interp(soc_all, lsoc, coef) * slope)
        tables.r_ohm[1] = np.array(rows)
        notes.append("slow branch: R2 = c x dOCV/dSOC (smoothed over +-"
                     f"{DIFFUSION_SLOPE_SMOOTH_SOC:.0%} SOC), c per level; the tables on the "
                     "OCV's 1 % grid")
    for name, arr in (("R0", tables.r0_ohm), ("R0 on charge", tables.r0_charge_ohm)):
        if np.any(arr > 10.0):
            raise FitError(f"fitted {name} up to {arr.max():.3g} ohm: above 10 ohm, not a cell "
                           "(wrong current unit or column?)")
    for r in tables.r_ohm:
        np.maximum(r, 1e-6, out=r)
    return tables, notes


def _ocv_lookup(result: FitResult, t: float):
    k = int(np.argmin(np.abs(result.ocv_temperatures_c - t)))
    row = result.ocv_rows_v[k]
    grid = result.ocv.soc_grid
    return lambda soc: np.interp(soc, grid, row)


def one_cell_pack(pack: PackConfig) -> PackConfig:
    """The pack as one stack of one cell with one thermistor (a cycler file's shape)."""
    stack = dataclasses.replace(pack.stacks[0], cells=1, thermistor_cell_positions=(0.0,))
    return dataclasses.replace(pack, stacks=(stack,))


def _level_noise_v(test: PulseTest, relax: np.ndarray, err: np.ndarray) -> dict[float, float]:
    """One HPPC test's voltage-noise value per level SOC (rounded to TABLE_SOC_STEP): the
    larger of two RMS errors over the relaxation samples ``relax``, each at least
    MIN_VOLTAGE_NOISE_V. (a) The samples in the level's window (the end of one long rest to
    the end of the next): the relaxation after its pulses, at its SOC, and the one after the
    discharge segment to the next level, about one level lower. (b) The samples whose SOC
    (the test's own, counted from its start) is nearest the level's: each relaxation at the SOC it
    was taken at. (b) alone is the truer keying, (a) alone writes the segment's relaxation one
    level too high (PyBaMM Mohtat2020 0 C: 1.2 mV at SOC 0.59 where the drive's model error is
    ~5 mV, 8.6 mV at 0.70 where it is ~2); the table is linear between levels 10 % SOC apart
    and the error between two levels is seen only in these relaxations, so each level takes
    the larger: the envelope of what was measured next to it (docs/estimation.md, the pack)."""
    t_s = test.trace.time_s
    level_socs = np.array([lv.soc for lv in test.levels])
    nearest = np.argmin(np.abs(test.soc[:, None] - level_socs[None, :]), axis=1) \
        if len(level_socs) else np.zeros(len(t_s), dtype=int)
    out: dict[float, float] = {}
    for i, lv in enumerate(test.levels):
        soc = round(lv.soc / TABLE_SOC_STEP) * TABLE_SOC_STEP
        for w in (relax & (t_s > lv.t_start_s) & (t_s <= lv.t_end_s), relax & (nearest == i)):
            if w.any():
                out[soc] = max(out.get(soc, MIN_VOLTAGE_NOISE_V),
                               float(np.sqrt(np.mean(err[w] ** 2))))
    return out


def run_core_open_loop(pack: PackConfig, trace: Trace, soc0: float,
                       hysteresis0: float = START_STATE) -> np.ndarray:
    """The pack's model through the real core with every voltage NaN (no EKF update: the
    prediction alone, SOC counted from ``soc0``, the hysteresis state from ``hysteresis0``,
    the fit's assumption for a test's start): ``voltage_pred_v`` per sample."""
    core = Core(one_cell_pack(pack), 0)
    core.reset(soc0)
    if pack.cell.ecm.hysteresis_max_v is not None:
        core.hyst[:] = hysteresis0  # the C core reads the array in place
    dt = np.diff(trace.time_s, prepend=np.nan)
    dt[0] = float(np.median(dt[1:]))
    nan_v = np.array([np.nan])
    p = np.full(core.params.n_load_cells, np.nan)
    temps = np.where(np.isfinite(trace.temperature_c), trace.temperature_c,
                     trace.temperature_median_c)
    out = np.empty(len(dt))
    step = core.step
    for k in range(len(dt)):
        o = step(dt[k], trace.current_a[k], nan_v, temps[k:k + 1], p)
        out[k] = o.voltage_pred_v[0]
    return out


def fit(ocv_path: str | Path, pulse_paths: list[str | Path], current_sign: str = "auto",
        base: str = "ssb-23", rc_branches: int = 2, columns: dict[str, str] | None = None,
        verify: bool = True, charge_transfer: bool = False,
        diffusion_slope: bool = False) -> FitResult:
    """The whole fit (see the module docstring). ``verify``: run the written pack through the
    core over each pulse file (sets ``core_rmse_v`` and ``voltage_noise_v``).
    ``charge_transfer``: a Butler-Volmer charge-transfer overpotential in the model, its I0
    fitted per level (bms.app.fit_pulses.fit_window), R0 then the ohmic part.
    ``diffusion_slope`` (two branches): the slow branch's R follows the OCV's slope
    (bms.app.fit_pulses.DIFFUSION_SLOPE_SMOOTH_SOC: R2 = c x dOCV/dSOC, c per level)."""
    if rc_branches not in (1, 2):
        raise FitError(f"rc_branches {rc_branches}: the core runs 1 or 2 RC branches")
    if not pulse_paths:
        raise FitError("no pulse (HPPC) file: give --pulses FILE at least once")
    resolve_pack_path(base)  # an unknown base is refused before any work
    ocv_trace = read_trace(ocv_path, current_sign, columns)
    traces = [read_trace(p, current_sign, columns) for p in pulse_paths]
    # pass 1 without hysteresis; its resistances give the polarisation the OCV test's branches
    # carry, so M (and gamma) can be told from it; pass 2 refits with M h as a known input
    result = _fit_pass(fit_ocv(ocv_trace), traces, rc_branches, base, Path(ocv_path), None,
                       charge_transfer, diffusion_slope)
    hyst = _assess_hysteresis(result)
    if hyst.written:
        result = _fit_pass(fit_ocv(ocv_trace, (hyst.at, hyst.rate)), traces, rc_branches, base,
                           Path(ocv_path), hyst, charge_transfer, diffusion_slope)
    result.hysteresis = hyst
    if verify:
        verify_in_core(result)
    return result


def _fit_pass(ocv: OcvResult, traces: list[Trace], rc_branches: int, base: str,
              ocv_path: Path, hyst: HysteresisFit | None, charge_transfer: bool = False,
              slow_follows_slope: bool = False) -> FitResult:
    """OCV rows over temperature, every HPPC level and the tables, for one hysteresis (None:
    none); ``charge_transfer``, ``slow_follows_slope`` (``diffusion_slope``): as fit()."""
    # a test's first rest is a charged cell's (h = START_STATE): its SOC from OCV + M h
    rested_v = ocv.ocv_v if hyst is None else strictly_increasing(
        ocv.ocv_v + START_STATE * hyst.at(ocv.soc_grid))
    tests = [prepare(tr, ocv.capacity_ah, ocv.soc_grid, rested_v) for tr in traces]
    points: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    for test in tests:
        rest_v = test.rest_v
        if hyst is not None:
            tr = test.trace
            h = trajectory(tr.current_a * tr.dt_s / (ocv.capacity_ah * 3600.0), tr.current_a,
                           hyst.rate)
            test.hysteresis_v = hyst.at(test.soc) * h
            # a relaxed rest is on OCV + M h: the OCV rows go through the rests less M h
            rest_v = rest_v - test.hysteresis_v[test.rest_index]
        s, v = points.get(test.temperature_c, (np.empty(0), np.empty(0)))
        points[test.temperature_c] = (np.concatenate([s, test.rest_soc]),
                                      np.concatenate([v, rest_v]))
    temps, rows, notes = temperature_rows(ocv, points)
    result = FitResult(ocv, tests, temps, rows, None, rc_branches, base,  # type: ignore[arg-type]
                       ocv_path, MIN_VOLTAGE_NOISE_V, notes=notes, hysteresis=hyst)
    for test in tests:
        fit_levels(test, _ocv_lookup(result, test.temperature_c), rc_branches, charge_transfer,
                   slow_follows_slope)
    result.tables, table_notes = _tables(tests, rc_branches, charge_transfer,
                                         lambda t: _ocv_lookup(result, t))
    result.notes += table_notes
    return result


def _assess_hysteresis(result: FitResult) -> HysteresisFit:
    """M and gamma from the OCV test with pass 1's resistances at the OCV test's temperature
    (linear between the tables' temperatures, held beyond; bms.app.fit_hysteresis)."""
    ocv, t = result.ocv, result.tables
    t_fit = float(np.clip(ocv.temperature_c, t.temperature_c[0], t.temperature_c[-1]))

    def row(values: np.ndarray, soc: np.ndarray) -> np.ndarray:
        at_t = np.array([np.interp(t_fit, t.temperature_c, values[:, j])
                         for j in range(values.shape[1])])
        return np.interp(soc, t.soc, at_t)

    def eta(soc: np.ndarray, current_a: np.ndarray | float) -> np.ndarray:
        # the charge-transfer overpotential is polarisation too (0 without one): R0 is then
        # the ohmic part alone
        if t.exchange_current_a is None:
            return np.zeros(len(soc))
        c = 0.5 / row(t.exchange_current_a, soc)
        return ct_overpotential(c, current_a, np.full(len(soc), t_fit))

    def steady(soc: np.ndarray, i_abs: float) -> tuple[np.ndarray, np.ndarray]:
        rc = sum(row(r, soc) for r in t.r_ohm)
        e = eta(soc, i_abs)  # odd in I: the same magnitude on both branches
        return ((row(t.r0_ohm, soc) + rc) * i_abs + e,
                (row(t.r0_charge_ohm, soc) + rc) * i_abs + e)

    def params_at(soc: np.ndarray, _temp: np.ndarray) -> dict:
        return {"r0": row(t.r0_ohm, soc), "r0_charge": row(t.r0_charge_ohm, soc),
                "r": [row(r, soc) for r in t.r_ohm], "tau": [row(x, soc) for x in t.tau_s]}

    def charge_pol(b: Branch) -> np.ndarray:
        return simulate(b.dt_s, b.current_a, b.soc, np.full(len(b.soc), t_fit),
                        lambda s, _t: np.zeros_like(s), params_at) + eta(b.soc, b.current_a)

    def rests(gamma: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        out = []
        for test in result.tests:
            if abs(test.temperature_c - ocv.temperature_c) > REST_CHECK_K:
                continue
            tr = test.trace
            h = trajectory(tr.current_a * tr.dt_s / (ocv.capacity_ah * 3600.0), tr.current_a,
                           gamma)
            out.append((test.rest_soc, test.rest_v, h[test.rest_index]))
        return out

    if ocv.discharge is None:
        hy = HysteresisFit(np.zeros(1), None, 0.0, False, math.nan, math.nan, math.nan,
                           math.nan, 0, math.nan)
        hy.notes.append(f"no hysteresis: a {ocv.method} OCV test has no charge and discharge "
                        "branches to compare (a slow-rate test does)")
        return hy
    return assess(ocv.discharge, ocv.charge, ocv.soc_grid, ocv.half_difference_v, t_fit,
                  steady, charge_pol, rests, lambda s: np.interp(s, ocv.soc_grid, ocv.ocv_v))


def verify_in_core(result: FitResult) -> None:
    """Write the pack to a temporary file, load it as the BMS does (so it is also checked by
    the loader) and run every pulse file through the core; the RMS error over all files is the
    model error written as voltage_noise_v."""
    with tempfile.TemporaryDirectory() as d:
        path = result.write_pack(Path(d) / "fitted.yaml")
        if not Path(result.base).is_absolute() and (Path(result.base).suffix in (".yaml", ".yml")
                                                    or Path(result.base).exists()):
            # a relative base path is relative to the pack file: rewrite it for the temp copy
            data = yaml.safe_load(path.read_text())
            data["base"] = str(Path(result.base).resolve())
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        try:
            pack = load_pack(path)
        except ConfigError as exc:
            raise FitError(f"the fitted pack does not load: {exc}") from None
    rest_sq: dict[float, list[float]] = {}
    by_level: dict[float, dict[float, float]] = {}
    for test in result.tests:
        v = run_core_open_loop(pack, test.trace, test.soc0)
        err = v - test.trace.voltage_v
        ok = np.isfinite(err)
        key = str(test.trace.path)
        result.core_voltage_v[key] = v
        result.core_rmse_v[key] = float(np.sqrt(np.mean(err[ok] ** 2)))
        # At rest the error is the OCV's and the slow relaxation's, what moves the SOC
        # estimate; under load the HPPC's pulse edges add short transients (k = 0.05-0.07 of
        # the overpotential on PyBaMM files) that the drive's SOC does not follow
        # (docs/estimation.md, "the pack")
        rest = ok & (np.abs(test.trace.current_a) < NOISE_REST_CURRENT_A)
        acc = rest_sq.setdefault(float(test.temperature_c), [0.0, 0.0])
        acc[0] += float(np.sum(err[rest] ** 2))
        acc[1] += int(rest.sum())
        result.core_rest_rmse_v[key] = (float(np.sqrt(np.mean(err[rest] ** 2)))
                                        if rest.any() else math.nan)
        # per level: the model's error is not the same at every SOC (PyBaMM Chen2020 at
        # 25 C: 1.0-8.3 mV, 20.8 mV at the full level), and one value per temperature would be
        # too wide at most SOCs and too narrow at a few. The rest samples in the relaxation
        # after current only (within PULSE_MAX_S of the last sample under load, the fit's
        # pulse-profile horizon): the relaxed end of a long rest is where the OCV was fitted
        # and the error is smallest, and an operating cell seldom rests that long
        t_s = test.trace.time_s
        last_load = np.maximum.accumulate(np.where(rest, -np.inf, t_s))
        relax = rest & (t_s - last_load <= PULSE_MAX_S)
        levels = by_level.setdefault(float(test.temperature_c), {})
        for soc, rms_v in _level_noise_v(test, relax, err).items():
            levels.setdefault(soc, rms_v)
    result.voltage_noise_by_temperature_v = {
        t: max(MIN_VOLTAGE_NOISE_V, math.sqrt(a[0] / a[1]) if a[1] else MIN_VOLTAGE_NOISE_V)
        for t, a in sorted(rest_sq.items())}
    result.voltage_noise_v = max(result.voltage_noise_by_temperature_v.values(),
                                 default=MIN_VOLTAGE_NOISE_V)
    by_level = {t: lv for t, lv in by_level.items() if lv}
    if by_level:
        temps = np.array(sorted(by_level))
        socs = np.array(sorted({s for lv in by_level.values() for s in lv}))
        values = np.array([np.interp(socs, sorted(by_level[t]),
                                     [by_level[t][x] for x in sorted(by_level[t])])
                           for t in temps])
        result.voltage_noise_table = (socs, temps, values)
    # The SOC random walk keeps the SOC sigma from shrinking below what the model's voltage
    # error allows: its steady state under the voltage updates is sigma^2 = sqrt(q R dt) /
    # dOCV/dSOC with R ~ voltage_noise_v^2, so q ~ voltage_noise_v^2 keeps the SOC sigma
    # proportional to the model error. The base's pair (ssb-23: 1e-6 /s at 8 mV, set against
    # the emulator plant for an honest bound) gives the ratio; none of the scored data does.
    try:
        base_est = load_pack(result.base).estimator
    except ConfigError as exc:
        raise FitError(f"the base pack does not load: {exc}") from None
    result.base_noise = (base_est.voltage_noise_v, base_est.soc_process_noise_per_s)
    result.soc_process_noise_per_s = (base_est.soc_process_noise_per_s
                                      * (result.voltage_noise_v / base_est.voltage_noise_v) ** 2)


# ---------------------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="bms fit", description=__doc__.split("\n\n")[0],
        epilog="examples:\n"
               "  bms fit --ocv ocv.csv --pulses hppc_25C.csv -o my-cell.yaml\n"
               "  bms fit --ocv ocv.csv --pulses hppc_0C.csv --pulses hppc_25C.csv "
               "--current-sign discharge-positive --base ssb-23 -o my-cell.yaml --report fit/\n"
               "  bms fit ... --columns time=t_s,current=I_A,voltage=U_V,temperature=T_C\n\n"
               "Cycler columns recognised without --columns: 'Time [s]', 'Current [A]', "
               "'Voltage [V]', 'Temperature [degC]'.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ocv", required=True, type=Path,
                    help="OCV test: C/20-class discharge and charge from full, or rests")
    ap.add_argument("--pulses", required=True, type=Path, action="append",
                    help="HPPC test starting from a relaxed cell (repeat for each temperature)")
    ap.add_argument("--current-sign", choices=CURRENT_SIGNS, default="auto",
                    help="the files' current convention (auto: from which way the voltage "
                         "steps; PyBaMM and many cyclers are discharge-positive)")
    ap.add_argument("--columns", default=None,
                    help="column names when not the cycler convention: "
                         "time=..,current=..,voltage=..,temperature=.. (any subset)")
    ap.add_argument("--base", default="ssb-23",
                    help="pack the fitted cell goes into (name or file; default %(default)s)")
    ap.add_argument("--rc-branches", type=int, choices=(1, 2), default=2,
                    help="RC branches of the model (default %(default)s)")
    ap.add_argument("--charge-transfer", action="store_true",
                    help="add a Butler-Volmer charge-transfer overpotential "
                         "(2RT/F) asinh(I / 2 I0), I0 fitted per level from the pulses and "
                         "segment of different current; R0 is then the ohmic part")
    ap.add_argument("--diffusion-slope", action="store_true",
                    help="with 2 RC branches: the slow branch's resistance follows the OCV's "
                         "slope (solid diffusion seen through the OCV curve), its coefficient "
                         "fitted per level")
    ap.add_argument("-o", "--out", required=True, type=Path, help="pack file to write (YAML)")
    ap.add_argument("--report", type=Path, default=None,
                    help="report directory (default: OUT's directory, files OUT-stem_*)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # The one error path (bms/app/errors.py): a command-line value 2, a cycler file that cannot
    # be used or the --base pack 3, a file that cannot be read or written 5.
    try:
        if args.out.suffix not in (".yaml", ".yml"):
            raise UsageError(f"-o {args.out}: a pack file ends in .yaml")
        folder = args.out.parent if str(args.out.parent) else Path(".")
        if not folder.is_dir():  # said before the fit, not after minutes of it
            raise OutputError(f"-o {args.out}: folder {folder} does not exist")
        result = fit(args.ocv, args.pulses, args.current_sign, args.base, args.rc_branches,
                     parse_columns(args.columns), charge_transfer=args.charge_transfer,
                     diffusion_slope=args.diffusion_slope)
        report_dir = args.report or (args.out.parent if str(args.out.parent) else Path("."))
        try:
            result.write_pack(args.out)
            written = result.write_report(report_dir, args.out.stem)
        except OSError as exc:
            raise OutputError(f"{exc.filename or args.out}: cannot write "
                              f"({exc.strerror or exc})") from exc
    except (CliError, ConfigError) as exc:
        return report("fit", exc)
    t = result.tables
    print(f"bms fit: {result.ocv.capacity_ah:.4f} Ah ({result.ocv.method} OCV test "
          f"{args.ocv.name}), {result.rc_branches} RC branch(es), tables over "
          f"{len(t.soc)} SOC x {len(t.temperature_c)} temperature(s) "
          f"({', '.join(f'{x:g}' for x in t.temperature_c)} C)")
    mid = int(np.argmin(np.abs(t.soc - 0.5)))
    for k, temp in enumerate(t.temperature_c):
        rc = ", ".join(f"R{j + 1} {1e3 * t.r_ohm[j][k, mid]:.2f} mOhm tau{j + 1} "
                       f"{t.tau_s[j][k, mid]:.3g} s" for j in range(result.rc_branches))
        print(f"  {temp:g} C, SOC {t.soc[mid]:.2f}: R0 {1e3 * t.r0_ohm[k, mid]:.2f} mOhm "
              f"(charge {1e3 * t.r0_charge_ohm[k, mid]:.2f}), {rc}")
    for test in result.tests:
        key = str(test.trace.path)
        print(f"  {test.trace.path.name}: {len(test.levels)} levels, core voltage RMSE "
              f"{1e3 * result.core_rmse_v.get(key, math.nan):.2f} mV")
    hy = result.hysteresis
    if hy is not None and hy.max_v is not None:
        print(f"  OCV hysteresis M {1e3 * hy.max_v.min():.2f}..{1e3 * hy.max_v.max():.2f} mV, "
              f"rate {hy.rate:.3g} ({'fitted' if hy.rate_found else 'assumed'})")
    elif hy is not None:
        print(f"  OCV hysteresis: none ({hy.notes[-1]})")
    print(f"  estimator.voltage_noise_v {result._noise_range()} over SOC and temperature "
          "(at rest per temperature: " + ", ".join(
        f"{1e3 * v:.2f} mV at {t:g} C"
        for t, v in sorted(result.voltage_noise_by_temperature_v.items())) + ")")
    if result.soc_process_noise_per_s is not None:
        print(f"  estimator.soc_process_noise_per_s {result.soc_process_noise_per_s:.3g} /s")
    print(f"  -> {args.out}, " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
