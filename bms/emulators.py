"""Start emulated boards as child processes (``python -m hil.emulator``), one per stack.

Used by ``bms demo``, by ``bms run`` when no ``--port`` is given, and by the end-to-end tests:
the same program a user would start by hand with ``bms emulate``, on a real pty.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bms.config import PackConfig

# How long an emulator may take to print its pty path (Python start-up plus numpy import on a
# loaded 2-core machine; generous on purpose, it is a failure bound, not a wait).
START_TIMEOUT_S = 30.0


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


def start_emulator(pack: PackConfig, stack_index: int = 0, clock: str = "sim", seed: int = 0,
                   scenario: str | None = None, truth_path: Path | None = None,
                   truth_every: int = 1, soc: float | None = None,
                   extra_args: list[str] | None = None) -> EmulatorProcess:
    """Start one emulated board and wait until it has printed its pty path."""
    cmd = [sys.executable, "-m", "hil.emulator", "--pack", str(pack.path),
           "--board", str(stack_index), "--clock", clock, "--seed", str(seed + stack_index)]
    if scenario:
        cmd += ["--scenario", scenario]
    if truth_path is not None:
        cmd += ["--truth", str(truth_path), "--truth-every", str(truth_every)]
    if soc is not None:
        cmd += ["--soc", str(soc)]
    cmd += extra_args or []
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ))
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("/"):
        proc.kill()
        _, err = proc.communicate()
        raise EmulatorStartError(
            f"emulator for stack {stack_index} did not start: {err.decode(errors='replace')}")
    return EmulatorProcess(stack_index, proc, line, truth_path)


def start_emulators(pack: PackConfig, clock: str = "sim", seed: int = 0,
                    scenario: str | None = None, truth_dir: Path | None = None,
                    truth_every: int = 1, soc: float | None = None) -> list[EmulatorProcess]:
    """One emulated board per stack of ``pack``; stops the started ones if any fails."""
    started: list[EmulatorProcess] = []
    try:
        for k in range(len(pack.stacks)):
            truth = truth_dir / f"truth-stack{k + 1}.csv" if truth_dir else None
            started.append(start_emulator(pack, k, clock, seed, scenario, truth, truth_every,
                                          soc))
    except BaseException:
        for emu in started:
            emu.stop()
        raise
    return started
