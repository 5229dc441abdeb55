"""Measure a 10-minute scenario with the firmware in the loop (not part of make test: ~3 min).

Lockstep sim clock, plant stepped every 10 ms of MCU time, 5 A discharge from 80 % SOC, and a
controller-like tick every 100 ms: SAMPLE, SET_OUTPUTS (contactors closed), HEARTBEAT. Prints one
JSON line: wall time, simulated time, plant truth at the end and the harness statistics.

    .venv/bin/python boards/firmware/sim/measure_10min.py [minutes]
"""

from __future__ import annotations

import json
import sys
import time

from hil.client import BoardClient
from hil.emulator.plant import ConstantCurrent
from hil.firmware import FirmwareBoard


def main(minutes: float = 10.0) -> dict[str, object]:
    ticks = int(round(minutes * 600))
    t0 = time.perf_counter()
    with FirmwareBoard("ssb-23", seed=1, load=ConstantCurrent(current_a=-5.0),
                       initial_soc=0.8) as fw:
        with BoardClient(fw.path, fw.profile, timeout_s=5.0) as c:
            c.heartbeat(0, 0)
            c.set_outputs(0b011, 0, 10.0, 15.0)
            for k in range(ticks):
                c.sample(0.1)
                c.set_outputs(0b011, 0, 10.0, 15.0)
                c.heartbeat(2, k * 100)
            truth = fw.plant.truth()
        stats = fw.final_stats()
        exchanges = fw.stats.exchanges
    return {"wall_s": time.perf_counter() - t0, "mcu_sim_s": stats["sim_s"],
            "plant_t_s": truth.t_s, "current_a": truth.current_a,
            "soc_mean": float(truth.soc.mean()), "plant_exchanges": exchanges, "stats": stats}


if __name__ == "__main__":
    print(json.dumps(main(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)))
