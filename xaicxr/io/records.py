"""What a dataset scan yields, before decoding: a ``Record`` per usable image and a ``Skipped``
per file left out. Defined here, below the plugin contract, so that the image loader and cache
need nothing from :mod:`xaicxr.plugins` (which re-exports both for plugin authors)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import printable


@dataclass(frozen=True)
class Record:
    """One image of a dataset, before decoding.

    ``subset`` is the dataset's own split folder (``train``/``val``/``test``) when it has one;
    ``lesion_mask`` and ``lung_mask`` point at mask images of the same geometry when known;
    ``boxes`` are expert boxes ``(x, y, w, h)`` in pixels of the stored image, drawn into the
    lesion mask when the image is decoded (so they follow every resize policy as masks do).
    """

    id: str
    label: str
    path: Path
    patient: str | None = None
    subset: str | None = None
    lesion_mask: Path | None = None
    lung_mask: Path | None = None
    boxes: tuple[tuple[float, float, float, float], ...] | None = None

    _PATHS = ("path", "lesion_mask", "lung_mask")

    def to_json(self) -> dict:
        d = asdict(self)
        for k in self._PATHS:
            if d[k] is not None:
                d[k] = str(d[k])
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Record":
        boxes = d.get("boxes")
        return cls(**{**d, **{k: Path(d[k]) for k in cls._PATHS if d.get(k)},
                      "boxes": None if boxes is None else tuple(tuple(float(v) for v in b) for b in boxes)})


@dataclass(frozen=True)
class Skipped:
    """A file that was not used, and why."""

    path: str
    reason: str

    def to_json(self) -> dict:
        """The path :func:`~xaicxr.io.atomic.printable` (a name that is not UTF-8 is escaped)."""
        return {"path": printable(self.path), "reason": self.reason}
