"""bms plot: a PNG from a real RunLog, decoded back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bms.app.plot import main, plot_run
from bms.faults import FaultCode, FaultTable, Severity
from bms.runlog import RunLog, load_ticks, standard_columns


def _make_log(directory: Path, n: int = 300) -> Path:
    cols = standard_columns(23, 6, 4)
    log = RunLog(directory, cols, meta={"pack": "ssb-23"})
    table = FaultTable()
    rng = np.random.default_rng(3)
    for k in range(n):
        t = k * 0.1
        row = dict.fromkeys(cols, 0.0)
        row.update(time_s=t, state=2 if k < 200 else 4, current_a=5.0 * np.sin(t / 3),
                   charge_limit_a=10.0, discharge_limit_a=15.0, outputs=3, balance_mask=0)
        for i in range(23):
            row[f"cell{i + 1:02d}_voltage_v"] = 3.7 + 0.001 * i + 0.002 * rng.normal()
            row[f"cell{i + 1:02d}_soc"] = 0.5 - 0.0005 * k + 0.001 * i
            row[f"cell{i + 1:02d}_soc_sigma"] = 0.05 * np.exp(-k / 100) + 0.005
        for j in range(6):
            row[f"t{j + 1:02d}_c"] = 25.0 + 0.01 * k + j
        for j in range(4):
            row[f"pressure_lc{j + 1:02d}_kpa"] = 1000.0 + j * 5 + rng.normal()
        row["pressure_expected_kpa"] = 1002.0
        if k == 150:
            table.raise_fault(FaultCode.CELL_OVERVOLTAGE, t, Severity.WARNING, 4.23, 0, 4)
        if k == 200:
            table.raise_fault(FaultCode.STACK_PRESSURE_LOW, t, Severity.FAULT, 590.0, 0)
        for ev in table.drain_events():
            log.event(ev)
        log.row(row)
    log.close({"faults": table.summary()})
    return directory


def _decode(png: Path) -> np.ndarray:
    import matplotlib.image

    assert png.stat().st_size > 0
    return matplotlib.image.imread(png)


def test_plot_run_writes_a_decodable_png(tmp_path: Path) -> None:
    run = _make_log(tmp_path / "run")
    out = plot_run(run, tmp_path / "run.png")
    img = _decode(out)
    assert img.ndim == 3 and img.shape[0] > 500 and img.shape[1] > 500
    # Not a blank canvas: the panels put ink on the page.
    assert float(img[..., :3].std()) > 0.05


def test_cli_main_default_and_explicit_output(tmp_path: Path, capsys) -> None:
    run = _make_log(tmp_path / "run", n=50)
    assert main([str(run), "-o", str(tmp_path / "x.png")]) == 0
    _decode(tmp_path / "x.png")
    assert main([str(run)]) == 0
    _decode(run / "run.png")
    assert str(run / "run.png") in capsys.readouterr().out


def test_cli_reports_a_missing_log(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nothing")]) == 5  # a file that cannot be read: I/O
    assert "bms plot:" in capsys.readouterr().err


def test_plot_with_minimal_columns(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "run", ["time_s", "current_a"])
    for k in range(10):
        log.row([k * 0.1, 1.0])
    log.close()
    _decode(plot_run(tmp_path / "run", tmp_path / "min.png"))


def test_plot_rejects_an_empty_log(tmp_path: Path) -> None:
    RunLog(tmp_path / "run", ["time_s"]).close()
    with pytest.raises(ValueError):
        plot_run(tmp_path / "run", tmp_path / "e.png")


def _fault(name: str, code: int, stack: int, cell: int | None) -> dict:
    return {"type": "fault", "event": "raise", "time_s": 1.0, "code": code, "name": name,
            "severity": "warning", "stack": stack, "cell": cell}


def test_cells_named_by_faults_and_the_extremes_are_marked(tmp_path: Path) -> None:
    """The voltage and SOC panels colour and label the cells the faults name (numbered from
    1 across the pack, as ticks.csv numbers them) and the lowest and highest cell; a thermistor
    fault's channel is not a cell. The figure draws with them."""
    from bms.app.plot import _marked_cells

    run = _make_log(tmp_path / "run", n=50)
    ticks = load_ticks(run)
    events = [_fault("CELL_LEAK", 114, 0, 7), _fault("THERMISTOR_OPEN", 203, 0, 2)]
    marked = _marked_cells(ticks, events)
    volts = {i: ticks[f"cell{i:02d}_voltage_v"] for i in range(1, 24)}
    lowest = min(volts, key=lambda i: volts[i].min())
    highest = max(volts, key=lambda i: volts[i].max())
    assert lowest <= 3 and highest >= 21  # 3.7 V + 1 mV per cell + 2 mV noise
    assert marked == {8: "CELL_LEAK", lowest: "lowest V", highest: "highest V"}
    # a pack of four stacks of 23 (the run's meta event names it): stack 2's cell 1 is cell 24
    meta = {"type": "meta", "pack": "ssb-4x23"}
    assert list(_marked_cells(ticks, [meta, _fault("CELL_UNDERVOLTAGE", 102, 1, 0)]))[0] == 24
    with (run / "events.jsonl").open("a") as fh:
        fh.write(json.dumps(events[0]) + "\n")
    _decode(plot_run(run, tmp_path / "marked.png"))
