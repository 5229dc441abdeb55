"""Real-time scheduling for the real clock (``bms run --realtime``, ``bms bench --tick
--realtime``).

A 100 Hz tick needs the controller (and, on the same machine, its emulated boards) to wake up on
time. Under the default time-sharing policy any other runnable process can delay a wake-up by a
scheduler slice (milliseconds); SCHED_FIFO runs the process before every time-shared one. It
needs root or CAP_SYS_NICE (or an rtprio limit); without them the request is refused and the run
goes on under the default policy, saying so. Children started afterwards (emulator processes)
inherit the policy. The kernel's real-time throttling (sched_rt_runtime_us, 95 % by default)
keeps a runaway real-time process from freezing the machine.

With SCHED_FIFO granted, the process also locks its memory (mlockall, current and future
pages), as real-time Linux programs do, so that no page is ever swapped out or faulted in from
disk in the middle of a tick. Only when the lock limit allows it (root, CAP_IPC_LOCK or an
unlimited RLIMIT_MEMLOCK): with a small limit, locking future pages would make later
allocations fail.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource

#: Priority 1..99; 50 is the middle of the range, below kernel threads such as the
#: threaded IRQ handlers (priority 50 as well on PREEMPT_RT, which then interleave FIFO).
DEFAULT_PRIORITY = 50


def request_realtime(priority: int = DEFAULT_PRIORITY) -> str:
    """Switch this process to SCHED_FIFO ``priority``; a one-line description of the outcome
    (the policy in force, or why it was refused)."""
    if not hasattr(os, "sched_setscheduler"):
        return "SCHED_FIFO unavailable on this platform: default scheduling"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        return ("SCHED_FIFO refused (needs root, CAP_SYS_NICE or an rtprio limit): default "
                "scheduling")
    except OSError as exc:
        return f"SCHED_FIFO refused ({exc}): default scheduling"
    return f"SCHED_FIFO priority {priority}; {lock_memory()}"


_MCL_CURRENT, _MCL_FUTURE = 1, 2  # <sys/mman.h> on Linux


def lock_memory() -> str:
    """mlockall(MCL_CURRENT | MCL_FUTURE) when the lock limit allows it; the outcome in a few
    words."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != resource.RLIM_INFINITY and os.geteuid() != 0:
        return f"memory not locked (RLIMIT_MEMLOCK {soft} B)"
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:  # pragma: no cover - every Linux has a libc
        return "memory not locked (no libc)"
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if libc.mlockall(_MCL_CURRENT | _MCL_FUTURE) != 0:
        return f"memory not locked ({os.strerror(ctypes.get_errno())})"
    return "memory locked"


def current_policy() -> str:
    """The scheduling policy of this process, for run summaries."""
    try:
        policy = os.sched_getscheduler(0)
    except (AttributeError, OSError):
        return "unknown"
    if policy == getattr(os, "SCHED_FIFO", -1):
        return f"SCHED_FIFO priority {os.sched_getparam(0).sched_priority}"
    return "default (time sharing)"
