"""``bms monitor``: the read-only viewer of a running BMS's monitor socket (bms/monitor.py).

The BMS writes one JSON snapshot per tick to every viewer (bms/runlog.py tick_snapshot). This
command connects and

- on a terminal, redraws every cell of every stack in place (rich.live; the layout is
  bms/app/monitor_view.py, the richest that fits the terminal, 80 x 24 at least for 92 cells);
- with ``--json``, passes the stream through byte for byte (one JSON line per snapshot) for
  other tools;
- on a pipe, or without rich (the optional ``monitor`` extra), prints the same frames as plain
  text.

Read-only by construction: right after connecting it shuts down its own sending side
(``shutdown(SHUT_WR)``), so nothing it does can reach the BMS, which in turn shuts down its
receiving side of every viewer and never reads one. When the BMS sends faster than a terminal
can draw (the sim clock: thousands of snapshots a second), only the newest complete line is
parsed and drawn; the others are read and dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bms.app.errors import OutputError, Parser, UsageError
from bms.app.monitor_view import frame, plain
from bms.monitor import default_socket_path

#: A line longer than this is not a snapshot (ssb-4x23's is about 14 kB): the socket is not a
#: BMS's monitor stream (or the stream is broken), said instead of buffering without end.
MAX_LINE_BYTES = 16 << 20
RECV_BYTES = 1 << 20
INSTALL_HINT = "pip install 'ssb-bms[monitor]' (rich), or use the plain view (--plain)"


def connect(path: str | Path) -> socket.socket:
    """A connection to the BMS at ``path`` whose sending side is already shut: this viewer
    cannot write to the BMS. Raises :class:`OutputError` (exit 5) with the reason."""
    path = Path(path)
    hint = ("start the BMS with `bms run` (it serves the socket unless --no-monitor), or give "
            "the socket that `bms run` printed: bms monitor PATH")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise OutputError(f"{path}: no BMS is running there (no such socket)", hint) from None
    except OSError as exc:
        raise OutputError(f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(mode):
        raise OutputError(f"{path}: not a socket (a BMS's monitor socket is made by bms run)",
                          hint)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        sock.shutdown(socket.SHUT_WR)
    except ConnectionRefusedError:
        sock.close()
        raise OutputError(f"{path}: no BMS is running there (connection refused: the socket of "
                          "a run that has ended)", hint) from None
    except PermissionError:
        sock.close()
        raise OutputError(f"{path}: permission denied (a BMS's monitor socket is its owner's "
                          "only)", "run bms monitor as the user who runs the BMS") from None
    except OSError as exc:
        sock.close()
        raise OutputError(f"{path}: cannot connect: {exc.strerror or exc}") from None
    return sock


class Stream:
    """The BMS's stream on a connected socket: raw chunks, or the newest complete line."""

    def __init__(self, sock: socket.socket, path: str | Path, timeout_s: float) -> None:
        self.sock = sock
        self.path = path
        self.timeout_s = timeout_s
        self.lines = 0           # complete lines received
        self.last_rx = time.monotonic()
        self._tail = b""

    def recv(self, wait_s: float) -> bytes | None:
        """Up to RECV_BYTES (None: nothing within ``wait_s``). Raises OutputError when the BMS
        closes the connection or has sent nothing for ``timeout_s``."""
        self.sock.settimeout(max(wait_s, 0.001))
        try:
            chunk = self.sock.recv(RECV_BYTES)
        except TimeoutError:
            chunk = None
        except OSError as exc:
            raise OutputError(f"{self.path}: connection to the BMS lost: "
                              f"{exc.strerror or exc}") from None
        now = time.monotonic()
        if chunk == b"":
            raise OutputError(f"{self.path}: the BMS closed the connection after "
                              f"{self.lines} snapshot(s): it stopped (or dropped this viewer "
                              "as too slow)")
        if chunk is None:
            if now - self.last_rx > self.timeout_s:
                raise OutputError(f"{self.path}: no snapshot for {self.timeout_s:g} s: the BMS "
                                  "is connected but silent (stopped ticking, or paused)",
                                  "--timeout S waits longer")
            return None
        self.last_rx = now
        self.lines += chunk.count(b"\n")
        return chunk

    def newest(self, chunk: bytes) -> bytes | None:
        """Feed ``chunk``; the newest complete line it finished (None: none)."""
        data = self._tail + chunk
        end = data.rfind(b"\n")
        if end < 0:
            self._tail = data
            if len(data) > MAX_LINE_BYTES:
                raise OutputError(f"{self.path}: not a BMS monitor stream (no line end in "
                                  f"{len(data)} bytes)")
            return None
        start = data.rfind(b"\n", 0, end) + 1
        self._tail = data[end + 1:]
        return data[start:end]


def parse(line: bytes, path: str | Path) -> dict[str, Any]:
    try:
        snap = json.loads(line)
    except ValueError:
        snap = None
    if not isinstance(snap, dict):
        raise OutputError(f"{path}: not a BMS monitor stream (a line that is not a JSON "
                          f"object: {line[:40]!r})")
    return snap


def read_snapshots(path: str | Path, timeout_s: float | None = None) -> Iterator[dict]:
    """Yield every snapshot (dicts) from a running BMS until it closes the socket."""
    sock = connect(path)
    sock.settimeout(timeout_s)
    buffer = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line:
                    yield json.loads(line)
    finally:
        sock.close()


# ------------------------------------------------------------------ the compact one-liner


def _f(value: Any) -> float:
    """A snapshot number for display (strict JSON carries NaN as null)."""
    return float("nan") if value is None else float(value)


def render(snapshot: dict[str, Any]) -> str:
    """A compact text view of one snapshot: a line per stack (``bms run`` and ``bms demo``'s
    own live view on their stdout)."""
    active = list(snapshot.get("active_faults") or [])
    latched = [f for f in snapshot.get("latched_faults") or [] if f not in active]
    lines = [
        f"t={_f(snapshot.get('time_s', 0.0)):9.1f} s  state={snapshot.get('state', '?'):<9} "
        f"I={_f(snapshot.get('current_a')):+7.2f} A  "
        f"limits +{_f(snapshot.get('charge_limit_a')):.1f}/"
        f"-{_f(snapshot.get('discharge_limit_a')):.1f} A  "
        f"faults={','.join(active) or '-'}"
        # A latched fault that is no longer active still holds the pack in FAULT: say which.
        + (f" latched={','.join(latched)}" if latched else "")
    ]
    for stack in snapshot.get("stacks", []):
        v = [_f(x) for x in stack.get("cell_voltage_v", [])]
        soc = [_f(x) for x in stack.get("soc", [])] or [float("nan")]
        if v:
            temps = [_f(x) for x in stack.get("temperature_c", [])] or [float("nan")]
            sigma = [_f(x) for x in stack.get("soc_sigma", [])] or [0.0]
            lines.append(
                f"  {stack.get('name', '?'):<8} V {min(v):.3f}..{max(v):.3f}  "
                f"SOC {100 * min(soc):5.1f}..{100 * max(soc):5.1f} % "
                f"(+/-{300 * max(sigma):.1f} %)  "
                f"T {max(temps):5.1f} C  "
                f"p {_f(stack.get('pressure_kpa')):6.0f} kPa "
                f"(exp {_f(stack.get('pressure_expected_kpa')):6.0f})  "
                f"bal {stack.get('balance_mask', 0):06x}"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------ outputs


def _size(text: str) -> tuple[int, int]:
    """argparse type: WIDTHxHEIGHT, at least 40x10."""
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (e.g. 80x24)") from None
    if w < 40 or h < 10:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 40x10")
    return w, h


def _seconds(text: str, minimum: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value >= minimum):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds "
                                         f">= {minimum:g}")
    return value


def _load_rich() -> Any:
    """The rich modules, or None when the optional package is missing."""
    try:
        import rich.console
        import rich.live
        import rich.text
    except ImportError:
        return None
    return rich


def rich_text(lines: list, rich: Any) -> Any:
    """The frame's lines as one rich Text (styles from monitor_view; never wrapped)."""
    text = rich.text.Text(no_wrap=True, overflow="crop", end="")
    for k, line in enumerate(lines):
        if k:
            text.append("\n")
        for part, style in line:
            text.append(part, style=style or None)
    return text


class PlainOut:
    """Frames as plain text: redrawn in place on a terminal (ANSI cursor up), one after the
    other on a pipe (a blank line between)."""

    def __init__(self, size: tuple[int, int] | None, in_place: bool) -> None:
        self.fixed = size
        self.in_place = in_place
        self._lines = 0

    def size(self) -> tuple[int, int]:
        if self.fixed:
            return self.fixed
        cols, rows = shutil.get_terminal_size((80, 24))
        return cols, rows - 1 if self.in_place else rows

    def show(self, lines: list) -> None:
        text = plain(lines)
        if self.in_place:
            if self._lines:
                sys.stdout.write(f"\x1b[{self._lines}F\x1b[J")
            self._lines = text.count("\n") + 1
            sys.stdout.write(text + "\n")
        else:  # frames one after the other, a blank line between
            sys.stdout.write(("\n" if self._lines else "") + text + "\n")
            self._lines = 1
        sys.stdout.flush()

    def close(self) -> None:
        pass


class RichOut:
    """Frames through rich: in place (rich.live.Live) on a terminal, printed once otherwise."""

    def __init__(self, rich: Any, size: tuple[int, int] | None, live: bool) -> None:
        self.rich = rich
        kw = {"width": size[0], "height": size[1]} if size else {}
        # force_terminal: --rich on a pipe keeps the colours (for `less -R`, captures).
        self.console = rich.console.Console(highlight=False, force_terminal=True, **kw)
        self.fixed = size
        self.live = None
        if live:
            # The whole screen (the alternate one, as top does): all 24 lines of an 80 x 24
            # terminal are the view's, none scrolls away.
            self.live = rich.live.Live(console=self.console, auto_refresh=False, screen=True,
                                       vertical_overflow="crop")
            self.live.start()
        self._last = None

    def size(self) -> tuple[int, int]:
        return self.console.size

    def show(self, lines: list) -> None:
        text = rich_text(lines, self.rich)
        self._last = text
        if self.live is not None:
            self.live.update(text, refresh=True)
        else:
            self.console.print(text)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            if self._last is not None:  # the last frame stays on the terminal
                self.console.print(self._last)


def pass_through(stream: Stream, count: int, out: Any) -> int:
    """--json: every byte as received, to the end of the ``count``-th line (0: no end)."""
    seen = 0
    while True:
        chunk = stream.recv(1.0)
        if chunk is None:
            continue
        if count:
            n = chunk.count(b"\n")
            if seen + n >= count:
                cut = -1
                for _ in range(count - seen):
                    cut = chunk.index(b"\n", cut + 1)
                out.write(chunk[:cut + 1])
                out.flush()
                return 0
            seen += n
        out.write(chunk)
        out.flush()


def view(stream: Stream, show: Callable[[list], None], size: Callable[[], tuple[int, int]],
         interval_s: float, count: int, redraw_quiet: bool) -> int:
    """Draw the newest snapshot at most every ``interval_s``; stop after ``count`` frames (0:
    never). ``redraw_quiet``: redraw the last one each second while the BMS is silent, so that
    its age shows."""
    last_draw = -math.inf
    pending: bytes | None = None
    snap: dict[str, Any] | None = None
    shown = 0
    while True:
        now = time.monotonic()
        wait = interval_s - (now - last_draw) if pending is not None else 1.0
        chunk = stream.recv(max(wait, 0.0))
        if chunk:
            line = stream.newest(chunk)
            if line is not None:
                pending = line
        now = time.monotonic()
        if pending is not None and now - last_draw >= interval_s:
            snap = parse(pending, stream.path)
            pending = None
            show(frame(snap, *size())[0])
            last_draw = now
            shown += 1
            if count and shown >= count:
                return 0
        elif redraw_quiet and snap is not None and now - stream.last_rx >= 2.0 \
                and now - last_draw >= 1.0:
            show(frame(snap, *size(), age_s=now - stream.last_rx)[0])
            last_draw = now


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="bms monitor",
        description="Attach read-only to a running BMS (bms run) and show every cell "
        "of every stack live: voltage, SOC with its 3-sigma bound, temperature, balancing, leak; "
        "stack pressures, state, contactors, limits, faults. The channel is a Unix socket only "
        "the same user can open; this viewer shuts its sending side on connect and cannot "
        "command anything.",
        epilog="examples:\n"
        "  bms monitor                             # the default socket, live on this terminal\n"
        "  bms monitor /tmp/ssb-bms-1000/ssb-bms/bms-4242.sock\n"
        "  bms monitor --once --size 80x24         # one frame, then exit\n"
        "  bms monitor --json | jq .state          # the raw stream, one JSON line per tick\n\n"
        "exit codes: 0 ok (--once, --count, Ctrl-C), 2 usage, 5 no BMS at the socket, the BMS "
        "stopped or went silent (docs/errors.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("socket", nargs="?", default=str(default_socket_path()),
                    help=f"the BMS's monitor socket (default {default_socket_path()})")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true",
                      help="pass the stream through: one JSON line per snapshot, as received")
    mode.add_argument("--plain", action="store_true",
                      help="plain text frames, no colours (the default on a pipe or without "
                      "rich)")
    mode.add_argument("--rich", action="store_true",
                      help="the rich view even on a pipe (an error when rich is missing)")
    ap.add_argument("--once", action="store_true", help="print one frame (or line) and exit")
    ap.add_argument("--count", type=int, default=0,
                    help="stop after N frames (--json: N lines); 0 = never")
    ap.add_argument("--size", type=_size, default=None, metavar="WxH",
                    help="lay the frame out for WIDTHxHEIGHT characters (default: the "
                    "terminal's; 80x24 on a pipe)")
    ap.add_argument("--interval", type=lambda t: _seconds(t, 0.0), default=0.25, metavar="S",
                    help="seconds between frames at most (default 0.25)")
    ap.add_argument("--timeout", type=lambda t: _seconds(t, 0.1), default=10.0, metavar="S",
                    help="give up when the BMS sends nothing for S seconds (default 10)")
    return ap


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.count < 0:
        raise UsageError(f"--count {args.count}: allowed 0 (never stop) or more")
    count = 1 if args.once else args.count
    rich = None
    if not args.json and not args.plain:
        rich = _load_rich()
        if rich is None and args.rich:
            raise UsageError("--rich: the rich package is not installed", INSTALL_HINT)
    tty = sys.stdout.isatty()
    # SIGTERM (a `timeout`, a closed terminal's SIGHUP) ends the viewer as Ctrl-C does: the
    # terminal is given back (the alternate screen left, the cursor shown), exit 0.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _watch(args, count, rich, tty)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch(args: argparse.Namespace, count: int, rich: Any, tty: bool) -> int:
    sock = connect(args.socket)
    stream = Stream(sock, args.socket, args.timeout)
    out: RichOut | PlainOut | None = None
    try:
        if args.json:
            return pass_through(stream, count, sys.stdout.buffer)
        live = tty and count != 1
        if rich is not None and (tty or args.rich):
            out = RichOut(rich, args.size, live)
        else:
            if rich is None and tty and not args.plain:
                print(f"bms monitor: rich is not installed: plain view ({INSTALL_HINT})",
                      file=sys.stderr)
            out = PlainOut(args.size, in_place=live)
        return view(stream, out.show, out.size, args.interval, count, redraw_quiet=live)
    except KeyboardInterrupt:
        return 0  # the viewer stopped by its user: not an error
    finally:
        if out is not None:
            out.close()
        sock.close()
