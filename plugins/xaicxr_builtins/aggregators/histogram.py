"""``median`` and ``trimmed-mean`` from a mergeable per-pixel histogram sketch over [0, 1].

Why a sketch rather than an exact median: an exact per-pixel median needs every heatmap at
once (2 GB for 20,000 maps at 224x224 in float16) or several passes over the store; a
histogram with fixed bins is streaming, and merging two is adding counts, so sharded runs
combine exactly (``merge`` of two halves equals ``update`` on the whole, bit for bit).

Error bound: a value x is counted in bin ``floor(x * bins)`` (x clipped to [0, 1]; 1.0 goes
to the last bin). Binning is monotone, so the r-th smallest value of a pixel lies in the bin
that holds rank r, and reporting that bin's centre is off by at most half a bin width. The
median and the trimmed mean are averages of order statistics, so both are within
``1 / (2 * bins)`` of the exact figure (``np.median``, ``scipy.stats.trim_mean``) on the
clipped data: 1/1024 for the default 512 bins.

Memory: ``H * W * bins`` counters, uint16 while a state has seen fewer than 65,536 heatmaps
(51 MB at 224x224x512), widened to uint32 (then uint64) when more arrive: no cell can count
more than ``n``. The size never depends on ``n`` otherwise.

Speed: the update is a scatter-add (``np.add.at``, exact with repeated indices). It goes tile
by tile (128 pixels x all their bins = 128 KiB of counters, which stay in the L2 cache; a
scatter over the whole 51 MB table was 3-4x slower), float16 heatmaps (the store's format) are
binned through a lookup table on their bit patterns (numpy's float16 arithmetic is not
vectorised). About 0.2 ms of CPU per 224x224 heatmap on the 2-core reference machine; the
scatter (~2 ns per value) is most of it. Threads do not help: ``np.add.at`` (like
``np.bincount`` and fancy-index assignment) holds the GIL in numpy 2.4; to use several cores,
run shards in separate processes (``xaicxr template --shard K/N``) and merge their states.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from xaicxr.plugins.aggregator import Aggregator, State, as_batch, check_compatible

TILE_BYTES = 1 << 17
"""Counters touched per scatter call; small enough to stay in the L2 cache."""

_FINALIZE_PIXELS = 2048
"""Pixels whose cumulative histograms are computed at once in ``finalize`` (~8 MB)."""


def counter_dtype(n: int) -> np.dtype:
    """The narrowest unsigned integer that can count ``n`` heatmaps."""
    for dtype in (np.uint16, np.uint32):
        if n <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


@lru_cache(maxsize=8)
def float16_bins(bins: int) -> np.ndarray:
    """Bin index (intp) of every float16 bit pattern; NaN patterns map to 0 (callers reject NaN)."""
    values = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    with np.errstate(invalid="ignore"):
        index = np.floor(values * bins)
    index = np.nan_to_num(index, nan=0.0, posinf=bins - 1, neginf=0.0)
    table = np.clip(index, 0, bins - 1).astype(np.intp)
    table.setflags(write=False)
    return table


def reject_nan(flat: np.ndarray) -> None:
    """Raise ``ValueError`` if a float batch holds NaN, in one vectorised max over the data
    (float16: NaN bit patterns exceed 0x7C00; only if a pattern that high occurs, which
    negative values also give, is the exact test made)."""
    if not flat.size:
        return
    if flat.dtype == np.float16:
        bits = flat.view(np.uint16)
        found = np.max(bits) > 0x7C00 and np.max(bits & 0x7FFF) > 0x7C00
    else:
        found = np.isnan(np.max(flat))
    if found:
        raise ValueError("heatmaps contain NaN")


def quantize(flat: np.ndarray, bins: int) -> np.ndarray:
    """Bin indices (intp, same shape) of a float array without NaN; values outside [0, 1]
    are clipped. float16 goes through a lookup table on its bit patterns (2-3x faster than
    converting to float32 and scaling: numpy's float16 arithmetic is not vectorised)."""
    if flat.dtype == np.float16:
        return np.take(float16_bins(bins), flat.view(np.uint16))
    scaled = np.multiply(flat, bins, dtype=np.float64 if flat.dtype == np.float64 else np.float32)
    np.floor(scaled, out=scaled)
    np.clip(scaled, 0, bins - 1, out=scaled)
    return scaled.astype(np.intp)


def accumulate(counts: np.ndarray, flat: np.ndarray) -> None:
    """Count the values of ``flat`` (N, P), free of NaN, into ``counts`` (P, bins).

    Tile by tile: the bin indices of a few hundred pixels are computed straight into a
    small intp array, offset to their pixel's row, and scattered with ``np.add.at`` (exact
    with repeated indices) into counters that stay in cache.
    """
    pixels, bins = counts.shape
    table = counts.reshape(-1)
    tile = _tile(counts)
    offsets = np.arange(tile, dtype=np.intp) * bins
    one = counts.dtype.type(1)
    for start in range(0, pixels, tile):
        stop = min(start + tile, pixels)
        keys = quantize(flat[:, start:stop], bins)
        keys += offsets[:stop - start]
        np.add.at(table[start * bins:stop * bins], keys.reshape(-1), one)


def _tile(counts: np.ndarray) -> int:
    return max(1, TILE_BYTES // (counts.shape[1] * counts.itemsize))


class HistogramSketch(Aggregator):
    """Per-pixel histogram of ``bins`` equal bins over [0, 1]; state ``n`` and ``counts``
    (H, W, bins). Subclasses turn it into a template in ``finalize``."""

    def __init__(self, bins: int = 512) -> None:
        if not 256 <= bins <= 4096:
            raise ValueError(f"bins must be between 256 and 4096 (error bound 1/(2*bins)), got {bins}")
        self.bins = bins

    def init(self, shape: tuple[int, int]) -> State:
        return {"n": 0, "counts": np.zeros((*shape, self.bins), counter_dtype(0))}

    def update(self, state: State, heatmaps: np.ndarray) -> State:
        counts = state["counts"]
        batch = as_batch(heatmaps, counts.shape[:-1])
        if not len(batch):
            return state
        flat = batch.reshape(len(batch), -1)
        reject_nan(flat)
        counts = _widen(counts, state["n"] + len(batch))
        accumulate(counts.reshape(-1, self.bins), flat)
        state["counts"] = counts
        state["n"] += len(batch)
        return state

    def merge(self, a: State, b: State) -> State:
        check_compatible(a, b, "counts")
        counts = _widen(a["counts"], a["n"] + b["n"])
        np.add(counts, b["counts"], out=counts, casting="unsafe")
        a["counts"] = counts
        a["n"] += b["n"]
        return a

    def finalize(self, state: State) -> np.ndarray:
        counts = state["counts"]
        if state["n"] == 0:
            return np.zeros(counts.shape[:-1], np.float64)
        flat = counts.reshape(-1, self.bins)
        out = np.empty(len(flat), np.float64)
        for start in range(0, len(flat), _FINALIZE_PIXELS):
            block = flat[start:start + _FINALIZE_PIXELS]
            out[start:start + len(block)] = self._estimate(block, np.cumsum(block, axis=1, dtype=np.int64),
                                                           state["n"])
        return out.reshape(counts.shape[:-1])

    def _estimate(self, counts: np.ndarray, cumulative: np.ndarray, n: int) -> np.ndarray:
        raise NotImplementedError

    def _centre(self, index: np.ndarray) -> np.ndarray:
        return (index + 0.5) / self.bins


def _widen(counts: np.ndarray, n: int) -> np.ndarray:
    dtype = counter_dtype(n)
    return counts if dtype.itemsize <= counts.itemsize else counts.astype(dtype)


class Median(HistogramSketch):
    """Per-pixel median (``np.median`` semantics: the mean of the two middle values when n is
    even), within ``1 / (2 * bins)`` (1/1024 by default); see the module docstring."""

    def _estimate(self, counts: np.ndarray, cumulative: np.ndarray, n: int) -> np.ndarray:
        low = (cumulative <= (n - 1) // 2).sum(axis=1)
        high = (cumulative <= n // 2).sum(axis=1)
        return (self._centre(low) + self._centre(high)) / 2


class TrimmedMean(HistogramSketch):
    """Per-pixel mean after cutting ``proportion`` of the values from each end, as
    ``scipy.stats.trim_mean`` does (``int(proportion * n)`` values per end), within
    ``1 / (2 * bins)``: every kept order statistic is replaced by its bin centre."""

    def __init__(self, proportion: float = 0.1, bins: int = 512) -> None:
        if not 0 <= proportion < 0.5:
            raise ValueError(f"proportion must be in [0, 0.5), got {proportion}")
        super().__init__(bins)
        self.proportion = proportion

    def _estimate(self, counts: np.ndarray, cumulative: np.ndarray, n: int) -> np.ndarray:
        cut = int(self.proportion * n)
        low, high = cut, n - cut
        before = cumulative - counts
        kept = np.minimum(cumulative, high) - np.maximum(before, low)
        np.maximum(kept, 0, out=kept)
        centres = self._centre(np.arange(self.bins))
        return kept @ centres / (high - low)
