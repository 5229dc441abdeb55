"""The application layer: the ``bms`` subcommands, launchers of emulated boards, the demo's
scoring against the emulator's truth, benchmarks.

The only layer that composes the others (boards, hil, the BMS control path in ``bms``, the
emulator in ``hil.emulator``); nothing below imports it (pyproject.toml ``[tool.importlinter]``).
"""
