"""The dataset stage: scan the dataset plugin, decode every record once to learn what it really
holds, and write the usable records (``dataset.json``) and every file left out with its reason
(``skipped.json``). The same inventory is the ``xaicxr data inspect`` report. The shortcut
probe's per-file features (:mod:`xaicxr.analysis.probe`) are taken in that one decode pass and
kept in ``dataset.json`` (``image_features``)."""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable

from pathlib import Path

from ..analysis.probe import file_features
from ..config import build_plugin
from ..errors import DataError
from ..io import atomic
from ..io.atomic import printable
from ..io.imaging import DEFAULT_MAX_PIXELS
from ..io.loader import iter_decoded
from ..plugins import Dataset, Record, Scan, Skipped
from ..progress import progress_bar
from ..rundir import RUN_RELATIVE, RunDir
from . import Run

NAME = "dataset"
TABLES = ("dataset",)
IGNORED = ("dataset.resize", "dataset.mode")
"""Mode and resizing are applied when the train stage decodes the split, so changing them keeps
scan and split."""


def outputs(cfg: dict, rundir: RunDir) -> list[Path]:
    return [rundir.dataset_index, rundir.skipped]


def run(run: Run) -> dict:
    table = run.cfg["dataset"]
    dataset = build_plugin("dataset", table)
    workers, max_pixels = table.get("workers"), table["max_pixels"]
    main = inventory(dataset, run, workers, max_pixels, "dataset")
    external = None
    if "test_path" in table:
        external = inventory(dataset.external(table["test_path"]), run, workers, max_pixels, "external test")
        if external.classes != main.classes:
            raise DataError(f"test_path classes {external.classes} differ from the dataset's {main.classes}")
    skipped = main.skipped + (external.skipped if external else [])
    atomic.write_json(run.dir.skipped, [s.to_json() for s in skipped])
    summary = main.summary()
    del summary["skipped"]
    atomic.write_json(run.dir.dataset_index, {
        "dataset": table["name"], "classes": main.classes, "summary": summary, "paths": RUN_RELATIVE,
        "records": [run.dir.portable(r) for r in main.records],
        "image_features": {**main.features, **({_external_id(k): v for k, v in external.features.items()}
                                                if external else {})},
        "external_test": [run.dir.portable(_external(r)) for r in external.records] if external else []})
    if not main.records:
        raise DataError(f"no usable image in dataset {table['name']!r}; see {run.dir.skipped}")
    present = [c for c in main.classes if summary["counts"][c]]
    if len(present) < 2:
        raise DataError(f"dataset {table['name']!r} has usable images of {len(present)} class"
                        f"{'' if len(present) == 1 else 'es'} ({', '.join(present)}); a classifier needs "
                        f"at least two (see {run.dir.skipped} for the files left out)")
    return {"images": len(main.records), "counts": summary["counts"], "skipped": len(skipped),
            "sources": sources_fingerprint(table)}


def sources_fingerprint(table: dict) -> str | None:
    """A digest of the files under the dataset's paths (``[dataset]`` path options): every
    name, size and modification time, so adding, replacing or deleting an image (or a class
    folder) is seen without decoding anything. None for a dataset without paths (the phantom:
    made from its seed)."""
    import hashlib
    import os

    from ..config import PATH_KEYS

    keys = sorted(set(PATH_KEYS["dataset"]) | {k for k in table if k.endswith("_path")})
    roots = [Path(table[k]) for k in keys if isinstance(table.get(k), str) and Path(table[k]).exists()]
    if isinstance(table.get("path"), str):
        base = Path(table["path"])
        for key in ANNOTATION_KEYS:
            value = table.get(key)
            if isinstance(value, str):
                path = base / (value.rpartition(":")[0] if key == "patients" else value)
                if path.exists() and not any(root in path.parents for root in roots if root.is_dir()):
                    roots.append(path)
    if not roots:
        return None
    digest = hashlib.sha256()

    def add(path: Path, name: str) -> None:
        try:
            stat = path.stat()
        except OSError:
            return
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))

    for root in roots:
        digest.update(f"root {root}\n".encode("utf-8", "surrogateescape"))
        if root.is_file():
            add(root, root.name)
            continue
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            digest.update(f"dir {os.path.relpath(folder, root)}\n".encode("utf-8", "surrogateescape"))
            for name in sorted(files):
                add(Path(folder) / name, name)
    return digest.hexdigest()


ANNOTATION_KEYS = ("boxes", "lesion_masks", "lung_masks", "patients")
"""Dataset options naming annotation files (relative to the dataset's ``path``), fingerprinted
with the images wherever they lie."""


def sources_changed(cfg: dict, rundir: RunDir, done: dict) -> str | None:
    """Why the scan is out of date although the configuration is not (None: it is current):
    the dataset's files changed since it was taken."""
    recorded = done.get("result", {}).get("sources")
    if recorded is None:
        return None
    if sources_fingerprint(cfg["dataset"]) != recorded:
        return "the dataset's files changed since the scan (added, replaced or deleted): scanned again"
    return None


def inventory(dataset: Dataset, run: Run, workers: int | None, max_pixels: int, label: str) -> "Inventory":
    return inventory_of(dataset, run.dir.data_dir, workers, max_pixels, label)


def inventory_of(dataset: Dataset, workdir: Path | None, workers: int | None, max_pixels: int,
                 label: str) -> "Inventory":
    """Scan ``dataset`` (generated data goes to ``workdir``) and decode every record once."""
    with progress_bar(f"scanning {label}", None) as advance:
        scan = dataset.scan(workdir, progress=advance)
    with progress_bar(f"checking {label} images", len(scan.records)) as advance:
        return take_inventory(scan, workers=workers, max_pixels=max_pixels, progress=advance)


def _external(record: Record) -> Record:
    return Record(**{**record.__dict__, "id": _external_id(record.id), "subset": "test"})


def _external_id(record_id: str) -> str:
    return f"external/{record_id}"


@dataclass
class Inventory:
    classes: list[str]
    records: list[Record]
    skipped: list[Skipped]
    sizes: list[tuple[int, int]] = field(default_factory=list)
    modes: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    decoded: int = 0
    features: dict[str, dict] = field(default_factory=dict)
    """Probe features of each usable record's file, by id."""

    def summary(self) -> dict:
        counts = Counter(r.label for r in self.records)
        patients: dict[str, set[str]] = defaultdict(set)
        for r in self.records:
            if r.patient is not None:
                patients[r.label].add(r.patient)
        known = any(r.patient is not None for r in self.records)
        return {
            "classes": self.classes,
            "counts": {c: counts.get(c, 0) for c in self.classes},
            "images": len(self.records),
            "patients": {c: len(patients[c]) for c in self.classes} if known else None,
            "sizes": _size_summary(self.sizes),
            "modes": dict(sorted(self.modes.items())),
            "formats": dict(sorted(self.formats.items())),
            "masks": {"lesion": sum(r.lesion_mask is not None or bool(r.boxes) for r in self.records),
                      "lung": sum(r.lung_mask is not None for r in self.records),
                      "boxes": sum(len(r.boxes or ()) for r in self.records)},
            "skipped": [s.to_json() for s in self.skipped],
            "seconds": round(self.seconds, 3),
            "decoded": self.decoded,
            "images_per_s": round(self.decoded / self.seconds, 1) if self.seconds > 0 else None,
        }


def take_inventory(scan: Scan, *, workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                   progress: Callable[[int], None] | None = None) -> Inventory:
    """Fully decode every record (truncation only shows on a full decode); drop and report
    failures, duplicate ids, and files whose name is not valid UTF-8 (the stores, JSON files
    and reports hold ids as UTF-8 text; the name is reported escaped, see
    :func:`~xaicxr.io.atomic.printable`)."""
    start = time.perf_counter()
    for name in scan.classes:
        if printable(name) != name:
            raise DataError(f"class name {printable(name)!r} is not valid UTF-8; rename its folder")
    inv = Inventory(classes=list(scan.classes), records=[], skipped=list(scan.skipped))
    seen: set[str] = set()
    unique: list[Record] = []
    for record in scan.records:
        if printable(record.id) != record.id:  # the data's own name: where the set lies is not its name
            inv.skipped.append(Skipped(str(record.path), "file name is not valid UTF-8; rename the file"))
        elif record.id in seen:
            inv.skipped.append(Skipped(str(record.path), f"duplicate id {record.id!r}"))
        else:
            seen.add(record.id)
            unique.append(record)
    for item in iter_decoded(unique, None, workers=workers, max_pixels=max_pixels):
        inv.decoded += 1
        if progress is not None:
            progress(1)
        if item.error is not None:
            inv.skipped.append(Skipped(str(item.record.path), item.error))
            continue
        inv.records.append(item.record)
        inv.sizes.append((item.info.width, item.info.height))
        inv.modes[item.info.mode] += 1
        inv.formats[item.info.format] += 1
        inv.features[item.record.id] = file_features(item.image, item.info.format, item.info.mode,
                                                     item.info.width, item.info.height)
    inv.seconds = time.perf_counter() - start
    return inv


def _size_summary(sizes: list[tuple[int, int]]) -> dict | None:
    if not sizes:
        return None
    widths = [w for w, _ in sizes]
    heights = [h for _, h in sizes]
    return {"width": {"min": min(widths), "median": statistics.median(widths), "max": max(widths)},
            "height": {"min": min(heights), "median": statistics.median(heights), "max": max(heights)},
            "distinct": len(set(sizes))}
