"""``bms monitor`` as a command: the --json pass-through is the stream byte for byte, --once
prints the frame of monitor_view, the viewer cannot write to the BMS, every failure is one line
with exit 5 (docs/errors.md, rows ``monitor-*``), and end to end against a real ``bms run``
(sim clock, four emulated boards): plain frames on a pipe, rich in place on a real pty, and the
BMS stopping under a watching viewer."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bms.app.cli import main as bms_main
from bms.app.errors import ExitCode
from bms.app.monitor_view import frame, plain
from bms.monitor import MonitorServer

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"


def _snapshot(t: float) -> dict[str, Any]:
    return {"time_s": t, "state": "CLOSED", "outputs": 3, "current_a": -5.0,
            "charge_limit_a": 10.0, "discharge_limit_a": 15.0, "active_faults": [],
            "latched_faults": ["CELL_LEAK"],
            "stacks": [{"name": f"stack-{k + 1}", "lost": False,
                        "cell_voltage_v": [3.7 + 0.001 * i for i in range(23)],
                        "soc": [0.5] * 23, "soc_sigma": [0.01] * 23,
                        "cell_temperature_c": [25.0 + 0.1 * i for i in range(23)],
                        "leak_a": [0.001] * 23, "leak_flag": [0] * 23,
                        "temperature_c": [25.0] * 6, "load_cell_kpa": [1200.0, float("nan")],
                        "load_cell_imbalance_kpa": 40.0, "pressure_kpa": 1200.0,
                        "pressure_expected_kpa": 1210.0, "balance_mask": 5}
                       for k in range(4)]}


def _bms(*args: str, **kw: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bms", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, **kw)


def _call(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = bms_main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str, says: str) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err and 1 <= len(lines) <= 2, err
    assert lines[0].startswith("bms monitor: ") and says in lines[0], err
    assert len(lines) == 1 or lines[1].startswith("  hint: "), err


def _wait_viewers(server: MonitorServer, n: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while server.n_viewers < n or not server.poll_viewers():
        assert time.monotonic() < deadline, "the viewer did not connect"
        time.sleep(0.01)
        server.poll_viewers()


def test_json_passes_the_stream_through_byte_for_byte(tmp_path: Path) -> None:
    server = MonitorServer(tmp_path / "bms.sock")
    recorder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    recorder.connect(str(server.path))
    proc = _bms("monitor", str(server.path), "--json", "--count", "40")
    try:
        _wait_viewers(server, 2)
        recorder.settimeout(0.01)
        data = b""
        k = 0
        # Each publish also sends what an earlier one left queued: publish until the recorder
        # has had 60 lines (the viewer stops after 40).
        while data.count(b"\n") < 60:
            assert k < 10000
            snap = _snapshot(0.1 * k)
            snap["current_a"] = float("nan") if k % 7 == 0 else -5.0 - 0.01 * k
            server.publish(snap)
            k += 1
            with contextlib.suppress(TimeoutError):
                data += recorder.recv(1 << 20)
        out, err = proc.communicate(timeout=60)
    finally:
        recorder.close()
        server.close()
    assert proc.returncode == 0, err
    first_40 = b"".join(line + b"\n" for line in data.split(b"\n")[:40])
    assert out == first_40
    assert json.loads(out.splitlines()[7])["current_a"] is None  # strict JSON (NaN -> null)


@contextlib.contextmanager
def _raw_bms(tmp_path: Path, send: bytes | None, hold_s: float = 30.0
             ) -> Iterator[dict[str, Any]]:
    """A socket that accepts one viewer, records what the viewer sent before ``send``, sends
    ``send`` (None: nothing) and keeps the connection open for ``hold_s``."""
    path = tmp_path / "raw.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    seen: dict[str, Any] = {"path": str(path)}

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5.0)
        try:
            # Before anything is sent the viewer waits for data; its sending side must
            # already be shut: an immediate end of file, no byte.
            seen["from_viewer"] = conn.recv(4096)
            if send is not None:
                conn.sendall(send)
            time.sleep(hold_s)
        except OSError as exc:
            seen["error"] = exc
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        listener.close()


def test_the_viewer_cannot_write_and_once_prints_the_frame(tmp_path: Path, capsys) -> None:
    snap = _snapshot(12.3)
    line = json.dumps(snap, allow_nan=True).replace("NaN", "null").encode() + b"\n"
    with _raw_bms(tmp_path, line, hold_s=0.0) as seen:
        code, out, err = _call(["monitor", seen["path"], "--once", "--size", "80x24"], capsys)
    assert code == 0, err
    assert seen["from_viewer"] == b""
    assert out == plain(frame(json.loads(line), 80, 24)[0]) + "\n"
    assert "stack-4" in out and "latched: CELL_LEAK" in out


MONITOR_ROWS = {  # id -> (what the first line says, exit code): docs/errors.md has each
    "monitor-no-bms": ("no BMS is running there (no such socket)", ExitCode.IO),
    "monitor-not-a-socket": ("not a socket", ExitCode.IO),
    "monitor-stale-socket": ("no BMS is running there (connection refused", ExitCode.IO),
    "monitor-silent": ("no snapshot for 0.5 s", ExitCode.IO),
    "monitor-not-a-stream": ("not a BMS monitor stream", ExitCode.IO),
    "monitor-bms-stopped": ("the BMS closed the connection after", ExitCode.IO),
    "monitor-rich-missing": ("--rich: the rich package is not installed", ExitCode.USAGE),
    "monitor-size": ("argument --size: '10x5': at least 40x10", ExitCode.USAGE),
}


def test_monitor_rows_are_in_the_errors_table() -> None:
    table = {}
    for text in DOC.read_text().splitlines():
        cells = [c.strip() for c in text.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`"):
            table[cells[0].strip("`")] = cells
    for row, (says, code) in MONITOR_ROWS.items():
        assert row in table, row
        assert table[row][-1] == str(int(code)), row
        assert says in table[row][-2], row


def test_no_bms_not_a_socket_stale_socket(tmp_path: Path, capsys) -> None:
    code, _, err = _call(["monitor", str(tmp_path / "none.sock")], capsys)
    _one_line(err, MONITOR_ROWS["monitor-no-bms"][0])
    assert code == ExitCode.IO
    (tmp_path / "a-file").write_text("x")
    code, _, err = _call(["monitor", str(tmp_path / "a-file")], capsys)
    _one_line(err, MONITOR_ROWS["monitor-not-a-socket"][0])
    assert code == ExitCode.IO
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))  # a run that ended without removing it
    stale.close()
    code, _, err = _call(["monitor", str(tmp_path / "stale.sock")], capsys)
    _one_line(err, MONITOR_ROWS["monitor-stale-socket"][0])
    assert code == ExitCode.IO
    code, _, err = _call(["monitor", str(tmp_path / "none.sock"), "--size", "10x5"], capsys)
    _one_line(err, MONITOR_ROWS["monitor-size"][0])
    assert code == ExitCode.USAGE


def test_a_silent_bms_and_a_socket_that_is_not_a_bms(tmp_path: Path, capsys) -> None:
    with _raw_bms(tmp_path, None, hold_s=5.0) as seen:
        start = time.monotonic()
        code, _, err = _call(["monitor", seen["path"], "--timeout", "0.5"], capsys)
    _one_line(err, MONITOR_ROWS["monitor-silent"][0])
    assert code == ExitCode.IO and time.monotonic() - start < 4.0
    (tmp_path / "raw.sock").unlink()
    with _raw_bms(tmp_path, b"220 mail.example ESMTP\r\n", hold_s=5.0) as seen:
        code, _, err = _call(["monitor", seen["path"], "--plain"], capsys)
    _one_line(err, MONITOR_ROWS["monitor-not-a-stream"][0])
    assert code == ExitCode.IO


def test_without_rich_the_plain_view_and_a_clear_line_for_rich(tmp_path: Path) -> None:
    """rich made unimportable (a package of that name that raises ImportError first on the
    path): --rich is refused in one line; the plain view works without it."""
    fake = tmp_path / "norich" / "rich"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('rich is not installed (test)')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "norich"))
    server = MonitorServer(tmp_path / "bms.sock")
    try:
        proc = _bms("monitor", str(server.path), "--rich", "--once", env=env)
        out, err = proc.communicate(timeout=60)
        _one_line(err.decode(), MONITOR_ROWS["monitor-rich-missing"][0])
        assert proc.returncode == ExitCode.USAGE and "pip install" in err.decode()
        proc = _bms("monitor", str(server.path), "--once", env=env)
        _wait_viewers(server, 1)
        server.publish(_snapshot(3.0))
        out, err = proc.communicate(timeout=60)
    finally:
        server.close()
    assert proc.returncode == 0, err
    assert out.decode().startswith("t 3.0 s  CLOSED") and "stack-4" in out.decode()


# ------------------------------------------------------------------ a real bms run


def _pty_monitor(sock: str) -> tuple[subprocess.Popen, int]:
    """``bms monitor`` on a real 80 x 24 pseudo-terminal (its stdout is a tty: rich, live)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([sys.executable, "-m", "bms", "monitor", sock], cwd=ROOT,
                            stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    return proc, master


def _read_pty(master: int, until: bytes, timeout_s: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout_s
    while until not in data and time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: the process has ended
                break
            if not chunk:
                break
            data += chunk
    return data


def _read_to_exit(proc: subprocess.Popen, master: int, timeout_s: float) -> tuple[int, bytes]:
    """Read the pty as a terminal does until the process has ended (a pty nobody reads blocks
    its writer); its exit code and everything it wrote."""
    data = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: the last writer has closed the pty
                chunk = b""
            data += chunk
            if chunk:
                continue
        if proc.poll() is not None:
            break
    return proc.wait(5), data


def test_end_to_end_against_a_running_bms(tmp_path: Path) -> None:
    sock = tmp_path / "bms.sock"
    # The sim clock: a snapshot per tick, thousands a second; the viewers draw the newest.
    run = _bms("run", "--pack", "ssb-4x23", "--duration", "100000", "--quiet",
               "--log", str(tmp_path / "log"), "--monitor-socket", str(sock))
    watchers: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert run.poll() is None and time.monotonic() < deadline, run.stderr
            time.sleep(0.05)
        # One frame on a pipe: plain text, 80 x 24 at most, every stack.
        once = _bms("monitor", str(sock), "--once", "--size", "80x24")
        out, err = once.communicate(timeout=60)
        assert once.returncode == 0, err
        lines = out.decode().rstrip("\n").split("\n")
        assert len(lines) <= 24 and max(map(len, lines)) <= 80
        for k in range(1, 5):
            assert any(line.startswith(f"stack-{k} ") for line in lines)
        # The raw stream: snapshots of the 4 x 23 cells with the per-cell flags.
        raw = _bms("monitor", str(sock), "--json", "--count", "3")
        out, err = raw.communicate(timeout=60)
        assert raw.returncode == 0, err
        snaps = [json.loads(x) for x in out.splitlines()]
        assert len(snaps) == 3 and snaps[0]["time_s"] < snaps[2]["time_s"]
        for st in snaps[-1]["stacks"]:
            assert len(st["cell_voltage_v"]) == len(st["leak_flag"]) == 23
            assert len(st["load_cell_kpa"]) == 4
        # rich in place on a real pty; SIGTERM gives the terminal back (exit 0).
        tty, master = _pty_monitor(str(sock))
        screen = _read_pty(master, b"stack-4", 30)
        assert b"\x1b[?1049h" in screen and b"stack-4" in screen  # the alternate screen
        assert b"3sig%" not in screen
        # The terminal grows to 160 x 50: the next frames have the per-cell bounds.
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        tty.send_signal(signal.SIGWINCH)
        assert b"3sig%" in _read_pty(master, b"3sig%", 30)
        tty.send_signal(signal.SIGTERM)
        code, tail = _read_to_exit(tty, master, 30)
        assert code == 0 and b"\x1b[?1049l" in tail  # the terminal given back
        os.close(master)
        # Viewers watching when the BMS stops: one line each, exit 5.
        watchers = [_bms("monitor", str(sock), "--plain", "--size", "80x24"),
                    _bms("monitor", str(sock), "--json")]
        tty, master = _pty_monitor(str(sock))
        watchers.append(tty)
        _read_pty(master, b"stack-4", 30)
        # Each viewer connected (its first output read) before the BMS stops: on a loaded
        # machine a viewer started late finds no socket (another row: monitor-no-socket).
        head0 = _read_pty(watchers[0].stdout.fileno(), b"stack-4", 30)
        head1 = _read_pty(watchers[1].stdout.fileno(), b"\n", 30)
        assert b"stack-4" in head0 and b"\n" in head1
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)
        out, err = watchers[0].communicate(timeout=30)
        out = head0 + out
        _one_line(err.decode(), MONITOR_ROWS["monitor-bms-stopped"][0])
        assert watchers[0].returncode == ExitCode.IO and b"stack-4" in out
        out, err = watchers[1].communicate(timeout=30)
        out = head1 + out
        _one_line(err.decode(), MONITOR_ROWS["monitor-bms-stopped"][0])
        n_lines = out.count(b"\n")  # every line the BMS sent, and the count says so
        assert watchers[1].returncode == ExitCode.IO and n_lines > 0
        assert f"after {n_lines} snapshot(s)" in err.decode()
        # (unread, its pipe fills and the BMS drops it as too slow, maybe mid-line: the
        # complete lines are JSON)
        assert all(json.loads(line)["stacks"] for line in out.split(b"\n")[:-1][-3:])
        code, tail = _read_to_exit(tty, master, 30)
        assert code == ExitCode.IO
        os.close(master)
        assert b"\x1b[?1049l" in tail and b"the BMS closed the connection" in tail
    finally:
        for proc in [run, *watchers]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)


@pytest.mark.parametrize("argv", [["--count", "-1"], ["--interval", "nan"],
                                  ["--timeout", "0"], ["--json", "--plain"]])
def test_bad_options_are_usage_errors(argv: list[str], capsys) -> None:
    code, _, err = _call(["monitor", "/nonexistent.sock", *argv], capsys)
    assert code == ExitCode.USAGE and "Traceback" not in err
    assert err.startswith("bms monitor: ")
