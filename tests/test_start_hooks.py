"""The public hooks a campaign (and a test) uses instead of reaching into private state:
``Controller(initial_soc=...)`` (the estimator started at a given SOC with the pack's sigma at
the first measurement) and ``hil.emulator.protocol_emu.emulated_board`` (the EmulatedBoard
behind an ``emu://`` port, from the client, its link or the pyserial port)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import serial

from bms.controller import Controller
from boards.config import load_pack
from hil.client import BoardClient
from hil.emulator.board import EmulatedBoard
from hil.emulator.protocol_emu import emu_url, emulated_board, register
from hil.link import SerialLink


def _controller(tmp_path: Path, **kwargs: object) -> Controller:
    register()
    pack = load_pack("ssb-23")
    return Controller(pack, [emu_url("ssb-23", 0, seed=3, soc=0.6)], clock="sim",
                      log_dir=tmp_path / "log", **kwargs)  # type: ignore[arg-type]


def test_initial_soc_starts_the_estimator_there(tmp_path: Path) -> None:
    pack = load_pack("ssb-23")
    c = _controller(tmp_path, initial_soc=0.25)
    try:
        c.open()
        c.run(1.0)
        (event,) = c.estimator_starts
        assert event["how"] == "given" and event["soc_mean"] == pytest.approx(0.25)
        assert event["soc_sigma_max"] == pytest.approx(pack.estimator.initial_soc_sigma)
        # at rest the voltages pull it towards the OCV's 0.6 (sigma wide), from below
        assert np.all(c.stacks[0].core.soc < 0.59)
    finally:
        c.close()
    cold = _controller(tmp_path / "cold")
    try:
        cold.open()
        cold.run(1.0)
        assert cold.estimator_starts[0]["how"].startswith("ocv")
        assert np.all(np.abs(cold.stacks[0].core.soc - 0.6) < 0.1)
    finally:
        cold.close()


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_initial_soc_out_of_range_is_refused(tmp_path: Path, bad: float) -> None:
    with pytest.raises(ValueError, match="initial_soc"):
        _controller(tmp_path, initial_soc=bad)


def test_emulated_board_from_client_link_and_port(tmp_path: Path) -> None:
    register()
    pack = load_pack("ssb-23")
    c = _controller(tmp_path)
    try:
        c.open()
        client = c.stacks[0].client
        board = emulated_board(client)
        assert isinstance(board, EmulatedBoard)
        assert emulated_board(client.link) is board
        assert client.link is not None and emulated_board(client.link.serial) is board
        c.run(0.5)
        assert board.counters.scenario_errors == []
    finally:
        c.close()
    assert emulated_board(client) is None  # closed: no link, no board
    # another kind of port has no emulated board
    link = SerialLink("loop://")
    try:
        assert emulated_board(link) is None
        assert isinstance(link.serial, serial.SerialBase)
    finally:
        link.close()
    assert emulated_board(BoardClient("loop://", None)) is None
    del pack
