"""The campaign spec: a YAML file read strictly into dataclasses, and the runs it names.

Format (docs/campaign.md)::

    schema: ssb-bms/campaign/1
    name: faults-small
    pack: ssb-23                     # built-in name or pack file (relative to the spec)
    overrides: {}                    # pack keys over the pack (as a pack file's base:)
    duration_s: 60                   # simulated time of each run
    timeout_s: 300                   # wall time of each run before it is killed
    scenarios: [udds]                # hil/scenarios names or files (relative to the spec)
    seeds: [1, 2]                    # or {first: 1, count: 50}
    soc_errors: [null, 0.2]          # null: the estimator's own cold start from the OCV
    ambient_c: [25]                  # ambient (and initial cell) temperature
    faults:                          # "none": a healthy run
      - none
      - {name: leak, fault: CELL_SOFT_SHORT, target: 7, value: 10.0, at_s: 20}
      # stack: K (0-based) injects on that stack's board only; default every stack
      # scenario: NAME runs that fault on its own scenario instead of the spec's scenarios
    runs: cross                      # the cross product, or a list of explicit runs

An explicit run names one value of each axis (``{scenario: udds, seed: 1, fault: leak,
soc_error: null, ambient_c: 25}``; a missing axis takes the axis's first value).

Every unknown key is an error naming the closest allowed key; every value is checked here,
except what only the emulator knows at run time (a fault's target index and value range), which
fails that run and is recorded with it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bms.faults import FaultCode
from hil.protocol import InjectedFault

SPEC_SCHEMA = "ssb-bms/campaign/1"
#: The built-in campaigns (``bms campaign reliability``), shipped in the package.
SPEC_DIR = Path(__file__).resolve().parent / "specs"
NO_FAULT = "none"
_TOP_KEYS = ("schema", "name", "description", "pack", "overrides", "duration_s", "timeout_s",
             "scenarios", "seeds", "soc_errors", "ambient_c", "faults", "runs", "tables",
             "quick")
_FAULT_KEYS = ("name", "fault", "target", "targets", "stack", "value", "at_s", "clear_at_s",
               "expect", "bound_s", "bench", "scenario")
#: Extra report tables a spec may ask for (``tables:``; bms.app.campaign.report).
TABLES = ("per_seed",)
_RUN_KEYS = ("scenario", "seed", "fault", "soc_error", "ambient_c")
# Bounds: a campaign run is a simulated pack, not a soak (bms run does those).
MAX_DURATION_S = 7 * 86400.0
MAX_RUNS = 100_000


class SpecError(ValueError):
    """A bad spec: one line naming the file, the key and what is allowed (exit 3)."""

    def __init__(self, path: str | Path, key: str, message: str) -> None:
        super().__init__(f"{path}: {key}: {message}")
        self.path, self.key = path, key


@dataclass(frozen=True)
class FaultSpec:
    """One injection (on one or several targets) at ``at_s``, cleared at ``clear_at_s``."""

    name: str
    fault: str                        # an InjectedFault name
    targets: tuple[int, ...] = (0xFF,)
    value: float = 0.0
    at_s: float = 0.0
    clear_at_s: float | None = None
    expect: tuple[str, ...] = ()      # FaultCode names that count as detecting it
    bound_s: float | None = None      # the latency it must stay within (optional)
    stack: int | None = None          # the stack (board) it is injected on; None: every one
    # A scripted bench case instead of an injection: a scenario of bms.app.latency (close,
    # inject between ticks, reset refused, recover, reset, re-close), by name; fault is "".
    bench: str | None = None
    # The scenario this fault runs on instead of the spec's scenarios (a fault that needs its
    # own load to have a physical effect, e.g. a coolant loss under a fast charge).
    scenario: str | None = None


@dataclass(frozen=True)
class RunSpec:
    """One run: everything that makes its result (its key is the hash of this)."""

    pack: str                         # built-in name or absolute pack file path
    overrides: str                    # canonical JSON of the pack keys over it ("{}": none)
    scenario: str                     # shipped scenario name, or absolute file path
    seed: int                         # the spec's seed
    fault: FaultSpec | None
    soc_error: float | None
    ambient_c: float
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def key(self) -> str:
        """The run's identity: a hash of its spec (the results file's name). A fault's
        ``bench`` and ``scenario`` count only when set: the keys of the runs without them stay
        what they were (a campaign resumes across the version that added them)."""
        d = self.as_dict()
        for opt in ("bench", "scenario"):
            if d["fault"] is not None and d["fault"].get(opt) is None:
                del d["fault"][opt]
        text = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def scenario_path(self) -> Path:
        """The scenario file (a shipped one is kept by name: resolved on this install)."""
        from hil.emulator.scenario import resolve_scenario_path
        return resolve_scenario_path(self.scenario)

    @property
    def plant_seed(self) -> int:
        """The emulator's seed: numpy SeedSequence of the spec's seed, spawned by the plant's
        own spec (pack, scenario, ambient), not by the fault: the healthy and the faulted run
        of one seed get the same cells. Independent of the order and the executor."""
        plant = json.dumps([self.pack, self.scenario_path.name, self.ambient_c])
        words = tuple(int.from_bytes(hashlib.sha256(plant.encode()).digest()[i:i + 4], "little")
                      for i in range(0, 16, 4))
        ss = np.random.SeedSequence(self.seed, spawn_key=words)
        return int(ss.generate_state(1, dtype=np.uint32)[0] >> 1)  # >= 0, < 2**31

    @property
    def fault_name(self) -> str:
        return self.fault.name if self.fault is not None else NO_FAULT


@dataclass(frozen=True)
class CampaignSpec:
    name: str
    path: Path
    pack: str
    overrides: dict[str, Any]
    duration_s: float
    timeout_s: float
    scenarios: tuple[str, ...]
    seeds: tuple[int, ...]
    soc_errors: tuple[float | None, ...]
    ambient_c: tuple[float, ...]
    faults: tuple[FaultSpec | None, ...]
    runs: tuple[RunSpec, ...] = field(default=())
    description: str = ""
    tables: tuple[str, ...] = ()      # extra report tables (TABLES)


def _unknown(path: Path, where: str, key: str, allowed: tuple[str, ...]) -> SpecError:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return SpecError(path, f"{where}{key}", f"unknown key; {hint}allowed: {', '.join(allowed)}")


def _check_keys(path: Path, where: str, data: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            raise _unknown(path, where, key, allowed)


def _number(path: Path, key: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not lo <= value <= hi:
        raise SpecError(path, key, f"{value!r} is not a number in [{lo:g}, {hi:g}]")
    return float(value)


def _int(path: Path, key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SpecError(path, key, f"{value!r} is not an integer in [{lo}, {hi}]")
    return value


def _list(path: Path, key: str, value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise SpecError(path, key, f"{value!r} is not a non-empty list")
    return value


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """A spec file, or the name of a built-in campaign (``reliability``)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return SPEC_DIR / f"{name_or_path}.yaml"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def read_spec_data(path: Path) -> dict[str, Any]:
    """The file's YAML mapping (OSError for a file that cannot be read: exit 5)."""
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(path, "<yaml>", str(exc).splitlines()[0]) from None
    if not isinstance(data, dict):
        raise SpecError(path, "<top>", "not a mapping of keys")
    return data


def load_spec(name_or_path: str | Path, quick: bool = False) -> CampaignSpec:
    """Read and check a spec; ``quick``: its ``quick:`` keys over the others (the small
    size of a built-in). SpecError (or the pack's or a scenario's own error) on a bad one."""
    path = resolve_spec_path(name_or_path)
    if not path.exists() and Path(name_or_path).suffix not in (".yaml", ".yml") \
            and not Path(name_or_path).exists():
        raise SpecError(name_or_path, "<spec>", "no such file and not a built-in campaign; "
                        f"built-ins: {', '.join(builtin_names())}")
    data = read_spec_data(path)
    _check_keys(path, "", data, _TOP_KEYS)
    if data.get("schema") != SPEC_SCHEMA:
        raise SpecError(path, "schema", f"{data.get('schema')!r}; expected {SPEC_SCHEMA}")
    if quick:
        q = data.get("quick") or {}
        if not isinstance(q, dict):
            raise SpecError(path, "quick", "not a mapping of keys")
        _check_keys(path, "quick.", q, _TOP_KEYS[5:-1])
        data = {**data, **q}
    return _build(path, data)


def _build(path: Path, data: dict[str, Any]) -> CampaignSpec:
    base = path.resolve().parent
    pack = _pack(path, base, data.get("pack", "ssb-23"))
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise SpecError(path, "overrides", "not a mapping of pack keys")
    duration_s = _number(path, "duration_s", data.get("duration_s"), 1.0, MAX_DURATION_S)
    timeout_s = _number(path, "timeout_s", data.get("timeout_s", 600.0), 1.0, 30 * 86400.0)
    scenarios = tuple(_scenario(path, base, f"scenarios[{i}]", s)
                      for i, s in enumerate(_list(path, "scenarios", data.get("scenarios"))))
    seeds = _seeds(path, data.get("seeds"))
    soc_errors = tuple(None if e is None else _number(path, f"soc_errors[{i}]", e, -1.0, 1.0)
                       for i, e in enumerate(_list(path, "soc_errors",
                                                   data.get("soc_errors", [None]))))
    ambient = tuple(_number(path, f"ambient_c[{i}]", t, -40.0, 80.0)
                    for i, t in enumerate(_list(path, "ambient_c", data.get("ambient_c", [25]))))
    faults = tuple(_fault(path, base, f"faults[{i}]", f, duration_s)
                   for i, f in enumerate(_list(path, "faults", data.get("faults", [NO_FAULT]))))
    _check_bench(path, pack, faults)
    tables = _tables(path, data.get("tables", []))
    names = [f.name if f else NO_FAULT for f in faults]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SpecError(path, "faults", f"name {sorted(dup)[0]!r} given twice")
    spec = CampaignSpec(
        name=str(data.get("name", path.stem)), path=path, pack=pack, overrides=overrides,
        duration_s=duration_s, timeout_s=timeout_s, scenarios=scenarios, seeds=seeds,
        soc_errors=soc_errors, ambient_c=ambient, faults=faults,
        description=str(data.get("description", "")), tables=tables)
    runs = _runs(path, spec, data.get("runs", "cross"))
    if len(runs) > MAX_RUNS:
        raise SpecError(path, "runs", f"{len(runs)} runs; at most {MAX_RUNS}")
    return CampaignSpec(**{**spec.__dict__, "runs": tuple(runs)})


def _pack(path: Path, base: Path, value: Any) -> str:
    from boards.config import PACK_DIR
    if not isinstance(value, str) or not value:
        raise SpecError(path, "pack", f"{value!r} is not a pack name or file")
    if (PACK_DIR / f"{value}.yaml").exists() and not (base / value).exists():
        return value
    p = (base / value).resolve()
    if not p.exists():
        names = ", ".join(sorted(q.stem for q in PACK_DIR.glob("*.yaml")))
        raise SpecError(path, "pack", f"{value!r}: no such file and not a built-in pack "
                        f"({names})")
    return str(p)


def _scenario(path: Path, base: Path, key: str, value: Any) -> str:
    from hil.emulator.scenario import SCENARIO_DIR, load_scenario
    if not isinstance(value, str) or not value:
        raise SpecError(path, key, f"{value!r} is not a scenario name or file")
    p = base / value
    if not p.exists():
        p = SCENARIO_DIR / (value if value.endswith((".yaml", ".yml")) else f"{value}.yaml")
    if not p.exists():
        names = ", ".join(sorted(q.stem for q in SCENARIO_DIR.glob("*.yaml")))
        raise SpecError(path, key, f"{value!r}: no such file and not a shipped scenario "
                        f"({names})")
    load_scenario(p)  # ScenarioError names the scenario file and its key (exit 3)
    if p.resolve().parent == SCENARIO_DIR.resolve():
        # a shipped scenario by name: the same key on every install (and on remote workers)
        return p.stem
    return str(p.resolve())


def _tables(path: Path, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise SpecError(path, "tables", f"{value!r} is not a list (of {', '.join(TABLES)})")
    for i, t in enumerate(value):
        if t not in TABLES:
            close = difflib.get_close_matches(str(t), TABLES, n=1)
            raise SpecError(path, f"tables[{i}]", f"{t!r} is not a report table"
                            + (f"; did you mean {close[0]!r}?" if close else "")
                            + f" (one of {', '.join(TABLES)})")
    return tuple(value)


def _check_bench(path: Path, pack: str, faults: tuple[FaultSpec | None, ...]) -> None:
    """A bench case names a scenario of bms.app.latency for this pack."""
    cases = [(i, f.bench) for i, f in enumerate(faults) if f is not None and f.bench]
    if not cases:
        return
    from bms.app.latency import scenarios
    from boards.config import load_pack
    names = [sc.name for sc in scenarios(load_pack(pack))]
    for i, name in cases:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            raise SpecError(path, f"faults[{i}].bench", f"{name!r} is not a bench case of "
                            "bms.app.latency" + (f"; did you mean {close[0]!r}?" if close
                                                 else "") + f" (one of {', '.join(names)})")


def _seeds(path: Path, value: Any) -> tuple[int, ...]:
    if isinstance(value, dict):
        _check_keys(path, "seeds.", value, ("first", "count"))
        first = _int(path, "seeds.first", value.get("first", 1), 0, 2**31 - 1)
        count = _int(path, "seeds.count", value.get("count"), 1, MAX_RUNS)
        return tuple(range(first, first + count))
    seeds = tuple(_int(path, f"seeds[{i}]", s, 0, 2**31 - 1)
                  for i, s in enumerate(_list(path, "seeds", value)))
    if len(set(seeds)) != len(seeds):
        raise SpecError(path, "seeds", "a seed is given twice")
    return seeds


def _fault(path: Path, base: Path, key: str, value: Any, duration_s: float
           ) -> FaultSpec | None:
    if value == NO_FAULT or value is None:
        return None
    if not isinstance(value, dict):
        raise SpecError(path, key, f"{value!r} is not a fault mapping or {NO_FAULT!r}")
    _check_keys(path, f"{key}.", value, _FAULT_KEYS)
    name = value.get("name")
    if not isinstance(name, str) or not name or name == NO_FAULT:
        raise SpecError(path, f"{key}.name", f"{name!r}: give each fault a name (not "
                        f"{NO_FAULT!r})")
    if "bench" in value:
        bench = value["bench"]
        if not isinstance(bench, str) or not bench:
            raise SpecError(path, f"{key}.bench", f"{bench!r} is not a bench case name")
        extra = [k for k in value if k not in ("name", "bench")]
        if extra:
            raise SpecError(path, f"{key}.{extra[0]}", "a bench case takes only name and "
                            "bench (the case scripts its own injection, bound and timing)")
        return FaultSpec(name=name, fault="", bench=bench)
    code = value.get("fault")
    allowed = [c.name for c in InjectedFault if c != InjectedFault.CLEAR_ALL]
    if not isinstance(code, str) or code.upper() not in allowed:
        close = difflib.get_close_matches(str(code).upper(), allowed, n=1)
        raise SpecError(path, f"{key}.fault", f"{code!r} is not an emulator fault"
                        + (f"; did you mean {close[0]!r}?" if close else "")
                        + f" (one of {', '.join(allowed)})")
    if "target" in value and "targets" in value:
        raise SpecError(path, f"{key}.targets", "give target or targets, not both")
    if "targets" in value:
        targets = tuple(_int(path, f"{key}.targets[{i}]", t, 0, 0xFF)
                        for i, t in enumerate(_list(path, f"{key}.targets", value["targets"])))
    else:
        targets = (_int(path, f"{key}.target", value.get("target", 0xFF), 0, 0xFF),)
    # The value's range is the emulator's to check (per fault, at run time: a run that fails).
    v = value.get("value", 0.0)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SpecError(path, f"{key}.value", f"{v!r} is not a number")
    at_s = _number(path, f"{key}.at_s", value.get("at_s", 0.0), 0.0, duration_s)
    clear = value.get("clear_at_s")
    if clear is not None:
        clear = _number(path, f"{key}.clear_at_s", clear, at_s, MAX_DURATION_S)
    expect = value.get("expect", [])
    if isinstance(expect, str):
        expect = [expect]
    codes = [c.name for c in FaultCode]
    for i, c in enumerate(expect if isinstance(expect, list) else [expect]):
        if c not in codes:
            close = difflib.get_close_matches(str(c), codes, n=1)
            raise SpecError(path, f"{key}.expect[{i}]", f"{c!r} is not a BMS fault code"
                            + (f"; did you mean {close[0]!r}?" if close else ""))
    bound = value.get("bound_s")
    if bound is not None:
        bound = _number(path, f"{key}.bound_s", bound, 0.0, MAX_DURATION_S)
    stack = value.get("stack")
    if stack is not None:
        stack = _int(path, f"{key}.stack", stack, 0, 255)  # the pack's count: checked at run
    scenario = value.get("scenario")
    if scenario is not None:
        scenario = _scenario(path, base, f"{key}.scenario", scenario)
    return FaultSpec(name=name, fault=code.upper(), targets=targets, value=float(v), at_s=at_s,
                     clear_at_s=clear, expect=tuple(expect), bound_s=bound, stack=stack,
                     scenario=scenario)


def _runs(path: Path, spec: CampaignSpec, value: Any) -> list[RunSpec]:
    overrides = json.dumps(spec.overrides, sort_keys=True)

    def make(scenario: str, seed: int, fault: FaultSpec | None, err: float | None,
             amb: float) -> RunSpec:
        if fault is not None and fault.scenario is not None:
            scenario = fault.scenario  # the fault's own load
        return RunSpec(pack=spec.pack, overrides=overrides, scenario=scenario, seed=seed,
                       fault=fault, soc_error=err, ambient_c=amb, duration_s=spec.duration_s)

    if value == "cross":
        # A fault with its own scenario runs once per seed (with the first of the spec's
        # scenarios standing for all of them), not once per scenario.
        return [make(sc, seed, f, e, a) for sc in spec.scenarios for f in spec.faults
                if f is None or f.scenario is None or sc == spec.scenarios[0]
                for a in spec.ambient_c for e in spec.soc_errors for seed in spec.seeds]
    if not isinstance(value, list) or not value:
        raise SpecError(path, "runs", f"{value!r}: 'cross' or a non-empty list of runs")
    by_name = {(f.name if f else NO_FAULT): f for f in spec.faults}
    by_scenario = {Path(s).stem: s for s in spec.scenarios}
    out = []
    for i, item in enumerate(value):
        key = f"runs[{i}]"
        if not isinstance(item, dict):
            raise SpecError(path, key, f"{item!r} is not a mapping")
        _check_keys(path, f"{key}.", item, _RUN_KEYS)
        sc = item.get("scenario", Path(spec.scenarios[0]).stem)
        if sc not in by_scenario:
            raise SpecError(path, f"{key}.scenario", f"{sc!r} is not in scenarios "
                            f"({', '.join(by_scenario)})")
        fname = item.get("fault", NO_FAULT)
        if fname not in by_name:
            raise SpecError(path, f"{key}.fault", f"{fname!r} is not a fault of faults "
                            f"({', '.join(by_name)})")
        seed = _int(path, f"{key}.seed", item.get("seed", spec.seeds[0]), 0, 2**31 - 1)
        err = item.get("soc_error", spec.soc_errors[0])
        err = None if err is None else _number(path, f"{key}.soc_error", err, -1.0, 1.0)
        amb = _number(path, f"{key}.ambient_c", item.get("ambient_c", spec.ambient_c[0]),
                      -40.0, 80.0)
        out.append(make(by_scenario[sc], seed, by_name[fname], err, amb))
    keys = [r.key for r in out]
    if len(set(keys)) != len(keys):
        raise SpecError(path, "runs", "the same run is listed twice")
    return out
