"""A campaign worker's fork server: one Python process that imported the run's modules once
and forks a child per run, so a run does not pay the interpreter start and the imports
(~0.3-0.45 s CPU of a 1 h ssb-23 run's ~4 s) every time.

Parent side (:class:`ForkServer`, one per worker thread: :func:`server`): starts
``python -m bms.app.campaign.forkserver`` with ``PYTHONHASHSEED=0`` (as each run's own process
had it), and per run sends one JSON line (the child's argv, its stdout and stderr files, its
timeout) and reads one back (the exit code, timed out or not). The server forks; the child
points its stdin to /dev/null and its stdout and stderr to the given files, runs
``bms.app.campaign.runner.main(argv)`` and exits; the server waits for it, kills it at its
timeout (SIGKILL, as ``subprocess.run(timeout=...)`` did) and answers. So a run is still its
own process: a crash, even in C, or a hang takes only its child down, and every child starts
from the same state (the server's, just after its imports). The server ends when its stdin
closes (the worker ended or :func:`shutdown_all`).
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

#: What each run imports (bms.app.campaign.runner.execute / execute_bench, the score): done
#: once in the server. numpy's OpenBLAS thread is the only other thread there; it is
#: fork-safe (pthread_atfork), as every multiprocessing "fork" pool relies on.
PRELOAD = ("bms.app.campaign.runner", "bms.app.run", "bms.controller", "bms.runlog",
           "bms.app.evaluate", "bms.app.latency", "boards.config",
           "hil.emulator.protocol_emu", "hil.emulator.scenario")

#: How long the parent waits beyond a run's own timeout for the server's answer before it
#: takes the server for dead (the server itself kills the run at its timeout).
GRACE_S = 30.0


class ForkServerError(RuntimeError):
    """The server died or stopped answering (the run is recorded as failed; the next run
    starts a new server)."""


class ForkServer:
    """Parent side: one server process, one run at a time."""

    def __init__(self) -> None:
        # Not Dask's MALLOC_TRIM_THRESHOLD_ (its nanny sets it for a worker's own memory): in
        # a run it only adds system time (~0.1 s per 1 h ssb-23 run, measured on the local pool).
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
        env["PYTHONHASHSEED"] = "0"
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bms.app.campaign.forkserver"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True)
        self._buf = b""

    def alive(self) -> bool:
        return self._proc.poll() is None

    def run(self, argv: list[str], stdout_path: str, stderr_path: str,
            timeout_s: float, pack: str | None = None) -> tuple[int, bool]:
        """Run ``runner.main(argv)`` in a forked child: (exit code, negative for a signal;
        killed at ``timeout_s``). ``pack``: the run's pack, loaded once by the server (its
        parsed YAML then in every child: boards.config._PARSED)."""
        req = {"argv": argv, "stdout": stdout_path, "stderr": stderr_path,
               "timeout_s": timeout_s, "pack": pack, "cwd": os.getcwd()}
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write((json.dumps(req) + "\n").encode())
            self._proc.stdin.flush()
        except OSError as exc:
            self.close()
            raise ForkServerError(f"the fork server is gone: {exc}") from None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s + GRACE_S
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                self.close()
                raise ForkServerError("the fork server " + (
                    "ended" if ready else f"did not answer in {timeout_s + GRACE_S:g} s"))
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply = json.loads(line)
        return int(reply["returncode"]), bool(reply["timed_out"])

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.close()  # the server's loop ends at EOF
                self._proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        for f in (self._proc.stdin, self._proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


_local = threading.local()
_all: list[ForkServer] = []
_all_lock = threading.Lock()


def server() -> ForkServer:
    """This thread's server (started on first use, restarted when it died)."""
    s: ForkServer | None = getattr(_local, "server", None)
    if s is None or not s.alive():
        if s is not None:
            s.close()
        s = _local.server = ForkServer()
        with _all_lock:
            _all.append(s)
    return s


def shutdown_all() -> None:
    """End every server this process started (a worker process's end does it too: their
    stdin closes)."""
    with _all_lock:
        servers = list(_all)
        _all.clear()
    for s in servers:
        s.close()


# --------------------------------------------------------------------------- server side


def _wait(pid: int, timeout_s: float, parent_fd: int) -> tuple[int, bool]:
    """Wait for the child ``pid`` (killed at ``timeout_s``): (exit code, timed out). The
    parent sends nothing while a run runs: ``parent_fd`` readable means it is gone (a worker
    killed): the child is killed too and the server ends, no orphan left running."""
    deadline = time.monotonic() + timeout_s
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), False
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return -signal.SIGKILL, True
            # the pidfd is readable when the child ends
            wait_on = [parent_fd] if pidfd is None else [parent_fd, pidfd]
            ready = select.select(wait_on, [], [], left if pidfd is not None
                                  else min(left, 0.01))[0]
            if parent_fd in ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                os._exit(0)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _child(req: dict[str, Any]) -> None:
    """In the forked child: never returns."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        if req.get("cwd"):
            os.chdir(req["cwd"])  # the parent's now, as a process started per run had it
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in (null, out, err):
            os.close(fd)
        from bms.app.campaign.runner import main
        code = main(req["argv"])
    except BaseException:  # noqa: BLE001 - the run's failure, in its stderr file
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    import importlib
    # Ctrl-C reaches the whole process group: the parent handles it and closes our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the run imports it again and records the error
            pass
    # The imports' objects out of the collector's sight: the child's full collections
    # (Controller.run's gc.collect before its gc.freeze) do not walk them, nor touch (and so
    # copy) their pages.
    gc.collect()
    gc.freeze()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    packs: set[str] = set()
    for line in stdin:
        req = json.loads(line)
        pack = req.get("pack")
        if pack and pack not in packs:
            packs.add(pack)
            try:
                from boards.config import load_pack
                load_pack(pack)
            except Exception:  # noqa: BLE001 - the run loads it again and records the error
                pass
        stdout.flush()  # nothing buffered may be copied into the child
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(req)
        code, timed_out = _wait(pid, float(req["timeout_s"]), stdin.fileno())
        stdout.write((json.dumps({"returncode": code, "timed_out": timed_out}) + "\n")
                     .encode())
        stdout.flush()


if __name__ == "__main__":
    serve()
