"""Load demands the plant asks each step for a current (A, + = charge): rest, constant
current with stop conditions, a CC-CV charger and current profiles (drive cycles)."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class Load(abc.ABC):
    """A load demand. The plant asks it each step for the current it wants (A, + = charge).

    ``v_open`` and ``r_eff`` describe every cell's terminal voltage as ``v = v_open + r_eff i``
    for this step, so a CV charger can solve for the current that puts the highest cell at its
    CV voltage exactly. ``respect_limits``: the plant clips the demand to SET_OUTPUTS' limits.
    """

    respect_limits: bool = True
    done: bool = False

    @abc.abstractmethod
    def demand_a(self, t_s: float, v_open: np.ndarray, r_eff: np.ndarray) -> float:
        """The current this load wants now (A, + = charge)."""

    def observe(self, cell_voltage_v: np.ndarray) -> None:  # noqa: B027 (optional hook)
        """Called after each step with the true terminal voltages (for stop conditions); loads
        without stop conditions keep this no-op."""


@dataclass
class Rest(Load):
    """No current."""

    done: bool = False

    def demand_a(self, t_s: float, v_open: np.ndarray, r_eff: np.ndarray) -> float:
        return 0.0


@dataclass
class ConstantCurrent(Load):
    """Constant current, optionally until the lowest cell falls below / highest rises above."""

    current_a: float
    until_min_cell_v: float | None = None
    until_max_cell_v: float | None = None
    respect_limits: bool = True
    done: bool = False

    def demand_a(self, t_s: float, v_open: np.ndarray, r_eff: np.ndarray) -> float:
        return 0.0 if self.done else self.current_a

    def observe(self, cell_voltage_v: np.ndarray) -> None:
        if self.until_min_cell_v is not None and cell_voltage_v.min() <= self.until_min_cell_v:
            self.done = True
        if self.until_max_cell_v is not None and cell_voltage_v.max() >= self.until_max_cell_v:
            self.done = True


@dataclass
class CcCvCharge(Load):
    """CC-CV charger regulating the highest cell at cv_cell_v; ends when the CV current
    tapers below cutoff_a. Always obeys SET_OUTPUTS' charge limit (protocol.md)."""

    current_a: float
    cv_cell_v: float = 4.2
    cutoff_a: float = 0.25
    done: bool = False

    def __post_init__(self) -> None:
        self.respect_limits = True

    def demand_a(self, t_s: float, v_open: np.ndarray, r_eff: np.ndarray) -> float:
        if self.done:
            return 0.0
        i_cv = float(np.min((self.cv_cell_v - v_open) / r_eff))
        i = min(self.current_a, i_cv)
        if i < self.cutoff_a:
            self.done = True
            return 0.0
        return i


@dataclass
class CurrentProfile(Load):
    """A current profile (drive cycle): linear interpolation of current_a over time_s."""

    time_s: np.ndarray
    current_a: np.ndarray
    scale: float = 1.0
    loop: bool = False
    respect_limits: bool = True
    done: bool = False

    def __post_init__(self) -> None:
        self.time_s = np.asarray(self.time_s, dtype=float)
        self.current_a = np.asarray(self.current_a, dtype=float)
        if self.time_s.ndim != 1 or self.time_s.shape != self.current_a.shape \
                or len(self.time_s) < 2 or np.any(np.diff(self.time_s) <= 0):
            raise ValueError("CurrentProfile: time_s strictly increasing, same length as current")

    @property
    def duration_s(self) -> float:
        return float(self.time_s[-1] - self.time_s[0])

    def demand_a(self, t_s: float, v_open: np.ndarray, r_eff: np.ndarray) -> float:
        t = self.time_s[0] + t_s
        if self.loop:
            t = self.time_s[0] + math.fmod(t_s, self.duration_s)
        elif t > self.time_s[-1]:
            self.done = True
            return 0.0
        return self.scale * float(np.interp(t, self.time_s, self.current_a))

    @classmethod
    def from_csv(cls, path: str | Path, **kwargs: Any) -> CurrentProfile:
        """CSV with a header and columns time_s, current_a (comment lines start with #)."""
        data = np.loadtxt(path, delimiter=",", comments="#", skiprows=1, ndmin=2)
        return cls(time_s=data[:, 0], current_a=data[:, 1], **kwargs)


__all__ = ["CcCvCharge", "ConstantCurrent", "CurrentProfile", "Load", "Rest"]
