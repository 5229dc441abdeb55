"""The 4-board pack (ssb-4x23) end to end: four emulator processes on four ptys, one controller.

One tick asks every board for its sample before it waits on any (the boards sample in
parallel); the pack closes and runs a simulated minute; a fault injected on board 3 is
attributed to stack index 2 and nowhere else, and opens the whole pack.
"""

from __future__ import annotations

from pathlib import Path

from bms.app.latency import LOG_TIME_TOL_S, Bench
from bms.contactors import ContactorState
from bms.faults import FaultCode, Severity
from boards.config import load_pack
from hil.protocol import InjectedFault as Inject

PACK = load_pack("ssb-4x23")


def _spy(bench: Bench, calls: list[tuple[str, int]]) -> None:
    """Record the order of SAMPLE requests and waits per board (wraps the real methods)."""
    for s in bench.c.stacks:
        client, k = s.client, s.index
        real_request, real_wait = client.request_sample, client.wait_measurement_into

        def request(dt_s: float, _k: int = k, _f=real_request) -> int:
            calls.append(("request", _k))
            return _f(dt_s)

        def wait(seq: int, *args, _k: int = k, _f=real_wait, **kwargs):
            calls.append(("wait", _k))
            return _f(seq, *args, **kwargs)

        client.request_sample = request  # type: ignore[method-assign]
        client.wait_measurement_into = wait  # type: ignore[method-assign]


def test_four_boards_close_run_and_attribute_a_fault(tmp_path: Path) -> None:
    n = len(PACK.stacks)
    assert n == 4 and PACK.n_cells == 92
    with Bench(PACK, tmp_path / "log") as b:
        c = b.c
        assert len({e.path for e in b.emus}) == n          # four boards, four ptys
        calls: list[tuple[str, int]] = []
        _spy(b, calls)
        b.close_contactors()
        b.ticks(5)
        # Every round asks all four boards before it waits on any: the i-th SAMPLE of every
        # board leaves before the first wait for an i-th answer. The sim clock pipelines, so
        # a board's next SAMPLE leaves as soon as its answer came (one in flight per board);
        # (a wait before a board's first request answers a SAMPLE sent before the spy).
        pos: dict[tuple[str, int], list[int]] = {}
        for i, call in enumerate(calls):
            pos.setdefault(call, []).append(i)
        requests = [pos[("request", k)] for k in range(n)]
        waits = [[w for w in pos[("wait", k)] if w > requests[k][0]] for k in range(n)]
        rounds = min(len(r) for r in requests + waits)
        assert rounds >= 5
        for i in range(rounds):
            assert max(r[i] for r in requests) < min(w[i] for w in waits), calls
        for k in range(n):
            assert all(waits[k][i] < requests[k][i + 1] for i in range(rounds - 1)), calls

        b.run_for(60.0)
        assert c.contactors.state == ContactorState.CLOSED
        assert not c.table.fault_latched(), [r.code.name for r in c.table.latched()]
        assert all(s.measurements >= 600 and not s.lost for s in c.stacks)

        # Board 3 (stack index 2): a cell under thermistor 4 overheats.
        lim = PACK.protections["cell_overtemperature_discharge_c"]
        b.inject(Inject.CELL_HEAT, 13, 150.0, stacks=[2])
        assert b.tick_until(lambda: c.table.fault_latched(), 120.0)
        assert c.contactors.outputs == 0
        faults = [r for r in c.table.records() if r.severity >= Severity.FAULT]
        assert {(r.code, r.stack, r.cell) for r in faults} == {
            (FaultCode.CELL_OVERTEMPERATURE_DISCHARGE, 2, 3)}
        rec = faults[0]
        assert rec.trigger_value > lim.fault
        # Every board got the open command and reports its relays open.
        b.ticks(2)
        assert all(int(s.data.status) & 0x07 == 0 for s in c.stacks)
        assert c.contactors.state == ContactorState.FAULT
        assert rec.first_time_s > 60.0 - LOG_TIME_TOL_S


def test_one_emulator_process_serves_the_four_boards(tmp_path: Path) -> None:
    """start_emulators' default: one program, four ptys, four independent plants (their own
    seeds and truth files); the controller closes the pack and runs as with four processes."""
    import numpy as np

    from bms.app.emulators import start_emulators
    from bms.controller import Controller
    from bms.runlog import load_ticks

    emus = start_emulators(PACK, "sim", seed=4, scenario="udds", truth_dir=tmp_path)
    try:
        assert len({e.path for e in emus}) == 4
        assert len({e.process.pid for e in emus}) == 1
        c = Controller(PACK, [e.path for e in emus], clock="sim", log_dir=tmp_path / "log")
        c.open()
        c.request_close()
        c.run(30.0)
        assert c.contactors.state == ContactorState.CLOSED
        assert not c.table.fault_latched(), [r.code.name for r in c.table.latched()]
        summary = c.close()
        assert all(b["measurements"] == 300 and b["misses"] == 0 for b in summary["boards"])
    finally:
        codes = {e.stop() for e in emus}
    assert codes == {0}  # SIGTERM: a clean stop that closed every truth file
    truths = [load_ticks(e.truth_path) for e in emus]
    # The plants are four different stacks (seeds 4..7: per-cell spreads).
    v = [np.asarray(t["stack_voltage_v"]) for t in truths]
    assert all(len(x) >= 300 for x in v)
    assert len({round(float(x[-1]), 6) for x in v}) == 4
