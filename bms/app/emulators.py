"""Start emulated boards as child processes (``python -m hil.emulator``): one process serving
every stack of a pack (each board on its own pty), or one process per board.

Used by ``bms demo``, by ``bms run`` when no ``--port`` is given, and by the end-to-end tests:
the same program a user would start by hand with ``bms emulate``, on a real pty.

An emulator never outlives the process that started it: the child asks the kernel
(``prctl(PR_SET_PDEATHSIG, SIGTERM)``, Linux) for a SIGTERM when its parent dies, even by
SIGKILL, and stops cleanly on it (its truth files closed); a failed start kills it at once.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from boards.config import PackConfig

# How long an emulator may take to print its pty path (Python start-up plus numpy import on a
# loaded 2-core machine; generous on purpose, it is a failure bound, not a wait).
START_TIMEOUT_S = 30.0


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
try:  # resolved before any fork: the child only calls it
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
    _prctl = None


def _die_with_parent(parent_pid: int) -> None:
    """In the child between fork and exec: SIGTERM when the parent dies; if it already has
    (the race before prctl), now."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


class EmulatorStartError(RuntimeError):
    """An emulator process did not start (its stderr is in the message)."""


@dataclass
class EmulatorProcess:
    stack_index: int
    process: subprocess.Popen
    path: str
    truth_path: Path | None

    def stop(self) -> int:
        """Terminate (SIGTERM, then SIGKILL) and reap; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: the board vanishes as if unplugged."""
        self.process.kill()
        self.process.wait()


def _command(pack: PackConfig, boards: list[int], clock: str, seed: int,
             scenario: str | None, soc: float | None) -> list[str]:
    cmd = [sys.executable, "-m", "hil.emulator", "--pack", str(pack.path), "--clock", clock,
           "--seed", str(seed)]
    for k in boards:
        cmd += ["--board", str(k)]
    if scenario:
        cmd += ["--scenario", scenario]
    if soc is not None:
        cmd += ["--soc", str(soc)]
    return cmd


def _spawn(cmd: list[str], n_paths: int, what: str) -> tuple[subprocess.Popen, list[str]]:
    """Start the emulator program and read the ``n_paths`` pty paths it prints first."""
    parent = os.getpid()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ), bufsize=0,
                            preexec_fn=lambda: _die_with_parent(parent))
    assert proc.stdout is not None
    # Unbuffered: the lines are read from the pipe as they come (a buffered readline would
    # swallow every line at once, and select would then wait for lines already read).
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + START_TIMEOUT_S
    buf = b""
    while buf.count(b"\n") < n_paths:
        remaining = deadline - time.monotonic()
        ready = select.select([fd], [], [], max(remaining, 0.0))[0] if remaining > 0 else []
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            break
        buf += chunk
    paths = [line.strip() for line in buf.decode(errors="replace").splitlines()[:n_paths]]
    if len(paths) < n_paths or not all(p.startswith("/") for p in paths):
        proc.kill()
        _, err = proc.communicate()
        text = " ".join(err.decode(errors="replace").split()) or f"exit code {proc.returncode}"
        raise EmulatorStartError(f"emulator for {what} did not start: {text}")
    # From here on its stderr goes to ours as it comes (e.g. a truth file that stopped on a
    # full disk): unread, the pipe would fill and the emulator would block on its next line.
    assert proc.stderr is not None
    threading.Thread(target=_forward, args=(proc.stderr,), daemon=True,
                     name=f"emulator-stderr-{proc.pid}").start()
    return proc, paths


def _forward(stream: IO[bytes]) -> None:
    try:
        for line in iter(stream.readline, b""):
            sys.stderr.write(line.decode(errors="replace"))
            sys.stderr.flush()
    except (OSError, ValueError):  # closed by stop(): nothing more to forward
        pass


def start_emulator(pack: PackConfig, stack_index: int = 0, clock: str = "sim", seed: int = 0,
                   scenario: str | None = None, truth_path: Path | None = None,
                   truth_every: int = 1, soc: float | None = None,
                   extra_args: list[str] | None = None) -> EmulatorProcess:
    """Start one emulated board (its own process) and wait until it has printed its pty
    path. Its seed is ``seed + stack_index``, as in :func:`start_emulators`."""
    cmd = _command(pack, [stack_index], clock, seed + stack_index, scenario, soc)
    if truth_path is not None:
        cmd += ["--truth", str(truth_path), "--truth-every", str(truth_every)]
    cmd += extra_args or []
    proc, paths = _spawn(cmd, 1, f"stack {stack_index}")
    return EmulatorProcess(stack_index, proc, paths[0], truth_path)


def start_emulators(pack: PackConfig, clock: str = "sim", seed: int = 0,
                    scenario: str | None = None, truth_dir: Path | None = None,
                    truth_every: int = 1, soc: float | None = None,
                    one_process: bool = True) -> list[EmulatorProcess]:
    """One emulated board per stack of ``pack`` (board k seeded ``seed + k``), each on its own
    pty. ``one_process``: one program serves every board (the default: on a 2-core machine
    four emulator processes beside the controller cost about twice the CPU, see
    hil.emulator.board.serve_boards); else one process per board, which a test can kill one
    at a time. With one process, stopping or killing any board's EmulatorProcess ends all."""
    n = len(pack.stacks)
    if not one_process or n == 1:
        started: list[EmulatorProcess] = []
        try:
            for k in range(n):
                truth = truth_dir / f"truth-stack{k + 1}.csv" if truth_dir else None
                started.append(start_emulator(pack, k, clock, seed, scenario, truth,
                                              truth_every, soc))
        except BaseException:
            for emu in started:
                emu.stop()
            raise
        return started
    cmd = _command(pack, list(range(n)), clock, seed, scenario, soc)
    if truth_dir is not None:
        cmd += ["--truth-dir", str(truth_dir), "--truth-every", str(truth_every)]
    proc, paths = _spawn(cmd, n, f"pack {pack.name}")
    return [EmulatorProcess(k, proc, paths[k],
                            truth_dir / f"truth-stack{k + 1}.csv" if truth_dir else None)
            for k in range(n)]
