"""``mean`` and ``std``: exact per-pixel moments, accumulated in float64."""

from __future__ import annotations

import numpy as np

from xaicxr.plugins.aggregator import Aggregator, State, as_batch, check_compatible, pooled_mean, reject_nonfinite

_ROWS = 64
"""Heatmaps centred at a time by ``std`` (bounds the float64 temporary to ~25 MB at 224x224)."""

_WIDEN_ROWS = 16
_F16_TO_F32_SCALE = np.float32(2.0 ** 112)


def float64_sum(batch: np.ndarray) -> np.ndarray:
    """``batch.sum(axis=0, dtype=float64)``, twice as fast for float16 batches of finite,
    non-negative values (heatmaps): numpy converts float16 one value at a time, so instead
    each bit pattern is shifted into a float32 and rescaled by 2^112, which is exact for
    every such float16, subnormals included; then the float32 rows are summed in float64."""
    if batch.dtype != np.float16 or not len(batch):
        return batch.sum(axis=0, dtype=np.float64)
    bits = batch.view(np.uint16)
    if np.max(bits) >= 0x7C00:  # a negative, infinite or NaN value: numpy's own path
        return batch.sum(axis=0, dtype=np.float64)
    total = np.zeros(batch.shape[1:], np.float64)
    buffer = np.empty((min(_WIDEN_ROWS, len(batch)), *batch.shape[1:]), np.uint32)
    for start in range(0, len(batch), _WIDEN_ROWS):
        rows = bits[start:start + _WIDEN_ROWS]
        widened = buffer[:len(rows)]
        np.left_shift(rows, 13, out=widened, dtype=np.uint32)
        values = widened.view(np.float32)
        values *= _F16_TO_F32_SCALE
        total += values.sum(axis=0, dtype=np.float64)
    return total


class Mean(Aggregator):
    """Per-pixel mean. State: ``n`` and the float64 ``sum``.

    Float64 accumulation is exact for float16 heatmaps in [0, 1] (each is a multiple of 2^-24,
    so sums of up to 2^29 of them are representable) and within n * 2^-53 relative otherwise;
    so ``merge`` of two halves equals ``update`` on the whole. An empty state gives zeros.
    """

    def init(self, shape: tuple[int, int]) -> State:
        return {"n": 0, "sum": np.zeros(shape, np.float64)}

    def update(self, state: State, heatmaps: np.ndarray) -> State:
        batch = as_batch(heatmaps, state["sum"].shape)
        if len(batch):
            total = float64_sum(batch)
            reject_nonfinite(total)
            state["sum"] += total
            state["n"] += len(batch)
        return state

    def merge(self, a: State, b: State) -> State:
        check_compatible(a, b, "sum")
        a["sum"] += b["sum"]
        a["n"] += b["n"]
        return a

    def finalize(self, state: State) -> np.ndarray:
        if state["n"] == 0:
            return np.zeros_like(state["sum"])
        return state["sum"] / state["n"]


class Std(Aggregator):
    """Per-pixel standard deviation, numerically stable: each batch is centred on its own mean
    (two-pass), and partial results are combined with the parallel update of Chan, Golub and
    LeVeque (1979): ``M2 = M2a + M2b + delta^2 * na * nb / n``. State: ``n``, ``mean``, ``m2``.

    ``ddof = 0`` gives the population std (numpy's default), ``ddof = 1`` the sample std.
    Zeros where ``n <= ddof`` (including an empty state).
    """

    def __init__(self, ddof: int = 0) -> None:
        if ddof < 0:
            raise ValueError(f"ddof must be >= 0, got {ddof}")
        self.ddof = ddof

    def init(self, shape: tuple[int, int]) -> State:
        return {"n": 0, "mean": np.zeros(shape, np.float64), "m2": np.zeros(shape, np.float64)}

    def update(self, state: State, heatmaps: np.ndarray) -> State:
        batch = as_batch(heatmaps, state["mean"].shape)
        for start in range(0, len(batch), _ROWS):
            rows = batch[start:start + _ROWS]
            mean = float64_sum(rows)
            reject_nonfinite(mean)
            mean /= len(rows)
            centred = np.subtract(rows, mean, dtype=np.float64)
            np.square(centred, out=centred)
            part = {"n": len(rows), "mean": mean, "m2": centred.sum(axis=0)}
            state = self.merge(state, part)
        return state

    def merge(self, a: State, b: State) -> State:
        n, mean, weight = pooled_mean(a, b)
        if b["n"]:
            a["m2"] += b["m2"] + (b["mean"] - a["mean"]) ** 2 * weight
            a["mean"], a["n"] = mean, n
        return a

    def finalize(self, state: State) -> np.ndarray:
        n = state["n"]
        if n <= self.ddof:
            return np.zeros_like(state["m2"])
        return np.sqrt(state["m2"] / (n - self.ddof))
