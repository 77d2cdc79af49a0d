"""``pca``: eigen-heatmaps, the principal components of a class's heatmaps (Lucas et al. 2021).

Streaming and mergeable incremental PCA (Ross et al. 2008, as in scikit-learn's
``IncrementalPCA``). A state summarises the centred data matrix by its ``n``, ``mean``, top
``rank = k + oversample`` singular values ``s`` and right singular vectors ``v``, plus ``ss``,
the total sum of squares about the mean (for explained-variance ratios). Two summaries merge
exactly up to the truncation: the centred union is spanned by

    [ s_a * v_a ;  s_b * v_b ;  sqrt(n_a n_b / n) * (mean_a - mean_b) ]

(the last row is the mean-shift correction), so its top singular pairs are those of this
small matrix. ``update`` merges the exact summary of each batch. When the data's rank is at
most ``rank`` the result equals a full SVD of all the data; otherwise the oversampled rank
keeps the top ``k`` components accurate.

Component signs are made deterministic: the pixel of largest magnitude is positive.
"""

from __future__ import annotations

import numpy as np

from xaicxr.plugins.aggregator import Aggregator, State, as_batch, pooled_mean, reject_nonfinite
from xaicxr.plugins.options import at_least


class Pca(Aggregator):
    """Top ``k`` principal components, ``finalize -> (k, H, W)`` (unit norm, components first;
    zero maps beyond the data's rank). ``info`` adds the explained variance (ddof = 1), its
    ratio to the total variance, and the singular values."""

    components = True

    def __init__(self, k: int = 4, oversample: int = 10) -> None:
        self.k = at_least("k", k, 1)
        self.oversample = at_least("oversample", oversample, 0)

    @property
    def rank(self) -> int:
        return self.k + self.oversample

    def init(self, shape: tuple[int, int]) -> State:
        size = int(np.prod(shape))
        return {"n": 0, "ss": 0.0, "mean": np.zeros(shape, np.float64),
                "s": np.zeros(0, np.float64), "v": np.zeros((0, size), np.float64)}

    def update(self, state: State, heatmaps: np.ndarray) -> State:
        batch = as_batch(heatmaps, state["mean"].shape)
        rows = max(self.rank, 16)  # (rank + rows)^2 / rows flops per heatmap: least near rows = rank
        for start in range(0, len(batch), rows):
            state = self.merge(state, self._summary(batch[start:start + rows]))
        return state

    def _summary(self, rows: np.ndarray) -> State:
        """The exact summary of a few heatmaps: their centred rows stand in for ``s * v``."""
        data = rows.reshape(len(rows), -1).astype(np.float64)
        mean = data.mean(axis=0)
        reject_nonfinite(mean)
        data -= mean
        return {"n": len(rows), "ss": float(np.einsum("ij,ij->", data, data)),
                "mean": mean.reshape(rows.shape[1:]), "s": np.ones(len(rows)), "v": data}

    def merge(self, a: State, b: State) -> State:
        n, mean, weight = pooled_mean(a, b)  # checks that the states fit, even an empty b
        if b["n"] == 0:
            return a
        shift = (a["mean"] - b["mean"]).reshape(1, -1)
        parts = [a["s"][:, None] * a["v"], b["s"][:, None] * b["v"]]
        if a["n"]:
            parts.append(np.sqrt(weight) * shift)
        s, v = _top_singular(np.concatenate(parts), self.rank)
        return {"n": n, "ss": a["ss"] + b["ss"] + float(np.sum(shift ** 2)) * a["n"] * b["n"] / n,
                "mean": mean, "s": s, "v": v}

    def finalize(self, state: State) -> np.ndarray:
        shape = state["mean"].shape
        out = np.zeros((self.k, int(np.prod(shape))), np.float64)
        v = _orthonormal(state["v"][:self.k])
        out[:len(v)] = v * _signs(v)[:, None]
        return out.reshape(self.k, *shape)

    def explained_variance(self, state: State) -> np.ndarray:
        """(k,) variance along each component (ddof = 1), zeros beyond the data's rank."""
        out = np.zeros(self.k)
        if state["n"] > 1:
            s = state["s"][:self.k]
            out[:len(s)] = s ** 2 / (state["n"] - 1)
        return out

    def explained_variance_ratio(self, state: State) -> np.ndarray:
        """(k,) share of the total variance (sum over pixels) along each component."""
        out = np.zeros(self.k)
        if state["ss"] > 0:
            s = state["s"][:self.k]
            out[:len(s)] = s ** 2 / state["ss"]
        return out

    def info(self, state: State) -> dict[str, np.ndarray]:
        singular = np.zeros(self.k)
        singular[:min(self.k, len(state["s"]))] = state["s"][:self.k]
        return {"explained_variance": self.explained_variance(state),
                "explained_variance_ratio": self.explained_variance_ratio(state),
                "singular_values": singular}


def _top_singular(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``rank`` singular values and right singular vectors of a short, wide matrix, from
    the eigen-decomposition of its Gram matrix: one BLAS product, several times faster than
    an SVD (or a QR) of the wide matrix. Directions whose singular value is below 1e-6 of the
    largest are dropped; the others are accurate to ~1e-16 * (s_max / s)^2, and ``finalize``
    re-orthonormalises the ``k`` it returns."""
    eigenvalues, u = np.linalg.eigh(matrix @ matrix.T)
    eigenvalues, u = eigenvalues[::-1][:rank], u[:, ::-1][:, :rank]
    if not len(eigenvalues) or eigenvalues[0] <= 0:
        return np.zeros(0), np.zeros((0, matrix.shape[1]))
    keep = eigenvalues > eigenvalues[0] * 1e-12
    s = np.sqrt(eigenvalues[keep])
    return s, (u[:, keep].T @ matrix) / s[:, None]


def _orthonormal(v: np.ndarray) -> np.ndarray:
    """Rows of ``v`` made exactly orthonormal in order (Gram-Schmidt via QR): the first keeps
    its direction, each next one loses only its tiny overlap with those before."""
    if not len(v):
        return v
    q, r = np.linalg.qr(v.T)
    return (q * np.sign(np.diag(r))).T


def _signs(v: np.ndarray) -> np.ndarray:
    if not len(v):
        return np.ones(0)
    peak = v[np.arange(len(v)), np.abs(v).argmax(axis=1)]
    return np.where(peak < 0, -1.0, 1.0)
