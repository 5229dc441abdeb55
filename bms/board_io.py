"""One stack's board as the controller sees it: requests and answers, the outputs it was last
sent, the heartbeat, and the policy for a board that stops answering.

Policy (docs/architecture.md, "Board loss"): a failed read or write marks the board lost (an
event in the run log, never an exception into the tick); a lost board gets no requests, and its
port is closed and opened again every ``RECONNECT_PERIOD_S`` (a USB board re-enumerates after a
reset) when the pack's ``controller.on_board_lost`` is ``reconnect`` (with ``stop`` the
controller ends the run). A late answer is a miss and a momentary MEASUREMENT_LATE; only a port
that is gone marks the board lost, so a silent board on a live port stays asked (in the sim
clock its time, and its silence, only advance with SAMPLEs) and MEASUREMENT_LOST takes the pack
to SAFE. A reopened port raises BOARD_RESET only when the board's boot id changed.

In the real clock an attempt runs on a thread of its own (``reconnect_in_background``): its
handshake waits for a board that may not answer (about 0.55 s: the boot INFO, two HELLOs),
which in the tick stalled every stack's tick by that long. The tick starts an attempt when one
is due and takes the board back at the first tick after it succeeded; the client is not touched
by the tick meanwhile (a lost board gets no requests). The sim clock keeps the attempt in the
tick: there it costs no wall deadline, and a thread would make the run depend on wall time.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from bms.faults import FaultCode, FaultTable
from bms.tuning import LIMIT_RESEND_A, OUTPUT_REFRESH_S, RECONNECT_PERIOD_S
from hil.client import BoardClient, BoardNackError
from hil.link import BoardLostError, BoardTimeoutError, LinkError, MeasurementLane
from hil.protocol import Measurement, Status

#: What the outputs were last sent as: (outputs, balance mask, charge limit A, discharge limit A).
SentOutputs = tuple[int, int, float, float]


class BoardIO:
    """Requests to one board and the state of that conversation. ``lane``: where the board's
    MEASUREMENTs are unpacked by the fast lane (None: always as messages)."""

    def __init__(self, index: int, port: str, client: BoardClient, table: FaultTable,
                 lane: MeasurementLane | None = None,
                 log_event: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.index = index
        self.port = port
        self.reconnect = True  # False: a lost board stays lost (controller.on_board_lost stop)
        self.reconnect_in_background = False  # True in the real clock (module docstring)
        self._attempt: threading.Thread | None = None
        self._attempt_ok = False
        self.client = client
        self.lane = lane
        self._table = table
        self._log_event = log_event
        self.lost = False
        self.lost_reason = ""
        self.next_reconnect_s = 0.0
        self.prefetched: int | None = None  # seq of a SAMPLE already sent for the next tick
        self.ack_seq: int | None = None  # SET_OUTPUTS sent last tick whose ACK is to collect
        self.outputs_sent: SentOutputs | None = None
        self.outputs_pending: SentOutputs | None = None
        self.outputs_sent_s = -math.inf
        self.misses = 0
        self.reconnects = 0
        # The board's watchdog had tripped before this run connected (arm()).
        self.watchdog_tripped_before_run = False

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Handshake (version, board id, channel counts) and all outputs open."""
        self.client.open()
        self.client.set_outputs(0, 0, 0.0, 0.0)

    def arm(self, read_status: bool) -> bool:
        """After the handshake: read the board's status once (``read_status``: a SAMPLE with
        dt 0), then beat and open the outputs. A watchdog that tripped before this run
        connected (a board idle for longer than its timeout, e.g. a real-clock board without
        DTR reset) is its own safe state, already held: the HEARTBEAT here clears it, so the
        run starts clean instead of latching BOARD_WATCHDOG_TRIPPED at t = 0. Returns whether
        it had tripped (the controller logs it). The sim clock skips the read: a sim board's
        time stands still between runs, so it cannot trip while idle, and an extra SAMPLE
        would draw the emulator's sensor noise once more (a run's figures would move)."""
        tripped = False
        if read_status:
            m = self.client.sample(0.0)
            tripped = bool(int(m.status) & int(Status.WATCHDOG_TRIPPED))
        self.client.heartbeat(0, 0)
        self.client.set_outputs(0, 0, 0.0, 0.0)
        self.watchdog_tripped_before_run = tripped
        return tripped

    def close(self) -> None:
        """Open the outputs (best effort: the board's watchdog opens them anyway) and the port."""
        if self._attempt is not None:
            self._attempt.join()  # a reconnect under way: bounded by the client's timeouts
            self._attempt = None
        if not self.lost:
            try:
                self.client.set_outputs(0, 0, 0.0, 0.0)
            except LinkError:
                pass
        self.client.close()

    def watchdog_timeout_s(self) -> float:
        """The board's own watchdog timeout, as its INFO reports it."""
        return self.client.info.heartbeat_timeout_ms / 1000.0

    def counters(self) -> dict[str, int]:
        if self._attempt is not None:  # the client is the attempt's until it ends
            return {}
        try:
            return self.client.counters
        except LinkError:
            return {}

    # ------------------------------------------------------------------ samples

    def take_prefetched_or_request(self, sample_dt_s: float, t: float) -> int | None:
        """The seq of this tick's SAMPLE: the one sent ahead last tick, else one sent now."""
        if self.prefetched is not None:
            seq, self.prefetched = self.prefetched, None
            return seq
        return self.request_sample(sample_dt_s, t)

    def request_sample(self, sample_dt_s: float, t: float) -> int | None:
        """Send SAMPLE; its seq, or None when the board is lost (reconnecting when due)."""
        if self.lost and not self._reconnect(t):
            return None
        try:
            return self.client.request_sample(sample_dt_s)
        except (LinkError, OSError) as exc:
            self.mark_lost(exc, t)
            return None

    def _reconnect(self, t: float) -> bool:
        """True when the board is back at ``t`` (an attempt due now succeeded, or, in the
        background, one that ended since the last tick did)."""
        if not self.reconnect:
            return False
        if self._attempt is not None:
            if self._attempt.is_alive():
                return False
            self._attempt = None
            return self._attempt_ok and self._reconnected(t)
        if t < self.next_reconnect_s:
            return False
        self.next_reconnect_s = t + RECONNECT_PERIOD_S
        if self.reconnect_in_background:
            self._attempt_ok = False
            self._attempt = threading.Thread(target=self._try_reopen, daemon=True,
                                             name=f"reconnect-stack{self.index + 1}")
            self._attempt.start()
            return False
        self._try_reopen()
        return self._attempt_ok and self._reconnected(t)

    def _try_reopen(self) -> None:
        """Close the port, open it again (the handshake) and beat once; the outcome in
        ``_attempt_ok``. Runs on the attempt's thread in the real clock."""
        try:
            self.client.close()
            self.client.open()  # a new boot id sets the client's reset flag: BOARD_RESET
            self.client.heartbeat(0, 0)
        except (LinkError, OSError):
            self._attempt_ok = False
            return
        self._attempt_ok = True

    def _reconnected(self, t: float) -> bool:
        self.lost = False
        self.reconnects += 1
        self.prefetched = self.ack_seq = None
        self.outputs_sent = None  # the board may have lost them: send again
        if self._log_event is not None:
            self._log_event({"type": "board", "event": "reconnected", "time_s": t,
                             "stack": self.index, "port": self.port,
                             "board_reset": self.client.reset_pending})
        return True

    def await_measurement(self, seq: int | None, t: float, timeout_s: float | None = None,
                          retries: int | None = None) -> Measurement | MeasurementLane | None:
        """The answer to ``seq``: a Measurement, or the lane when the fast lane unpacked it
        there; None when there is none (a miss; a lost port also marks the board lost).
        ``timeout_s``/``retries``: this wait's bound (default the client's)."""
        if seq is None:
            self.misses += 1
            return None
        try:
            if self.lane is None:
                return self.client.wait_measurement(seq, timeout_s, retries)
            return self.client.wait_measurement_into(seq, self.lane, timeout_s, retries)
        except (LinkError, OSError) as exc:
            self.misses += 1
            self._table.raise_fault(FaultCode.MEASUREMENT_LATE, t, None, None, self.index,
                                    momentary=True)
            if not isinstance(exc, LinkError) or isinstance(exc, BoardLostError):
                self.mark_lost(exc, t)
            return None

    # ------------------------------------------------------------------ commands

    def send_outputs(self, outputs: int, mask: int, charge_a: float, discharge_a: float,
                     t: float) -> int | None:
        """Send SET_OUTPUTS when something changed; the seq to collect the ACK of, or None."""
        if self.lost:
            return None
        # Outputs and masks are sent when they change; the limits when they move by more than
        # LIMIT_RESEND_A, and everything every OUTPUT_REFRESH_S as a safety net: one round
        # trip per change instead of one per tick. The limits only steer a charger or the
        # emulator's load; protection never depends on them reaching the board.
        last = self.outputs_sent
        if (last is not None and last[0] == outputs and last[1] == mask
                and abs(last[2] - charge_a) < LIMIT_RESEND_A
                and abs(last[3] - discharge_a) < LIMIT_RESEND_A
                and t - self.outputs_sent_s < OUTPUT_REFRESH_S):
            return None
        try:
            seq = self.client.request_outputs(outputs, mask, max(charge_a, 0.0),
                                              max(discharge_a, 0.0))
        except LinkError as exc:
            self.mark_lost(exc, t)
            return None
        self.outputs_pending = (outputs, mask, charge_a, discharge_a)
        return seq

    def collect_ack(self, seq: int, t: float, timeout_s: float | None = None,
                    retries: int | None = None) -> None:
        try:
            if timeout_s is None and retries is None:
                self.client.wait_ack(seq)
            else:
                self.client.wait_ack(seq, timeout_s, retries)
            self.outputs_sent, self.outputs_sent_s = self.outputs_pending, t
        except LinkError as exc:
            if isinstance(exc, (BoardNackError, BoardTimeoutError)):
                # The board refused (e.g. its watchdog tripped) or did not answer in time (a
                # silent link: MEASUREMENT_LOST and SAFE cover it, as for a late SAMPLE): try
                # again next tick. Marking it lost here would stop the SAMPLEs, and in the sim
                # clock a silent board's time (and its silence) only advance with SAMPLEs.
                self.outputs_sent = None
                return
            self.mark_lost(exc, t)

    def collect_pending_ack(self, t: float) -> None:
        """The ACK of last tick's SET_OUTPUTS (pipelined sim clock), if one is outstanding."""
        if self.ack_seq is not None:
            seq, self.ack_seq = self.ack_seq, None
            if not self.lost:
                self.collect_ack(seq, t)

    def heartbeat(self, bms_state: int, host_ms: int, defer: bool, t: float) -> None:
        if self.lost:
            return
        try:
            self.client.heartbeat(bms_state, host_ms, defer=defer)
        except LinkError as exc:
            self.mark_lost(exc, t)

    def mark_lost(self, exc: BaseException, t: float) -> None:
        if self.lost:
            return
        self.lost = True
        self.lost_reason = f"{type(exc).__name__}: {exc}"
        self.next_reconnect_s = t + RECONNECT_PERIOD_S
        if self._log_event is not None:
            self._log_event({"type": "board", "event": "lost", "time_s": t,
                             "stack": self.index, "port": self.port,
                             "reason": self.lost_reason})
