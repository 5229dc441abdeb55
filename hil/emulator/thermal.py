"""Thermal network of one stack: n cells in a row, two end plates, the coolant (docs/emulator.md).

Nodes: cells 0..n-1, plate bottom (n), plate top (n+1), coolant (n+2). Neighbouring cells, the
end cells and their plates and every cell and the coolant exchange heat; every node loses heat
to ambient (the coolant through its flow, or only stagnant when the coolant is lost).
"""

from __future__ import annotations

import numpy as np

from hil.emulator.params import PlantParams


class ThermalNetwork:
    """Heat capacities and conductances of the network and its backward-Euler matrices."""

    def __init__(self, cell_heat_capacity_j_per_k: float, params: PlantParams, n: int) -> None:
        p = self.params = params
        self.n = n
        c = np.empty(n + 3)
        c[:n] = cell_heat_capacity_j_per_k
        c[n:n + 2] = p.plate_heat_capacity_j_per_k
        c[n + 2] = p.coolant_heat_capacity_j_per_k
        self.heat_cap = c
        g = np.zeros((n + 3, n + 3))
        for i in range(n - 1):
            g[i, i + 1] = g[i + 1, i] = p.cell_cell_w_per_k
        g[0, n] = g[n, 0] = p.end_cell_plate_w_per_k
        g[n - 1, n + 1] = g[n + 1, n - 1] = p.end_cell_plate_w_per_k
        g[:n, n + 2] = g[n + 2, :n] = p.cell_coolant_w_per_k
        self.g_net = g
        self.lap = np.diag(g.sum(axis=1)) - g
        self._cache: dict[tuple[float, bool, float], tuple[np.ndarray, ...]] = {}

    def matrix(self, dt_s: float, coolant_lost: bool,
               ambient_c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Backward Euler for C dT/dt = -L T + G_amb (T_amb - T) + Q: (inverse matrix, C/dt,
        G_amb T_amb), cached per (dt, coolant state, ambient), so a fixed step costs one small
        matrix-vector product. Unconditionally stable for any dt."""
        key = (dt_s, coolant_lost, ambient_c)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        p, n = self.params, self.n
        g_amb = np.zeros(n + 3)
        g_amb[:n] = p.cell_ambient_w_per_k
        g_amb[n:n + 2] = p.plate_ambient_w_per_k
        g_amb[n + 2] = p.coolant_stagnant_w_per_k if coolant_lost else p.coolant_flow_w_per_k
        c_dt = self.heat_cap / dt_s
        m = np.diag(c_dt + g_amb) + self.lap
        hit = (np.linalg.inv(m), c_dt, g_amb * ambient_c)
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[key] = hit
        return hit


__all__ = ["ThermalNetwork"]
