"""Expert localisation beside a folder of images: boxes from a CSV, mask folders, patient ids.

The files of the NIH box subset and the JSRT/SCR masks are the model: ``boxes.csv`` with
``file,finding,x,y,w,h`` in pixels of the stored image, ``masks/<kind>/<image stem>.png``, and a
metadata CSV whose ``file`` column names each image. What is read here only says which record
has which annotation; the boxes are drawn and the masks resized with the image when it is
decoded (:func:`xaicxr.io.loader.decode`), so they follow every resize policy.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Iterable

from ..errors import DataError
from .records import Record, Skipped

BOX_COLUMNS = ("file", "x", "y", "w", "h")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif", ".jpg", ".jpeg")


def split_column(spec: str) -> tuple[str, str]:
    """``"findings.csv:patient"`` -> (``"findings.csv"``, ``"patient"``)."""
    path, sep, column = spec.rpartition(":")
    if not sep or not path or not column:
        raise ValueError(f"'patients' must be 'FILE.csv:COLUMN' (a CSV with a 'file' column), got {spec!r}")
    return path, column


def top_folder(root: Path, relative: str) -> str | None:
    """The folder directly under ``root`` that ``relative`` lies in (``masks`` of
    ``masks/lung``), None for a path outside ``root``."""
    path = Path(relative)
    if path.is_absolute():
        try:
            path = path.relative_to(root)
        except ValueError:
            return None
    parts = PurePosixPath(path.as_posix()).parts
    return parts[0] if parts and parts[0] not in ("..", ".") else None


@dataclass
class Annotations:
    """Annotations by image, looked up by the record's id (its path under the dataset folder)
    or, where a file holds bare file names, by the file name."""

    boxes: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)
    masks: dict[str, dict[str, Path]] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    """Where each kind was read from (for messages)."""
    own_files: set[str] = field(default_factory=set)
    """Names directly under the dataset folder that are annotation files, not stray files."""
    bad_rows: list[Skipped] = field(default_factory=list)
    matched_by_name: dict[str, list[str]] = field(default_factory=dict)
    """Bare file names of the annotation files and the records they matched."""

    @classmethod
    def read(cls, root: Path, *, boxes: str | None = None, box_scale: float = 1.0,
             lesion_masks: str | None = None, lung_masks: str | None = None,
             patients: str | None = None) -> "Annotations":
        out = cls()
        if boxes is not None:
            path = out._file(root, boxes, "boxes")
            out.boxes = _read_boxes(path, box_scale, out.bad_rows)
        for kind, folder in (("lesion", lesion_masks), ("lung", lung_masks)):
            if folder is not None:
                path = _resolve(root, folder)
                if not path.is_dir():
                    raise DataError(f"folder dataset: {kind}_masks {path} is not a folder")
                out.sources[kind] = str(path)
                out.masks[kind] = {p.relative_to(path).with_suffix("").as_posix(): p
                                   for p in sorted(path.rglob("*")) if p.suffix.lower() in MASK_SUFFIXES}
        if patients is not None:
            name, column = split_column(patients)
            out.patients = _read_column(out._file(root, name, "patients"), column)
        return out

    def _file(self, root: Path, name: str, option: str) -> Path:
        path = _resolve(root, name)
        if not path.is_file():
            raise DataError(f"folder dataset: {option} file {path} does not exist")
        self.sources[option] = str(path)
        if path.parent == root:
            self.own_files.add(path.name)
        return path

    def annotate(self, record: Record) -> Record:
        """``record`` with its boxes, masks and patient where the annotations have them."""
        changes: dict = {}
        boxes = _lookup(self.boxes, record, self.matched_by_name)
        if boxes:
            changes["boxes"] = tuple(boxes)
        stem_path = PurePosixPath(record.id).with_suffix("").as_posix()
        for kind, files in self.masks.items():
            mask = files.get(stem_path) or files.get(PurePosixPath(record.id).stem)
            if mask is not None:
                changes[f"{kind}_mask"] = mask
        patient = _lookup(self.patients, record, self.matched_by_name)
        if patient:
            changes["patient"] = patient
        return replace(record, **changes) if changes else record

    def unused(self, records: Iterable[Record]) -> list[Skipped]:
        """Bad box rows, and boxes of files that are not among the usable images. A bare file
        name that matched images in several folders is an error (which one was meant?)."""
        ambiguous = {name: ids for name, ids in self.matched_by_name.items() if len(set(ids)) > 1}
        if ambiguous:
            name, ids = next(iter(ambiguous.items()))
            raise DataError(f"folder dataset: an annotation names {name!r} without its folder, and "
                            f"{len(set(ids))} images are called so ({', '.join(sorted(set(ids))[:3])}); "
                            "give the path below the dataset folder in the file column")
        ids = set()
        for r in records:
            ids.update((r.id, PurePosixPath(r.id).name))
        out = list(self.bad_rows)
        orphans = sorted(f for f in self.boxes if f not in ids)
        if orphans:
            out.append(Skipped(self.sources["boxes"], f"boxes of {len(orphans)} file(s) not in the dataset, unused "
                                                      f"(first: {orphans[0]})"))
        return out


def _file_key(name: str) -> str:
    """A ``file`` cell as a record id: a leading ``./`` dropped (not every leading dot)."""
    return PurePosixPath(name.removeprefix("./")).as_posix()


def _resolve(root: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def _lookup(table: dict, record: Record, by_name: dict[str, list[str]] | None = None):
    """``table``'s entry for the record's id, else for its bare file name (a file column without
    folders); ``by_name`` collects which records a bare name matched, to refuse an ambiguous one."""
    if record.id in table:
        return table[record.id]
    name = PurePosixPath(record.id).name
    if name in table and by_name is not None:
        by_name.setdefault(name, []).append(record.id)
    return table.get(name)


def _rows(path: Path) -> tuple[list[str], Iterable[tuple[int, dict[str, str]]]]:
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"folder dataset: cannot read {path}: {exc}") from None

    def rows():
        with handle:
            try:
                for line, row in enumerate(reader, start=2):
                    if None in row:  # more fields than the header names
                        raise DataError(f"folder dataset: {path} line {line} has more fields than its header "
                                        f"({', '.join(columns)}); quote a file name that holds a comma")
                    yield line, {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            except (UnicodeDecodeError, csv.Error) as exc:
                raise DataError(f"folder dataset: cannot read {path}: {exc}") from None

    return columns, rows()


def _read_boxes(path: Path, scale: float, bad: list[Skipped]) -> dict[str, list[tuple[float, float, float, float]]]:
    columns, rows = _rows(path)
    missing = [c for c in BOX_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"folder dataset: boxes file {path} lacks the column(s) {', '.join(missing)} "
                        f"(expected file,finding,x,y,w,h; found {', '.join(columns) or 'none'})")
    boxes: dict[str, list] = defaultdict(list)
    for line, row in rows:
        try:
            x, y, w, h = (float(row[c]) * scale for c in ("x", "y", "w", "h"))
        except ValueError:
            bad.append(Skipped(f"{path}:{line}", "box row with a value that is not a number"))
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            bad.append(Skipped(f"{path}:{line}", "box row with a non-finite value or a width/height <= 0"))
            continue
        if not row["file"]:
            bad.append(Skipped(f"{path}:{line}", "box row without a file"))
            continue
        boxes[_file_key(row["file"])].append((x, y, w, h))
    return dict(boxes)


def _read_column(path: Path, column: str) -> dict[str, str]:
    columns, rows = _rows(path)
    for needed in ("file", column):
        if needed not in columns:
            raise DataError(f"folder dataset: {path} has no column {needed!r} (found {', '.join(columns) or 'none'})")
    return {_file_key(row["file"]): row[column] for _, row in rows if row[column]}
