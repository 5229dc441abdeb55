"""``bms monitor``: the read-only viewer of a running BMS's monitor socket (bms/monitor.py).

Connects, reads one JSON line per tick and prints a compact table; it never writes to the socket.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any

from bms.monitor import default_socket_path


def read_snapshots(path: str | Path, timeout_s: float | None = None):
    """Yield snapshots (dicts) from a running BMS until it closes the socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    sock.connect(str(path))
    buffer = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line:
                    yield json.loads(line)
    finally:
        sock.close()


def _f(value: Any) -> float:
    """A snapshot number for display (strict JSON carries NaN as null)."""
    return float("nan") if value is None else float(value)


def render(snapshot: dict[str, Any]) -> str:
    """A compact text view of one snapshot (also used by ``bms demo``'s live view)."""
    active = list(snapshot.get("active_faults") or [])
    latched = [f for f in snapshot.get("latched_faults") or [] if f not in active]
    lines = [
        f"t={_f(snapshot.get('time_s', 0.0)):9.1f} s  state={snapshot.get('state', '?'):<9} "
        f"I={_f(snapshot.get('current_a')):+7.2f} A  "
        f"limits +{_f(snapshot.get('charge_limit_a')):.1f}/"
        f"-{_f(snapshot.get('discharge_limit_a')):.1f} A  "
        f"faults={','.join(active) or '-'}"
        # A latched fault that is no longer active still holds the pack in FAULT: say which.
        + (f" latched={','.join(latched)}" if latched else "")
    ]
    for stack in snapshot.get("stacks", []):
        v = [_f(x) for x in stack.get("cell_voltage_v", [])]
        soc = [_f(x) for x in stack.get("soc", [])] or [float("nan")]
        if v:
            temps = [_f(x) for x in stack.get("temperature_c", [])] or [float("nan")]
            sigma = [_f(x) for x in stack.get("soc_sigma", [])] or [0.0]
            lines.append(
                f"  {stack.get('name', '?'):<8} V {min(v):.3f}..{max(v):.3f}  "
                f"SOC {100 * min(soc):5.1f}..{100 * max(soc):5.1f} % "
                f"(+/-{300 * max(sigma):.1f} %)  "
                f"T {max(temps):5.1f} C  "
                f"p {_f(stack.get('pressure_kpa')):6.0f} kPa "
                f"(exp {_f(stack.get('pressure_expected_kpa')):6.0f})  "
                f"bal {stack.get('balance_mask', 0):06x}"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bms monitor",
        description="Attach read-only to a running BMS (bms run / bms demo) and show it live. "
        "The channel is a Unix socket only the same user can open; it cannot command outputs.",
        epilog="examples:\n  bms monitor\n  bms monitor /run/user/1000/ssb-bms/bms.sock",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("socket", nargs="?", default=str(default_socket_path()))
    parser.add_argument("--count", type=int, default=0, help="stop after N snapshots (0 = never)")
    args = parser.parse_args(argv)
    try:
        shown = 0
        for snapshot in read_snapshots(args.socket):
            print(render(snapshot), flush=True)
            shown += 1
            if args.count and shown >= args.count:
                break
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"bms monitor: no BMS is running at {args.socket}", file=sys.stderr)
        return 1
    return 0
