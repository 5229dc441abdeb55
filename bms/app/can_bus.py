"""The CAN bus and the CAN log of ``bms run --can`` and ``bms vcu``, from the command line.

``INTERFACE:CHANNEL`` names a python-can backend by its registry name (``socketcan:can0``,
``pcan:PCAN_USBBUS1``, ``kvaser:0``, ``slcan:/dev/ttyACM0``, ``serial:/dev/ttyUSB0``,
``virtual:name``, ...). Only this application module makes buses: the control path
(bms/vehicle/) takes the bus object and imports no backend.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from bms.app.errors import BoardError, UsageError

#: Per-backend options for byte-stream backends on a pty or a USB serial port:
#: ``serial``: the port's read timeout bounds every receive call (python-can's serial backend
#: ignores recv's own timeout); 2 ms lets a frame that is being received arrive whole while
#: a tick's drain of an empty bus costs at most that. ``slcan``: no 2 s sleep after opening
#: (it waits for an adapter's reset; a pty has none).
BACKEND_OPTIONS: dict[str, dict[str, Any]] = {
    "serial": {"timeout": 0.002},
    "slcan": {"sleep_after_open": 0.0, "timeout": 0.002},
}
#: CAN log formats by suffix (python-can's writers): Vector BLF and ASC (CANalyzer, CANape),
#: ASAM MDF4 (asammdf, CANape).
LOG_SUFFIXES = (".blf", ".asc", ".mf4")
#: Longest a send may wait on a byte-stream port whose reader stalled (``serial``): pyserial
#: waits forever by default, which would stop the control tick; python-can turns the timeout
#: into CanTimeoutError, which the link counts (and it stops that tick's sending). Assumption:
#: 10 ms is a tenth of the 0.1 s tick, far above a frame's 19 bytes at any baud rate in use.
SERIAL_WRITE_TIMEOUT_S = 0.010


def parse_spec(spec: str, option: str) -> tuple[str, str]:
    """``INTERFACE:CHANNEL`` -> (interface, channel); UsageError naming the option."""
    from can.interfaces import VALID_INTERFACES

    interface, sep, channel = spec.partition(":")
    if not sep or not interface or not channel:
        raise UsageError(f"{option} {spec}: expected INTERFACE:CHANNEL (e.g. socketcan:can0, "
                         "serial:/dev/ttyUSB0, virtual:bench)")
    if interface not in VALID_INTERFACES:
        close = difflib.get_close_matches(interface, sorted(VALID_INTERFACES), n=1)
        raise UsageError(f"{option} {spec}: unknown python-can interface {interface!r}"
                         + (f"; did you mean {close[0]!r}?" if close else ""),
                         f"one of {', '.join(sorted(VALID_INTERFACES))}")
    return interface, channel


def open_bus(spec: str, option: str = "--can") -> Any:
    """The python-can bus named by ``spec``; BoardError (exit 4) when it cannot open."""
    interface, channel = parse_spec(spec, option)
    import can

    try:
        bus = can.Bus(interface=interface, channel=channel, **BACKEND_OPTIONS.get(interface, {}))
        port = getattr(bus, "_ser", None) if interface == "serial" else None
        if port is not None:  # python-can keeps its pyserial port there (4.6)
            port.write_timeout = SERIAL_WRITE_TIMEOUT_S
        return bus
    except (can.CanError, OSError, ValueError, ImportError, TypeError) as exc:
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise BoardError(f"{option} {spec}: cannot open: {why}",
                         "is the adapter plugged in and the channel right (`ip link` for "
                         "socketcan, the device path for serial/slcan)?") from None


def check_log_path(path: Path | None, option: str = "--can-log") -> None:
    if path is not None and path.suffix.lower() not in LOG_SUFFIXES:
        raise UsageError(f"{option} {path}: unknown log format {path.suffix or '(none)'!r}; "
                         f"allowed: {', '.join(LOG_SUFFIXES)}")


def open_log(path: Path, option: str = "--can-log") -> Any:
    """python-can's writer for the suffix (BLF, ASC, MF4)."""
    check_log_path(path, option)
    import can

    try:
        return can.Logger(str(path))
    except OSError as exc:
        from bms.app.errors import OutputError

        raise OutputError(f"{option} {path}: cannot be written: {exc.strerror or exc}") \
            from None
