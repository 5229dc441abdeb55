"""A CAN "cable" between processes without root or a kernel module: two pseudo-terminals
whose bytes are copied to each other by a thread, so python-can's ``serial`` (or ``slcan``)
backend in one process talks to the same backend in another (``serial:/dev/pts/A`` and
``serial:/dev/pts/B``). Loopback inside this machine only: no network address at all.

    .venv/bin/python tools/can_pty_relay.py      # prints the two paths, relays until Ctrl-C

Used by tests/test_can_processes.py and tools/can_timing.py (imported: ``PtyRelay``).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import tty

#: Bytes held for a reader that does not keep up (about 3000 frames of python-can's serial
#: format), then the oldest are dropped.
BACKLOG_BYTES = 1 << 16


class PtyRelay:
    """Two ptys; every byte written to one's slave side is read on the other's."""

    def __init__(self) -> None:
        self._fds = []
        self.paths = []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo, no line discipline before a reader opens it
            self._fds.append((master, slave))
            self.paths.append(os.ttyname(slave))
        self.bytes_copied = 0
        self.bytes_dropped = 0
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="can-pty-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Copy without ever blocking a side: like a CAN bus, a slow reader loses frames (its
        backlog beyond BACKLOG_BYTES is dropped and counted), a writer never waits."""
        a, b = self._fds[0][0], self._fds[1][0]
        for fd in (a, b):
            os.set_blocking(fd, False)
        peer = {a: b, b: a}
        pending = {a: bytearray(), b: bytearray()}
        while True:
            want_write = [fd for fd in (a, b) if pending[fd]]
            ready, _, _ = select.select([a, b, self._stop_r], want_write, [])
            if self._stop_r in ready:
                return
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    continue
                out = pending[peer[fd]]
                out += data
                if len(out) > BACKLOG_BYTES:
                    self.bytes_dropped += len(out) - BACKLOG_BYTES
                    del out[:len(out) - BACKLOG_BYTES]
            for fd in (a, b):
                if not pending[fd]:
                    continue
                try:
                    n = os.write(fd, pending[fd])
                except (BlockingIOError, OSError):
                    continue
                self.bytes_copied += n
                del pending[fd][:n]

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=2.0)
        for master, slave in self._fds:
            os.close(master)
            os.close(slave)
        os.close(self._stop_r)
        os.close(self._stop_w)

    def __enter__(self) -> PtyRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> int:
    relay = PtyRelay()
    print(f"{relay.paths[0]} <-> {relay.paths[1]}  (e.g. bms run --can serial:{relay.paths[0]}"
          f" ... and bms vcu serial:{relay.paths[1]}); Ctrl-C ends", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    relay.close()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
