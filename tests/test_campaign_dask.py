"""bms campaign: the same small campaign (2 seeds x 2 faults x 1 scenario) on the local pool
and on a local Dask cluster (2 worker processes on 127.0.0.1, started and shut down here)
gives identical result tables (all but the wall time); the cluster listens on loopback only."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bms.app.campaign.engine import run_campaign
from bms.app.campaign.executors import DaskExecutor, LocalPool
from bms.app.campaign.report import write_table
from bms.app.campaign.spec import load_spec

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

SPEC = """\
schema: ssb-bms/campaign/1
name: two-by-two
duration_s: 30
timeout_s: 120
scenarios: [udds]
seeds: [1, 2]
faults:
  - none
  - {name: loadcell-open, fault: LOADCELL_OPEN, target: 1, at_s: 10, bound_s: 0.2}
"""


def _listening(pids: set[int]) -> list[str]:
    return [c.laddr.ip for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


def test_local_pool_and_dask_give_identical_tables(tmp_path: Path) -> None:
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(SPEC, encoding="utf-8")
    spec = load_spec(spec_path)
    tables = []
    for name in ("local", "dask"):
        out = tmp_path / name
        if name == "local":
            ex = LocalPool(2)
        else:
            ex = DaskExecutor(None, 2)
            me = psutil.Process()
            pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
            addresses = _listening(pids)
            assert addresses and set(addresses) == {"127.0.0.1"}, addresses
            assert ex.workers == 2
        try:
            outcome = run_campaign(spec, out, ex, progress=None)
        finally:
            ex.shutdown()
        assert outcome.ran == 4
        write_table(outcome.rows, out)
        tables.append(pq.read_table(out / "results.parquet"))
    local, dask = tables
    assert local.drop(["wall_s"]).equals(dask.drop(["wall_s"]))
    rows = local.to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 4
    faulted = [r for r in rows if r["fault"] == "loadcell-open"]
    assert [r["detected_by"] for r in faulted] == ["LOAD_CELL_OPEN"] * 2
    assert all(r["latency_s"] <= 0.2 for r in faulted)
    assert len({r["plant_seed"] for r in rows}) == 2
