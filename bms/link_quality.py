"""Link quality: bad frames on a board's serial link (docs/safety.md "Link frame errors").

Every frame carries a CRC-16 and COBS framing (docs/protocol.md); the host's decoder drops a
frame that fails either and counts it (hil.protocol.LinkCounters), and the client retries the
request. A retry that succeeds loses no data, so nothing else is raised: a wire that corrupts
a frame in every few hundred bytes (a loose connector, a ground loop, EMI) went unnoticed as
long as the retries kept up. A healthy UART link drops no frame in hours, so several in a short
window are a fault of the wire that a bench and a service technician want to know about:
LINK_FRAME_ERRORS (a warning, per board) when a board's link dropped ``errors`` frames within
``window_s``; it clears once the window holds fewer. One hit (a single noise burst) never
raises it. The rule is a count in a sliding window, as the vehicle side's VEHICLE_FRAME_INVALID
(bms/vehicle/) and in the spirit of CAN's error counters (ISO 11898-1 fault confinement).

Pure logic on the tick's ``time_s``; the controller reads each board's decoder counter.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from bms.faults import FaultCode, FaultTable

_CODE = FaultCode.LINK_FRAME_ERRORS


@dataclass(frozen=True)
class LinkQualityConfig:
    """The check's tunables (values and sources: bms/tuning.py)."""

    errors: int        # bad frames within the window that raise
    window_s: float


@dataclass
class _BoardState:
    last_count: int | None = None
    times_s: deque[float] = field(default_factory=deque)  # one entry per bad frame
    total: int = 0
    raised: bool = False


class LinkQuality:
    """One instance per pack; one state per board."""

    def __init__(self, n_boards: int, config: LinkQualityConfig) -> None:
        if config.errors < 2:
            raise ValueError("LinkQualityConfig.errors must be >= 2: one noise hit is no fault")
        self.config = config
        self._st = [_BoardState() for _ in range(n_boards)]
        # The last counts when no board had a bad frame in its window nor a raised fault:
        # the same counts again change nothing (the usual tick).
        self._quiet_counts: list[int | None] | None = None

    def in_window(self, board: int) -> int:
        """Bad frames of the board within the window (as of its last ``step``)."""
        return len(self._st[board].times_s)

    def total(self, board: int) -> int:
        """Bad frames of the board counted since the check started."""
        return self._st[board].total

    def step(self, t: float, bad_frames: list[int | None], table: FaultTable) -> list[int]:
        """``bad_frames``: each board's cumulative count of dropped frames (None: no link
        now). A count that goes down (a reopened port's new decoder) is a new start. Returns
        the boards raised on this tick."""
        if bad_frames == self._quiet_counts:
            return []
        c = self.config
        raised: list[int] = []
        for k, (s, count) in enumerate(zip(self._st, bad_frames, strict=True)):
            if count is not None:
                new = 0 if s.last_count is None or count < s.last_count else count - s.last_count
                s.last_count = count
                if new:
                    s.total += new
                    s.times_s.extend([t] * min(new, c.errors))
            while s.times_s and t - s.times_s[0] >= c.window_s - 1e-9:
                s.times_s.popleft()
            n = len(s.times_s)
            if n >= c.errors and not s.raised:
                table.raise_fault(_CODE, t, None, float(n), k)
                s.raised = True
                raised.append(k)
            elif n < c.errors and s.raised:
                table.clear_fault(_CODE, t, None, float(n), k)
                s.raised = False
        quiet = not any(s.times_s or s.raised for s in self._st)
        self._quiet_counts = list(bad_frames) if quiet else None
        return raised


__all__ = ["LinkQuality", "LinkQualityConfig"]
