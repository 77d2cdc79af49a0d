"""``cxr4``: the paper's four classes from the public pediatric pneumonia and COVID-19 sets.

Pediatric layout (Kermany et al.): ``path/[train|test|val]/NORMAL/*`` and ``.../PNEUMONIA/*``
with ``bacteria`` or ``virus`` in the file name and the patient as ``personN_``; the split
folders are optional. COVID-19 images come either from a plain folder (``covid_path``) or
from the metadata CSV of the public COVID-19 image collection (``covid_metadata``: columns
``filename``, ``finding``, ``patientid``, ``view``; images in ``covid_images``, by default
the ``images/`` folder beside the CSV), of which only frontal views are used.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from xaicxr.errors import DataError
from xaicxr.io.imaging import precheck
from xaicxr.plugins import Dataset, Progress, Record, Scan, Skipped, require_dir, walk_images

CLASSES = ("normal", "bacteria", "virus", "covid")
SUBSETS = ("train", "val", "test")
FRONTAL_VIEWS = ("PA", "AP", "AP Supine", "AP semi erect", "AP erect")
_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_NORMAL_PATIENT = re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)


class Cxr4Dataset(Dataset):
    classes = CLASSES

    def __init__(self, path: str | None = None, covid_path: str | None = None,
                 covid_metadata: str | None = None, covid_images: str | None = None,
                 views: list[str] | None = None) -> None:
        self.path = path
        self.covid_path = covid_path
        self.covid_metadata = covid_metadata
        self.covid_images = covid_images
        self.views = tuple(v.upper() for v in (views or FRONTAL_VIEWS))

    def external(self, path: str) -> "Cxr4Dataset":
        return Cxr4Dataset(path, views=list(self.views))

    def scan(self, workdir: Path | None = None, progress: Progress | None = None) -> Scan:
        root = require_dir(self.path, "cxr4 dataset")
        scan = Scan(classes=list(CLASSES))
        subset_dirs = [(s, root / s) for s in SUBSETS if (root / s).is_dir()] or [(None, root)]
        for subset, base in subset_dirs:
            self._scan_pediatric(root, base, subset, scan)
        if not scan.records and not scan.skipped:
            raise DataError(f"cxr4 dataset {root}: no NORMAL/ or PNEUMONIA/ folder found "
                            "(expected [train|test|val]/NORMAL and .../PNEUMONIA)")
        if self.covid_metadata:
            self._scan_covid_csv(scan)
        elif self.covid_path:
            covid_root = require_dir(self.covid_path, "cxr4 covid_path")
            for path in walk_images(covid_root, scan.skipped):
                scan.records.append(Record(id="covid/" + path.relative_to(covid_root).as_posix(),
                                           label="covid", path=path))
        return scan

    def _scan_pediatric(self, root: Path, base: Path, subset: str | None, scan: Scan) -> None:
        for folder in ("NORMAL", "PNEUMONIA"):
            if not (base / folder).is_dir():
                continue
            for path in walk_images(base / folder, scan.skipped):
                label = _pediatric_label(folder, path.name)
                if label is None:
                    scan.skipped.append(Skipped(str(path), "PNEUMONIA file name says neither 'bacteria' nor 'virus'"))
                    continue
                patient = _PERSON.match(path.name) or _NORMAL_PATIENT.match(path.name)
                scan.records.append(Record(
                    id=path.relative_to(root).as_posix(), label=label, path=path,
                    patient=patient.group(1).lower() if patient else None, subset=subset))

    def _scan_covid_csv(self, scan: Scan) -> None:
        meta = Path(self.covid_metadata).expanduser()
        if not meta.is_file():
            raise DataError(f"cxr4 covid_metadata: {meta} is not a file")
        images = Path(self.covid_images).expanduser() if self.covid_images else meta.parent / "images"
        with meta.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            needed = {"filename", "finding", "patientid", "view"}
            if not needed <= set(reader.fieldnames or ()):
                raise DataError(f"cxr4 covid_metadata {meta}: needs columns {sorted(needed)}, has {reader.fieldnames}")
            for row in reader:
                if "covid" not in row["finding"].lower():
                    continue
                path = images / row["filename"]
                if row["view"].strip().upper() not in self.views:
                    scan.skipped.append(Skipped(str(path), f"view {row['view']!r} is not frontal"))
                    continue
                reason = precheck(path, root=images)
                if reason is not None:
                    scan.skipped.append(Skipped(str(path), reason if path.exists() or path.is_symlink() else "listed in metadata but missing"))
                    continue
                scan.records.append(Record(id="covid/" + row["filename"], label="covid", path=path,
                                           patient="covid-" + row["patientid"].strip()))


def _pediatric_label(folder: str, filename: str) -> str | None:
    if folder == "NORMAL":
        return "normal"
    lower = filename.lower()
    if "bacteria" in lower:
        return "bacteria"
    if "virus" in lower:
        return "virus"
    return None
