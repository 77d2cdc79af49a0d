"""``folder``: any ``root/<class>/**`` tree of PNG, JPEG, BMP, TIFF or DICOM files."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

from xaicxr.errors import DataError
from xaicxr.io.annotations import Annotations, split_column, top_folder
from xaicxr.plugins import Dataset, Progress, Record, Scan, Skipped, require_dir, walk_images


MASKS_FOLDER = "masks"
"""The conventional annotation folder (``masks/<kind>/<stem>.png``): never a class unless
``classes`` names it."""


class FolderDataset(Dataset):
    """Class = the first folder level under ``path``; files may sit at any depth below it.

    ``classes`` fixes the class order (and subset); by default it is the sorted folder names.
    ``patient_pattern`` is a regular expression searched in the file name whose first group
    (or whole match) is the patient id, so splits keep a patient's images together. A list of
    expressions is tried in order and the first that matches wins, which lets one config group
    files named in several ways (patients of one archive, figures of one paper from another).
    An expression whose group is empty counts as no match.

    Localisation annotations (:mod:`.annotations`), each a path relative to ``path`` (or
    absolute): ``boxes``, a CSV ``file,finding,x,y,w,h`` of expert boxes in pixels of the stored
    image (``box_scale`` multiplies them: 0.25 for boxes drawn on 1024 px originals of 256 px
    files), drawn into each image's lesion mask; ``lesion_masks`` and ``lung_masks``, folders of
    binary masks ``<folder>/<image stem>.png`` of the image's geometry (the lung masks replace
    the segmented lung fields). ``patients = "findings.csv:patient"`` reads each image's patient
    from a column of a CSV with a ``file`` column (instead of ``patient_pattern``). Mask folders
    are not classes, nor is a top-level ``masks`` folder (unless ``classes`` names it).
    """

    def __init__(self, path: str | None = None, classes: list[str] | None = None,
                 patient_pattern: str | list[str] | None = None, boxes: str | None = None,
                 box_scale: float = 1.0, lesion_masks: str | None = None, lung_masks: str | None = None,
                 patients: str | None = None) -> None:
        self.path = path
        self.wanted = list(classes) if classes else None
        self.patient_res = compile_patient_patterns(patient_pattern, "folder")
        if patients is not None and patient_pattern is not None:
            raise ValueError("give 'patients' (a CSV column) or 'patient_pattern' (file names), not both")
        if boxes is not None and lesion_masks is not None:
            raise ValueError("give 'boxes' or 'lesion_masks' as the lesion annotation, not both")
        if not (math.isfinite(box_scale) and box_scale > 0):
            raise ValueError(f"'box_scale' must be a finite number > 0, got {box_scale}")
        if patients is not None:
            split_column(patients)
        self.boxes, self.box_scale = boxes, float(box_scale)
        self.lesion_masks, self.lung_masks, self.patients = lesion_masks, lung_masks, patients

    def external(self, path: str) -> "FolderDataset":
        """The same options on another folder; an annotation file or folder it does not have is
        left out there (an external test set need not be annotated)."""
        clone = copy.copy(self)
        clone.path = path
        for option in ("boxes", "lesion_masks", "lung_masks", "patients"):
            value = getattr(clone, option)
            name = value.rpartition(":")[0] if option == "patients" and value else value
            if value and not (Path(name) if Path(name).is_absolute() else Path(path) / name).exists():
                setattr(clone, option, None)
        return clone

    def scan(self, workdir: Path | None = None, progress: Progress | None = None) -> Scan:
        root = require_dir(self.path, "folder dataset")
        annotation_dirs = ({top_folder(root, p) for p in (self.lesion_masks, self.lung_masks) if p}
                           | {MASKS_FOLDER}) - {None} - set(self.wanted or ())
        found = sorted(d.name for d in root.iterdir()
                       if d.is_dir() and not d.name.startswith(".") and d.name not in annotation_dirs)
        classes = self.wanted or found
        missing = [c for c in classes if c not in found]
        if missing:
            raise DataError(f"folder dataset {root}: no class folder {missing[0]!r} (found: {', '.join(found) or 'none'})")
        if not classes:
            raise DataError(f"folder dataset {root}: no class folders; expected {root}/<class>/<images>")
        scan = Scan(classes=list(classes))
        annotations = Annotations.read(root, boxes=self.boxes, box_scale=self.box_scale,
                                       lesion_masks=self.lesion_masks, lung_masks=self.lung_masks,
                                       patients=self.patients)
        for entry in sorted(root.iterdir()):
            if entry.name in annotations.own_files or entry.name in annotation_dirs:
                continue
            if entry.is_file() or entry.is_symlink() and not entry.is_dir():
                scan.skipped.append(Skipped(str(entry), "not inside a class folder"))
            elif entry.is_dir() and not entry.name.startswith(".") and entry.name not in classes:
                scan.skipped.append(Skipped(str(entry) + "/", "folder not among the configured classes"))
        for label in classes:
            for path in walk_images(root / label, scan.skipped):
                rel = path.relative_to(root).as_posix()
                record = Record(id=rel, label=label, path=path, patient=self._patient(path.name))
                scan.records.append(annotations.annotate(record))
        scan.skipped.extend(annotations.unused(scan.records))
        return scan

    def _patient(self, filename: str) -> str | None:
        return patient_from_name(self.patient_res, filename)


def compile_patient_patterns(patient_pattern: str | list[str] | None, where: str) -> list[re.Pattern]:
    """The regular expressions of a ``patient_pattern`` option (one or a list), checked."""
    patterns = [patient_pattern] if isinstance(patient_pattern, str) else list(patient_pattern or [])
    compiled = []
    for pattern in patterns:
        if not pattern:
            raise DataError(f"{where}: an empty patient_pattern would make every file one patient; "
                            "leave the option out to treat every file as its own patient")
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise DataError(f"{where}: invalid patient_pattern {pattern!r}: {exc}") from None
    return compiled


def patient_from_name(patterns: list[re.Pattern], filename: str) -> str | None:
    """The first group (or whole match) of the first pattern that matches with a non-empty id."""
    for regex in patterns:
        match = regex.search(filename)
        patient = None if match is None else match.group(1) if match.groups() else match.group(0)
        if patient:
            return patient
    return None
