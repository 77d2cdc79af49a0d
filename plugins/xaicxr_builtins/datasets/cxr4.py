"""``cxr4``: the paper's four classes from the public pediatric pneumonia and COVID-19 sets.

Pediatric images (Kermany et al.) in either of two layouts, each optionally under
``path/[train|test|val]/``:

- the original one: ``NORMAL/*`` and ``PNEUMONIA/*``, the pneumonia files labelled by
  ``bacteria`` or ``virus`` in the file name;
- one folder per class, ``normal/``, ``bacteria/``, ``virus/`` (as in ``kermany3-real``); a file
  whose name names the other pneumonia kind than its folder is skipped with that reason.

The patient is ``personN`` for pneumonia files and ``IM-NNNN`` / ``NORMAL2-IM-NNNN`` for normal
ones, read from the file name, or from a ``manifest.json`` in ``path`` (a list of ``{"file":
path relative to ``path``, "patient": id}``), which wins where it lists the file.

COVID-19 images come either from a plain folder (``covid_path``; ``covid_patient_pattern``
groups its files by patient or source as the ``folder`` dataset's ``patient_pattern`` does)
or from the metadata CSV of the public COVID-19 image collection (``covid_metadata``: columns
``filename``, ``finding``, ``patientid``, ``view``; images in ``covid_images``, by default
the ``images/`` folder beside the CSV), of which only frontal views are used.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from xaicxr.errors import DataError
from xaicxr.io.imaging import precheck
from xaicxr.plugins import Dataset, Progress, Record, Scan, Skipped, require_dir, walk_images

from .folder import compile_patient_patterns, patient_from_name

CLASSES = ("normal", "bacteria", "virus", "covid")
SUBSETS = ("train", "val", "test")
FRONTAL_VIEWS = ("PA", "AP", "AP Supine", "AP semi erect", "AP erect")
_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_NORMAL_PATIENT = re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)
_FOLDERS = {"normal": "normal", "pneumonia": None, "bacteria": "bacteria", "virus": "virus"}
"""Pediatric folder name (any case) -> its label; None: the file name says (``PNEUMONIA/``)."""
MANIFEST = "manifest.json"


class Cxr4Dataset(Dataset):
    classes = CLASSES

    def __init__(self, path: str | None = None, covid_path: str | None = None,
                 covid_metadata: str | None = None, covid_images: str | None = None,
                 views: list[str] | None = None,
                 covid_patient_pattern: str | list[str] | None = None) -> None:
        self.path = path
        self.covid_path = covid_path
        self.covid_patient_pattern = covid_patient_pattern
        self.covid_patient_res = compile_patient_patterns(covid_patient_pattern, "cxr4 covid_patient_pattern")
        self.covid_metadata = covid_metadata
        self.covid_images = covid_images
        self.views = tuple(v.upper() for v in (views or FRONTAL_VIEWS))

    def external(self, path: str) -> "Cxr4Dataset":
        return Cxr4Dataset(path, views=list(self.views))

    def scan(self, workdir: Path | None = None, progress: Progress | None = None) -> Scan:
        root = require_dir(self.path, "cxr4 dataset")
        scan = Scan(classes=list(CLASSES))
        subset_dirs = [(s, root / s) for s in SUBSETS if (root / s).is_dir()] or [(None, root)]
        patients = _manifest_patients(root)
        for subset, base in subset_dirs:
            self._scan_pediatric(root, base, subset, scan, patients)
        if not scan.records and not scan.skipped:
            raise DataError(f"cxr4 dataset {root}: no NORMAL/ or PNEUMONIA/ folder found, nor normal/, "
                            "bacteria/, virus/ (expected [train|test|val]/NORMAL and .../PNEUMONIA, "
                            "or one folder per class)")
        if self.covid_metadata:
            self._scan_covid_csv(scan)
        elif self.covid_path:
            covid_root = require_dir(self.covid_path, "cxr4 covid_path")
            for path in walk_images(covid_root, scan.skipped):
                patient = patient_from_name(self.covid_patient_res, path.name)
                scan.records.append(Record(id="covid/" + path.relative_to(covid_root).as_posix(),
                                           label="covid", path=path,
                                           patient=f"covid-{patient}" if patient else None))
        return scan

    def _scan_pediatric(self, root: Path, base: Path, subset: str | None, scan: Scan,
                        patients: dict[str, str]) -> None:
        folders = sorted(d for d in base.iterdir() if d.is_dir() and d.name.lower() in _FOLDERS)
        for folder in folders:
            for path in walk_images(folder, scan.skipped):
                label, reason = _pediatric_label(folder.name, path.name)
                if label is None:
                    scan.skipped.append(Skipped(str(path), reason))
                    continue
                rel = path.relative_to(root).as_posix()
                patient = patients.get(rel) or _patient_from_name(path.name)
                scan.records.append(Record(id=rel, label=label, path=path,
                                           patient=patient.lower() if patient else None, subset=subset))

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


def _pediatric_label(folder: str, filename: str) -> tuple[str | None, str]:
    """(label, "") or (None, the reason to skip the file)."""
    label = _FOLDERS[folder.lower()]
    lower = filename.lower()
    named = "bacteria" if "bacteria" in lower else "virus" if "virus" in lower else None
    if label == "normal":
        return label, ""
    if label is None:
        return named, "" if named else f"{folder} file name says neither 'bacteria' nor 'virus'"
    if named is not None and named != label:
        return None, f"file name says {named!r} but the folder is {folder}/"
    return label, ""


def _patient_from_name(filename: str) -> str | None:
    match = _PERSON.match(filename) or _NORMAL_PATIENT.match(filename)
    return match.group(1) if match else None


def _manifest_patients(root: Path) -> dict[str, str]:
    """``{file relative to root: patient}`` from ``root/manifest.json``, or {} without one."""
    path = root / MANIFEST
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cxr4 {path}: not readable JSON ({exc})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DataError(f"cxr4 {path}: expected a list of {{\"file\": ..., \"patient\": ...}} objects")
    return {str(e["file"]): str(e["patient"]) for e in entries if e.get("file") and e.get("patient")}
