"""bms export (issue 12 item 2): a real run's log (bms run on four emulated ssb-4x23 boards over
ptys, sim clock) to MF4, Parquet and CSV, read back with asammdf and pyarrow and compared with
the CSV itself; a run killed mid-row, a run still being written, NaN for lost data, the chunked
(bounded-memory) writing, and every column's description. The error rows are in
tests/test_cli_errors.py (docs/errors.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

asammdf = pytest.importorskip("asammdf")
pq = pytest.importorskip("pyarrow.parquet")

import bms.app.export.parquet as parquet_export  # noqa: E402
from bms.app.export import export_run, main  # noqa: E402
from bms.app.export.channels import STATE_TEXTS, describe, is_described, unit_of  # noqa: E402
from bms.app.export.reader import TickLines  # noqa: E402
from bms.runlog import EVENTS, TICKS, RunLog, load_events, load_ticks, standard_columns  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DURATION_S = 6.0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short real run: the controller against four emulated boards (ssb-4x23, udds drive
    cycle, sim clock), 438 columns; ~2 s."""
    log = tmp_path_factory.mktemp("export") / "run"
    res = subprocess.run(
        [sys.executable, "-m", "bms", "run", "--pack", "ssb-4x23", "--scenario", "udds",
         "--duration", str(DURATION_S), "--log", str(log), "--no-monitor", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return log


def _copy(run: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in (TICKS, EVENTS, "summary.json"):
        shutil.copy(run / name, dst / name)
    return dst


def test_mf4_reads_back_with_units_comments_states_and_events(run_dir: Path,
                                                              tmp_path: Path) -> None:
    ticks = load_ticks(run_dir)
    out = tmp_path / "run.mf4"
    res = export_run(run_dir, "mf4", out, chunk_rows=7)  # several chunks: append + extend
    assert res.files == [out] and res.info.rows == len(ticks["time_s"]) > 50
    assert res.channels == len(ticks) == 438
    mdf = asammdf.MDF(out)
    try:
        for name in ("cell07_voltage_v", "cell92_soc", "current_s3_a", "t24_c",
                     "pressure_lc16_kpa", "pressure_expected_s2_kpa", "tick_duration_s",
                     "balance_mask_s4", "faults_active"):
            sig = mdf.get(name)
            np.testing.assert_array_equal(sig.timestamps, ticks["time_s"])
            np.testing.assert_array_equal(sig.samples.astype(float), ticks[name])
            assert sig.unit == unit_of(name) and sig.comment == describe(name).comment
        v = mdf.get("cell07_voltage_v")
        assert v.unit == "V" and v.comment == "cell 07 terminal voltage measured by the board"
        assert mdf.get("t24_c").unit == "°C"
        # the state code reads as its name (value-to-text), the raw value as the log's code
        raw = mdf.get("state", raw=True).samples
        np.testing.assert_array_equal(raw, ticks["state"])
        text = mdf.get("state").samples
        assert [t.decode() for t in text] == [STATE_TEXTS[int(c)] for c in raw]
        assert b"CLOSED" in set(text)
        assert mdf.groups[0].channels[0].name == "time_s"
        # the events: one text sample per events.jsonl line, at its time
        events = load_events(run_dir)
        assert len(events) > 7  # the events too came in several chunks
        ev = mdf.get("event")
        assert [json.loads(s) for s in ev.samples] == events
        assert list(ev.timestamps[1:]) == [e["time_s"] for e in events[1:]]
        assert [s.decode() for s in mdf.get("event_type").samples] == [e["type"]
                                                                        for e in events]
        header = mdf.header.comment
        for prop in ('<e name="pack">ssb-4x23</e>', '<e name="clock">sim</e>',
                     '<e name="tick_s">0.1</e>', '<e name="ports">/dev/pts/',
                     f'<e name="rows">{res.info.rows}</e>', '<e name="run_finished">yes</e>'):
            assert prop in header, (prop, header)
        assert "bms export" in mdf.file_history[-1].comment
        assert [a.file_name for a in mdf.attachments] == ["summary.json"]
    finally:
        mdf.close()


def test_parquet_schema_units_values_row_groups_and_events(run_dir: Path, tmp_path: Path,
                                                           monkeypatch) -> None:
    ticks = load_ticks(run_dir)
    out = tmp_path / "r.parquet"
    # row groups of 48 rows' values (438 columns), read in chunks of 16: 3 chunks per group
    monkeypatch.setattr(parquet_export, "ROW_GROUP_BYTES", 48 * 438 * 8)
    res = export_run(run_dir, "parquet", out, chunk_rows=16)
    assert res.files == [out, tmp_path / "r.events.parquet"]
    f = pq.ParquetFile(out)
    schema = f.schema_arrow
    assert schema.names == list(ticks)
    table = f.read()
    for name in schema.names:
        meta = schema.field(name).metadata
        assert meta[b"unit"].decode() == unit_of(name), name
        assert meta[b"comment"].decode() == describe(name).comment
        col = table.column(name).to_numpy(zero_copy_only=False).astype(float)
        # the CSV's values to its last decimal (pyarrow's parse is correctly rounded, as
        # Python's float() in load_ticks, so they are equal outright)
        np.testing.assert_array_equal(col, ticks[name])
    assert str(schema.field("state").type) == "uint8"
    assert json.loads(schema.field("state").metadata[b"value_texts"])["2"] == "CLOSED"
    run_meta = json.loads(schema.metadata[b"ssb_bms.run"])
    assert run_meta["pack"] == "ssb-4x23" and run_meta["clock"] == "sim"
    export = json.loads(f.metadata.metadata[b"ssb_bms.export"])
    assert export["rows"] == str(len(ticks["time_s"]))
    # buffered chunks make the row groups: 48 rows each, the rest in the last
    sizes = [f.metadata.row_group(k).num_rows for k in range(f.metadata.num_row_groups)]
    n = len(ticks["time_s"])
    assert sizes == [48] * (n // 48) + ([n % 48] if n % 48 else [])
    events = pq.read_table(tmp_path / "r.events.parquet").to_pylist()
    assert [json.loads(e["event"]) for e in events] == load_events(run_dir)
    assert [e["type"] for e in events] == [e["type"] for e in load_events(run_dir)]


def test_csv_copies_the_fields_of_the_selected_channels(run_dir: Path, tmp_path: Path
                                                        ) -> None:
    out = tmp_path / "v.csv"
    assert main([str(run_dir), "--to", "csv", "-o", str(out), "--channels",
                 "cell0?_voltage_v", "state"]) == 0
    src = load_ticks(run_dir)
    got = load_ticks(out)  # the export reads as a ticks.csv
    assert list(got) == ["time_s", "state"] + [f"cell0{i}_voltage_v" for i in range(1, 10)]
    for name in got:
        np.testing.assert_array_equal(got[name], src[name])
    channels = (tmp_path / "v.channels.csv").read_text().splitlines()
    assert channels[0] == "name,unit,comment,value_texts" and channels[3].startswith(
        "cell01_voltage_v,V,cell 01 terminal voltage")
    assert (tmp_path / "v.events.jsonl").read_bytes() == (run_dir / EVENTS).read_bytes()


def test_a_run_killed_mid_row_exports_its_complete_lines(run_dir: Path, tmp_path: Path,
                                                         capsys) -> None:
    run = _copy(run_dir, tmp_path / "killed")
    data = (run / TICKS).read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 200  # 200 bytes into a row
    (run / TICKS).write_bytes(data[:cut])
    (run / "summary.json").unlink()  # killed before its first minute: no summary yet
    complete = data[:cut].count(b"\n") - 1
    assert main([str(run), "--to", "parquet"]) == 0
    out = capsys.readouterr().out
    assert f"{complete} rows x 438 channels" in out
    assert "skipped the last line of ticks.csv: incomplete" in out
    assert "no final summary.json" in out
    t = pq.read_table(run / "run.parquet")
    assert t.num_rows == complete
    np.testing.assert_array_equal(t.column("time_s").to_numpy(),
                                  load_ticks(run_dir)["time_s"][:complete])
    assert not list(run.glob("*.part"))


def test_a_run_still_being_written_exports_what_was_there_at_open(run_dir: Path,
                                                                  tmp_path: Path) -> None:
    run = _copy(run_dir, tmp_path / "live")
    data = (run / TICKS).read_bytes()
    lines = data.splitlines(keepends=True)
    (run / TICKS).write_bytes(b"".join(lines[:21]) + lines[21][:50])  # a row half written
    with TickLines(run / TICKS, chunk_rows=8) as reader:
        with open(run / TICKS, "ab") as fh:  # the run goes on writing after the open
            fh.write(lines[21][50:] + b"".join(lines[22:40]))
        got = [line for _nos, chunk in reader.chunks() for line in chunk]
        assert got == lines[1:21]
        assert reader.stats.torn == 1 and reader.stats.malformed == 0


def test_nan_stays_nan_and_a_nan_code_is_an_invalid_sample(run_dir: Path,
                                                           tmp_path: Path) -> None:
    run = _copy(run_dir, tmp_path / "lost")
    lines = (run / TICKS).read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    lost = [header.index(f"cell{i:02d}_voltage_v") for i in range(24, 47)]  # stack 2's cells
    k_mask = header.index("balance_mask_s2")
    for r in (5, 6, 7):
        fields = lines[r].rstrip("\n").split(",")
        for k in lost:
            fields[k] = "nan"
        fields[k_mask] = "nan"
        lines[r] = ",".join(fields) + "\n"
    (run / TICKS).write_text("".join(lines))
    some = ["cell*_voltage_v", "balance_mask_s2"]  # the columns that matter here: faster
    export_run(run, "mf4", run / "run.mf4", some, chunk_rows=5)  # the NaN rows in 2 chunks
    export_run(run, "parquet", run / "run.parquet", some, chunk_rows=5)
    mdf = asammdf.MDF(run / "run.mf4")
    try:
        v = mdf.get("cell30_voltage_v").samples
        assert np.isnan(v[4:7]).all() and np.isfinite(v[:4]).all() and np.isfinite(v[7:]).all()
        mask = mdf.get("balance_mask_s2")  # invalid samples are left out by asammdf's get
        assert len(mask.samples) == len(v) - 3 and 0.4 not in mask.timestamps
        assert mdf.get("balance_mask_s2", ignore_invalidation_bits=True).invalidation_bits[
            4:7].all()
    finally:
        mdf.close()
    t = pq.read_table(run / "run.parquet")
    assert np.isnan(t.column("cell30_voltage_v").to_numpy()[4:7]).all()
    assert t.column("balance_mask_s2").null_count == 3


def test_malformed_lines_are_skipped_and_named(run_dir: Path, tmp_path: Path,
                                               capsys) -> None:
    run = _copy(run_dir, tmp_path / "bad")
    lines = (run / TICKS).read_text().splitlines(keepends=True)
    lines[3] = "1,2,3\n"  # a wrong number of fields (line 4 of the file)
    lines[10] = lines[10].replace(",", ",x", 1)  # a field that is not a number (line 11)
    (run / TICKS).write_text("".join(lines))
    assert main([str(run), "--to", "mf4", "--chunk-rows", "4"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 malformed lines of ticks.csv" in out and "line 4, 11" in out
    mdf = asammdf.MDF(run / "run.mf4")
    try:
        assert len(mdf.get("current_a").samples) == len(lines) - 3
    finally:
        mdf.close()


def test_mf4_needs_a_channel_besides_its_master(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert main([str(run_dir), "--to", "mf4", "--channels", "time_s", "-o",
                 str(tmp_path / "t.mf4")]) == 2
    assert "selects only time_s, the MF4 file's master" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["mf4", "parquet"])
def test_writers_get_the_run_in_chunks_never_whole(fmt: str, tmp_path: Path,
                                                   monkeypatch) -> None:
    """A generated 1,000-row log exported with 128-row chunks: each writer call gets at most
    128 rows (the real writers, wrapped only to count), and the output holds every row."""
    from bms.app.export.mf4 import Mf4Writer
    from bms.app.export.parquet import ParquetWriter

    run = tmp_path / "gen"
    log = RunLog(run, standard_columns(23, 6, 4))
    rng = np.random.default_rng(5)
    for k in range(1000):
        row = rng.uniform(0.0, 4.0, len(log.columns))
        row[0], row[1] = 0.1 * k, k % 6  # time_s, state
        log.row_array(row)
    log.close()
    cls = Mf4Writer if fmt == "mf4" else ParquetWriter
    sizes: list[int] = []
    real_write = cls.write

    def counting_write(self, chunk):  # noqa: ANN001, ANN202 - the writer's own signature
        sizes.append(chunk.rows)
        return real_write(self, chunk)

    monkeypatch.setattr(cls, "write", counting_write)
    res = export_run(run, fmt, tmp_path / f"gen.{fmt}", chunk_rows=128)
    assert sizes == [128] * 7 + [104] and res.info.rows == 1000
    ticks = load_ticks(run)
    if fmt == "mf4":
        mdf = asammdf.MDF(tmp_path / "gen.mf4")
        try:
            np.testing.assert_array_equal(mdf.get("t06_c").samples, ticks["t06_c"])
        finally:
            mdf.close()
    else:
        np.testing.assert_array_equal(
            pq.read_table(tmp_path / "gen.parquet").column("t06_c").to_numpy(), ticks["t06_c"])


def test_reader_chunks_are_never_larger_than_the_chunk_size(run_dir: Path) -> None:
    n = len(load_ticks(run_dir)["time_s"])
    with TickLines(run_dir / TICKS, chunk_rows=7) as reader:
        sizes = [len(chunk) for _nos, chunk in reader.chunks()]
    assert max(sizes) == 7 and sum(sizes) == n and len(sizes) == -(-n // 7)


@pytest.mark.parametrize("kw", [dict(n_cells=23, n_thermistors=6, n_load_cells=4),
                                dict(n_cells=92, n_thermistors=24, n_load_cells=16, n_stacks=4),
                                dict(n_cells=120, n_thermistors=8, n_load_cells=4, n_stacks=2)],
                         ids=["ssb-23", "ssb-4x23", "120-cells"])
def test_every_standard_column_has_a_description_and_a_unit(kw: dict) -> None:
    for name in standard_columns(**kw):
        ch = describe(name)
        assert is_described(name), name
        assert "no description" not in ch.comment
    assert describe("cell007_soc_sigma").unit == "" and "cell 007" in describe(
        "cell007_soc_sigma").comment
    assert describe("pressure_residual_s3_kpa").comment.startswith("stack 3 ")
    assert describe("pressure_residual_kpa").comment.startswith("stack measured")
    assert describe("current_s2_a").unit == "A" and describe("tick_duration_s").unit == "s"
    assert describe("mystery_kpa") == describe("mystery_kpa") and describe(
        "mystery_kpa").unit == "kPa"
