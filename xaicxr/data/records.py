"""What every dataset plugin produces: records that point at images, and skipped files with reasons."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Record:
    """One image of a dataset, before decoding.

    ``subset`` is the dataset's own split folder (``train``/``val``/``test``) when it has one;
    ``lesion_mask`` and ``lung_mask`` point at mask images of the same geometry when known.
    """

    id: str
    label: str
    path: Path
    patient: str | None = None
    subset: str | None = None
    lesion_mask: Path | None = None
    lung_mask: Path | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("path", "lesion_mask", "lung_mask"):
            if d[k] is not None:
                d[k] = str(d[k])
        return d


@dataclass(frozen=True)
class Skipped:
    """A file that was not used, and why."""

    path: str
    reason: str

    def to_json(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass
class Scan:
    """The result of listing a dataset: usable records, and everything left out with a reason."""

    classes: list[str]
    records: list[Record] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
