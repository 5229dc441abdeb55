"""``emu://``: an emulated board inside the host's own process, as a pyserial URL handler.

``serial.serial_for_url("emu://ssb-23?stack=0&seed=1&scenario=udds")`` (after :func:`register`)
returns a port whose other end is an :class:`hil.emulator.board.EmulatedBoard`: the host's
bytes go through the board's frame decoder and its replies through the frame encoder, exactly
as on a pty from ``bms emulate``, but with no second process, no pty and no thread. The board
answers a request synchronously inside :meth:`EmuSerial.write`, so a read finds the answer
waiting; a simulated hour of ticks costs no process wake-up.

URL: ``emu://PACK?stack=K&KEY=VALUE...``. PACK is a built-in pack name or a pack file path
(``emu:///abs/pack.yaml``; default ``ssb-23``); ``stack`` the 0-based stack (board) index
(``bms emulate --board``); every other key is a ``bms emulate`` option without its dashes
(``seed``, ``scenario``, ``soc``, ``temperature``, ``profile``, ``truth``, ``truth-dir``,
``truth-every``, ``clock``), parsed and checked by the same code (hil/emulator/cli.py), so the
seed is the board's own (``bms emulate --board K --seed S`` seeds that board S; ``bms run
--seed S`` seeds stack k with S + k: :func:`emu_url` builds those URLs).

Sim clock only: ``clock=real`` is refused. A board in the real clock samples on its own timer;
in the host's process that timer would run inside the controller's tick and take its deadline
budget, which is what the real clock is there to measure (use ``bms emulate --clock real`` and
its pty).

Lifetime: the port is the board and its stack together. Opening the URL powers up a fresh
board and plant (t = 0); closing the port ends them (the truth file is closed). A second open
of the same URL is a new stack, not the old one again (a pty names a running emulator; a URL
names how to make one).

Waiting: nothing ever arrives later than the write that caused it, so a read that finds
nothing (a reply the board dropped: LINK_DROP, LINK_SILENCE) sleeps its timeout, as a read on
a pty would: a campaign with link faults pays the host's reply timeouts in wall time.
"""

from __future__ import annotations

import argparse
import collections
import difflib
import re
import time
from pathlib import Path
from typing import NoReturn
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import serial
from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from hil.emulator.board import BoardOptions, EmulatedBoard
from hil.emulator.cli import EXIT_USAGE, OptionError, board_options, build_parser

__all__ = ["EmuSerial", "Serial", "EmuUrlError", "parse_emu_url", "emu_url", "register",
           "emulated_board", "SCHEME", "PACKAGE"]

SCHEME = "emu"
#: The package pyserial searches for ``protocol_emu`` (serial.protocol_handler_packages).
PACKAGE = "hil.emulator"
DEFAULT_PACK = "ssb-23"
_STACK_KEY = "stack"
# `bms emulate` options that are not query keys: the pack is the URL's host part, the board
# its `stack` key; --firmware is another program
_NOT_IN_URL = {"help", "pack", "board", "firmware"}


class EmuUrlError(ValueError):
    """A bad ``emu://`` URL: one line naming the URL and the part that is wrong. ``code`` is
    the exit class (2 a value, 3 a pack file, board profile or scenario; bms.app.errors maps
    it by name)."""

    def __init__(self, url: str, part: str, reason: str, code: int = EXIT_USAGE) -> None:
        super().__init__(f"{url}: {part}: {reason}" if part else f"{url}: {reason}")
        self.url, self.part, self.reason, self.code = url, part, reason, code


def _url_keys() -> dict[str, str]:
    """URL key -> ``bms emulate`` option, from the emulator's own parser."""
    keys = {_STACK_KEY: "--board"}
    for action in build_parser()._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt[2:] not in _NOT_IN_URL:
                keys[opt[2:]] = opt
    return keys


class _UrlParser(argparse.ArgumentParser):
    """The emulator's parser, raising instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise _ParseError(message)


class _ParseError(Exception):
    pass


def parse_emu_url(url: str) -> BoardOptions:
    """The board an ``emu://`` URL describes (pack, profile and scenario loaded and checked);
    EmuUrlError naming the part of the URL that is wrong."""
    parts = urlsplit(url)
    if parts.scheme.lower() != SCHEME:
        raise EmuUrlError(url, "", f"not an {SCHEME}:// URL")
    if parts.fragment:
        raise EmuUrlError(url, f"#{parts.fragment}", "an emu:// URL has no fragment; options "
                          "go in the query (?stack=0&seed=1)")
    pack = (parts.netloc + parts.path) or DEFAULT_PACK
    keys = _url_keys()
    argv = ["--pack", pack]
    given: dict[str, str] = {}
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True) \
            if parts.query else []
    except ValueError:
        raise EmuUrlError(url, f"?{parts.query}", "not KEY=VALUE pairs joined by &") from None
    for raw_key, value in query:
        key = raw_key.replace("_", "-")
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=1)
            raise EmuUrlError(url, raw_key, "unknown option"
                              + (f"; did you mean {close[0]!r}?" if close else "")
                              + f" allowed: {', '.join(sorted(keys))}")
        if key in given:
            raise EmuUrlError(url, raw_key, "given twice")
        given[key] = value
        argv += [keys[key], value]
    try:
        args = build_parser(_UrlParser).parse_args(argv)
    except _ParseError as exc:
        text = str(exc)
        m = re.match(r"argument --([\w-]+)(?:/[^:]*)?: (.*)", text)
        if m:
            key = _STACK_KEY if m.group(1) == "board" else m.group(1)
            raise EmuUrlError(url, key, m.group(2)) from None
        raise EmuUrlError(url, "", text) from None
    if args.clock != "sim":
        raise EmuUrlError(url, f"clock={args.clock}", "the in-process board serves the sim "
                          "clock only; for the real clock run `bms emulate --clock real` and "
                          "give its pty")
    try:
        (opts,) = board_options(args)
    except OptionError as exc:
        key = _STACK_KEY if exc.key == "board" else exc.key
        if exc.plain:  # a file: the reason names it
            key = "pack" if key == "profile" and exc.value is None else key
            raise EmuUrlError(url, f"{key}={given.get(key, pack)}", exc.reason,
                              exc.code) from None
        value = given.get(key, exc.value)
        raise EmuUrlError(url, f"{key}={value}" if value is not None else key, exc.reason,
                          exc.code) from None
    return opts


def emu_url(pack: str | Path, stack: int = 0, **options: object) -> str:
    """The URL of stack ``stack`` of ``pack`` with ``bms emulate`` options (None values left
    out; ``truth_dir=...`` is written ``truth-dir``). For the boards ``bms run --seed S``
    starts, pass ``seed=S + stack``."""
    query = {_STACK_KEY: stack}
    for key, value in options.items():
        if value is not None:
            query[key.replace("_", "-")] = value
    where = str(pack)
    return f"{SCHEME}://{quote(where, safe='/-._~')}?{urlencode(query)}"


def register() -> None:
    """Make ``serial.serial_for_url`` know ``emu://`` (idempotent). Called by the process that
    wants it (bms.app); the control path only ever sees a port URL."""
    if PACKAGE not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(PACKAGE)


def emulated_board(port: object) -> EmulatedBoard | None:
    """The :class:`EmulatedBoard` behind an open ``emu://`` port, for what only the emulator
    knows (its counters, e.g. ``counters.scenario_errors``; its plant's truth). ``port``: the
    pyserial port (:class:`EmuSerial`), a ``hil.link.SerialLink`` over it, or a
    ``hil.client.BoardClient`` using one (duck-typed: this layer imports neither). None when
    it is another kind of port (a pty, a real board) or closed."""
    for _ in range(3):  # client -> link -> pyserial port
        if isinstance(port, EmuSerial):
            return port.board
        port = getattr(port, "link", None) if hasattr(port, "link") else \
            getattr(port, "serial", None)
    return None


class EmuSerial(SerialBase):
    """A pyserial port whose far end is an EmulatedBoard in this process (see the module)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.board: EmulatedBoard | None = None
        self._rx: collections.deque[bytes] = collections.deque()
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        self.board = EmulatedBoard(parse_emu_url(str(self._port)))
        self._rx.clear()
        self._take()  # the boot INFO
        self.is_open = True

    def close(self) -> None:
        board, self.board = self.board, None
        self.is_open = False
        self._rx.clear()
        if board is not None:
            board.close()

    def _reconfigure_port(self, force_update: bool = False) -> None:
        """Baud rate, parity, timeouts: nothing to configure on an in-process line."""

    def _update_dtr_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_break_state(self) -> None:
        pass

    def _take(self) -> None:
        out = self.board.outbox  # type: ignore[union-attr]
        if out:
            self._rx.extend(out)
            out.clear()

    @property
    def in_waiting(self) -> int:
        """The bytes of the next frame the board sent (a whole frame per read, as a pty read
        usually brings: the host's fast lane takes a MEASUREMENT read alone)."""
        if not self.is_open:
            raise PortNotOpenError()
        rx = self._rx
        return len(rx[0]) if rx else 0

    def read_frame(self) -> bytes:
        """``read(in_waiting)`` in one call: the next frame the board sent whole, b"" when
        there is none (never waits). hil.link.SerialLink reads a port that has it this way."""
        if not self.is_open:
            raise PortNotOpenError()
        rx = self._rx
        return rx.popleft() if rx else b""

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise PortNotOpenError()
        rx = self._rx
        if not rx:
            # Nothing will come without a request: wait as a quiet port would.
            timeout = self._timeout
            if timeout is None:
                raise SerialException(f"{self._port}: a read without timeout would wait "
                                      "forever: the in-process board answers requests only")
            if timeout > 0:
                time.sleep(timeout)
            return b""
        if len(rx[0]) == size:  # the usual read: the whole next frame, as in_waiting said
            return rx.popleft()
        out = bytearray()
        while rx and size > 0:
            chunk = rx[0]
            if len(chunk) <= size:
                rx.popleft()
                out += chunk
                size -= len(chunk)
            else:
                out += chunk[:size]
                rx[0] = chunk[size:]
                size = 0
        return bytes(out)

    def write(self, data: bytes) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        if data.__class__ is not bytes:
            data = bytes(data)
        board = self.board
        board.feed(data)  # type: ignore[union-attr]
        out = board.outbox  # type: ignore[union-attr]
        if out:  # _take, inlined: once per request
            self._rx.extend(out)
            out.clear()
        return len(data)

    def flush(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()

    def reset_input_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()
        self._rx.clear()

    def reset_output_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()

    @property
    def out_waiting(self) -> int:
        return 0


#: The name pyserial looks up in a ``protocol_*`` module.
Serial = EmuSerial
