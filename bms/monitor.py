"""Read-only live view of a running BMS over a Unix socket that only its owner can open.

The controller owns a :class:`MonitorServer`: each tick it publishes one JSON line (a snapshot) to
every connected viewer. The server never reads from a viewer's socket, so a viewer cannot command
anything: read-only by construction, not by a permission check. The socket lives in a directory
created with mode 0700 and the socket itself is chmod 0600, so only the same user can connect.
A slow or stuck viewer is dropped rather than allowed to stall the tick loop.

``bms monitor [SOCKET]`` (bms/app/monitor.py) connects and shows every cell of every stack in place.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

from bms.runlog import _json_safe  # one NaN-to-null rule for logs and the live view

DEFAULT_NAME = "bms.sock"


def default_socket_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/ssb-bms-{os.getuid()}"
    return Path(base) / "ssb-bms"


def default_socket_path() -> Path:
    return default_socket_dir() / DEFAULT_NAME


class MonitorServer:
    """Publishes snapshots to viewers; never reads from them."""

    # A viewer that has this much unsent data is too slow: drop it instead of blocking.
    MAX_BACKLOG_BYTES = 256 * 1024

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_socket_path()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = self.path.parent.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            os.chmod(self.path.parent, 0o700)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket file is created 0600
        try:
            self._sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._sock.listen(4)
        self._sock.setblocking(False)
        self._viewers: list[tuple[socket.socket, bytearray]] = []
        self.dropped_viewers = 0

    @property
    def n_viewers(self) -> int:
        return len(self._viewers)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            conn.shutdown(socket.SHUT_RD)  # read-only channel: nothing a viewer sends is read
            self._viewers.append((conn, bytearray()))

    def poll_viewers(self) -> bool:
        """Accept waiting viewers; True when anyone is watching (so the caller builds a
        snapshot only then)."""
        self._accept()
        return bool(self._viewers)

    def publish(self, snapshot: dict[str, Any]) -> None:
        """Queue one snapshot for every viewer and send what the sockets take without blocking."""
        self._accept()
        if not self._viewers:
            return
        # Strict JSON (NaN -> null) so any viewer's parser reads it, not only Python's. The
        # walk that nulls NaN costs as much as the encoding itself: only when there is one.
        try:
            text = json.dumps(snapshot, separators=(",", ":"), allow_nan=False,
                              default=_jsonable)
        except ValueError:
            text = json.dumps(_json_safe(snapshot), separators=(",", ":"), allow_nan=False,
                              default=_jsonable)
        line = (text + "\n").encode()
        alive = []
        for conn, backlog in self._viewers:
            backlog += line
            try:
                sent = conn.send(backlog)
                del backlog[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                conn.close()
                self.dropped_viewers += 1
                continue
            if len(backlog) > self.MAX_BACKLOG_BYTES:
                conn.close()
                self.dropped_viewers += 1
                continue
            alive.append((conn, backlog))
        self._viewers = alive

    def close(self) -> None:
        for conn, _ in self._viewers:
            conn.close()
        self._viewers = []
        self._sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _jsonable(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    return str(value)
