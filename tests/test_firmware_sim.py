"""Firmware in the loop: the exact ELF on a simulated ATmega2560 (simavr harness), the plant on
its pins, talked to over a real pty with the project's BoardClient: what only the firmware has
(readings against the plant truth through the LTC6811/HX711/ADC paths, outputs at the pins and
in the plant, heartbeat loss in MCU time, FAULT_INJECT unsupported, SAMPLE -> MEASUREMENT
cycles, its 100 ms period in the real clock), shorter than against the Python emulator because
the simulated MCU runs at a few times real time.

The wire protocol checks every board must pass (handshake, SAMPLE, SET_OUTPUTS NACKs, the
watchdog re-armed by a heartbeat, broken frames, HELLO versions) run on this firmware and on the
emulator from tests/test_board_protocol.py (the ``board`` fixture of tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
from firmware_tools import require_tools

from hil.client import BoardClient, BoardNackError
from hil.firmware import F_CPU_HZ, FirmwareBoard
from hil.protocol import NackError
from hil.scaling import Scaler

pytestmark = pytest.mark.firmware

ST_POS, ST_NEG, ST_PRE, ST_WD, ST_BOOT, ST_BAL, ST_ERR, ST_SIM = (1 << i for i in range(8))
DT_S = 0.1


@pytest.fixture
def fw() -> FirmwareBoard:
    require_tools()
    board = FirmwareBoard("ssb-23", seed=3, clock="sim", initial_soc=0.6)
    board.start()
    yield board
    board.stop()


def client(board: FirmwareBoard) -> BoardClient:
    # Timeouts are failure bounds only: in lockstep a reply costs ~10 ms of simulated time.
    return BoardClient(board.path, board.profile, timeout_s=5.0, retries=0)


def test_boot_info_and_measurement_in_real_units(fw: FirmwareBoard) -> None:
    with client(fw) as c:
        info = c.info
        assert (info.board_kind, info.n_cells, info.n_thermistors, info.n_load_cells) == (
            2, 23, 6, 4)
        assert info.board_id == "m2560-ltc6811" and info.heartbeat_timeout_ms == 1000
        assert info.capabilities & 1 and info.capabilities & 4  # SIM_CLOCK (strap), BALANCING
        assert not info.capabilities & 2                         # no FAULT_INJECT
        first = c.sample(DT_S)
        assert first.status & ST_BOOT and first.status & ST_SIM
        c.heartbeat(0, 0)
        for _ in range(5):
            m = c.sample(DT_S)
        assert not m.status & (ST_BOOT | ST_ERR)
        r = Scaler(fw.profile).readings(m)
        truth = fw.plant.truth()
    # The sample is up to one 100 ms period old; at rest the plant barely moves in that time.
    # LTC6811 path: 100 uV counts through the register-level monitor model and PEC checks.
    assert np.max(np.abs(r.cell_voltage_v - truth.cell_voltage_v)) < 0.005
    assert np.all(np.isfinite(r.temperature_c))
    assert np.max(np.abs(r.temperature_c - 25.0)) < 1.5
    # HX711 bit-level path: 24-bit words, sign-extended, 0.000652 kPa per count.
    assert np.max(np.abs(r.pressure_kpa - truth.load_cell_pressure_kpa)) < 25.0
    # Shunt amplifier on a 10-bit ADC: one LSB of 5 V / 1024 is 98 mA at 20 A/V.
    assert abs(r.current_a - truth.current_a) < 0.15
    assert abs(r.timestamp_s - 0.6) < 0.25  # board clock = simulated MCU time


def test_outputs_reach_the_pins_and_the_plant(fw: FirmwareBoard) -> None:
    mask = (1 << 0) | (1 << 11) | (1 << 12) | (1 << 22)  # both monitors, both ends
    with client(fw) as c:
        c.heartbeat(2, 0)
        c.set_outputs(0b101, mask, 5.0, 8.0)  # contactor+ and precharge
        for _ in range(3):
            m = c.sample(DT_S)
        o = fw.plant.outputs
        assert (o.contactor_pos, o.contactor_neg, o.precharge) == (True, False, True)
        assert o.balance_mask == mask  # DCC bits written into both LTC6811 configurations
        assert (o.charge_limit_a, o.discharge_limit_a) == (5.0, 8.0)
        assert m.status & (ST_POS | ST_NEG | ST_PRE) == ST_POS | ST_PRE  # pins read back
        assert m.status & ST_BAL
        with pytest.raises(BoardNackError) as e:
            c.set_outputs(0b011, 1 << 23, 0.0, 0.0)  # bit beyond 23 cells
        assert e.value.error == NackError.BAD_VALUE
        c.set_outputs(0, 0, 0.0, 0.0)
        c.sample(DT_S)
        c.sample(DT_S)
        o = fw.plant.outputs
        assert (o.contactor_pos, o.precharge, o.balance_mask) == (False, False, 0)


def test_heartbeat_loss_opens_contactors_in_simulated_time(fw: FirmwareBoard) -> None:
    with client(fw) as c:
        c.heartbeat(2, 0)
        c.set_outputs(0b011, 0, 1.0, 1.0)
        c.sample(DT_S)
        assert fw.plant.outputs.contactor_pos
        # The host keeps sampling but stops beating: 1000 ms of board time later it opens.
        tripped_after = None
        for k in range(1, 30):
            m = c.sample(DT_S)
            if m.status & ST_WD:
                tripped_after = k
                break
        assert tripped_after is not None and 9 <= tripped_after <= 12
        assert not m.status & (ST_POS | ST_NEG | ST_PRE)
        assert not fw.plant.outputs.contactor_pos
        opened = [e for e in fw.stats.relay_events if e[1] == 0]
        since_hb_us = opened[-1][2]
        print(f"\nheartbeat loss -> contactors open: {since_hb_us / 1000:.3f} ms of MCU time "
              f"(timeout 1000 ms)")
        # The firmware's clock ticks in whole ms: 'now - last >= 1000 ticks' is 999..1001 ms of
        # real time, plus one main-loop pass; measured from the beat's last byte at the UART.
        assert 999_000 <= since_hb_us <= 1_002_000
        with pytest.raises(BoardNackError) as e:
            c.set_outputs(0b011, 0, 1.0, 1.0)
        assert e.value.error == NackError.STATE
        c.heartbeat(0, 1)
        c.set_outputs(0b011, 0, 1.0, 1.0)
        m = c.sample(DT_S)
        assert not m.status & ST_WD and m.status & ST_POS


def test_fault_inject_is_nacked_unsupported(fw: FirmwareBoard) -> None:
    with client(fw) as c:
        with pytest.raises(BoardNackError) as e:
            c.inject_fault(1, 3, 100.0)
        assert e.value.error == NackError.UNSUPPORTED
        c.sample(DT_S)  # still answering


def test_sample_to_measurement_cycles(fw: FirmwareBoard) -> None:
    """Measures (in MCU cycles, deterministic) SAMPLE -> MEASUREMENT over many samples."""
    # dt varied (seeded) so SAMPLEs land at every phase of the 100 ms sampling cycle: during a
    # register read, an HX711 read, the ADC sums or idle; the maximum is then a worst case.
    rng = np.random.default_rng(7)
    with client(fw) as c:
        for k in range(150):
            c.heartbeat(0, k)
            c.sample(float(rng.uniform(0.001, 0.060)))
    st = fw.final_stats()
    first, last = st["sample_to_first_byte_max_cycles"], st["sample_to_last_byte_max_cycles"]
    print(f"\nSAMPLE -> MEASUREMENT over {st['samples']} samples: first byte max {first} cycles "
          f"({first / F_CPU_HZ * 1e3:.2f} ms), last byte max {last} cycles "
          f"({last / F_CPU_HZ * 1e3:.2f} ms), mean {st['sample_to_first_byte_mean_cycles']:.0f}"
          f" / {st['sample_to_last_byte_mean_cycles']:.0f}; simulated {st['sim_s']:.1f} s in "
          f"{st['wall_s']:.1f} s wall")
    assert st["samples"] >= 150
    assert st["pec_cmd_errors"] == 0 and st["pec_data_errors"] == 0
    # Bounded by design: one scheduler step (a 20-byte register read, 2 ms in simavr's SPI)
    # plus 96 bytes of UART; a blocked main loop would show up here.
    assert first < 0.010 * F_CPU_HZ
    assert last < 0.030 * F_CPU_HZ


def test_real_clock_runs_free_and_answers(tmp_path) -> None:
    require_tools()
    with FirmwareBoard("ssb-23", clock="real", speed=1.0) as board:
        with BoardClient(board.path, board.profile, timeout_s=2.0, retries=1) as c:
            assert not c.info.capabilities & 1  # no SIM_CLOCK strap in real mode
            c.heartbeat(0, 0)
            a = c.sample(0.0)
            b = c.sample(0.0)
            while b.timestamp_ms == a.timestamp_ms:
                b = c.sample(0.0)
            assert not b.status & ST_SIM
            assert b.timestamp_ms - a.timestamp_ms == 100  # the firmware's own 100 ms period


def test_precharge_through_relay_pins_and_bus_adc(fw: FirmwareBoard) -> None:
    """Precharge relay pin -> plant link capacitor -> bus amplifier -> ADC1 -> bus counts."""
    scaler = Scaler(fw.profile)
    with client(fw) as c:
        c.heartbeat(1, 0)
        r0 = scaler.readings(c.sample(DT_S))
        assert r0.bus_voltage_v < 1.0  # link discharged, contactors open
        c.set_outputs(0b110, 0, 0.0, 0.0)  # contactor- and precharge
        for _ in range(10):
            c.heartbeat(1, 0)
            r = scaler.readings(c.sample(DT_S))
        stack_v = float(np.sum(r.cell_voltage_v))
        # 1 s is many precharge time constants (plant: R_pre x C_link); the ADC step is 0.12 V
        assert 0.95 * stack_v < r.bus_voltage_v < 1.01 * stack_v
