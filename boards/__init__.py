"""Board profiles (YAML: channel map, ADC scaling, calibration) and the reference firmware."""
from pathlib import Path

PROFILE_DIR = Path(__file__).resolve().parent


def profile_path(name: str) -> Path:
    """Path of the built-in board profile called ``name`` (e.g. ``emu-23``)."""
    return PROFILE_DIR / f"{name}.yaml"
