"""``phantom``: synthetic chest radiographs with lesion and lung masks, written to disk from a seed.

On disk: ``images/<class>/<id>.png``, ``masks/lesion/<class>/<id>.png``,
``masks/lung/<class>/<id>.png`` and ``manifest.json`` (the generation parameters and every
image's own parameters). Each image depends only on (seed, class, index, size, difficulty), so
generation is parallel and byte-identical; the manifest is written last, so a set without one
is incomplete and is generated again.

Because every image is re-made from its seeds, the dataset can also make counterfactual images:
the same radiograph without its lesion, or with the lesion only inside its mask
(:meth:`PhantomDataset.counterfactual`).
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image

from xaicxr.errors import DataError
from xaicxr.io import atomic
from xaicxr.plugins import Dataset, Progress, Record, Scan, Skipped

from .phantom_render import CLASSES, DIFFICULTIES, render_phantom

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
"""2: lesion masks hold 90 % of the lesion density, lesion placement varies within each class."""

COUNTERFACTUAL_LESION_MODES = {"lesion_removed": "removed", "lesion_in_mask_only": "mask_only"}
"""The dataset's counterfactual changes, and the renderer's lesion mode that makes each."""

Difficulty = Literal["easy", "standard", "subtle"]


def phantom_id(label: str, index: int) -> str:
    return f"{label}-{index:05d}"


def generate_phantom_set(out: str | Path, n_per_class: int = 250, size: int = 128, seed: int = 0,
                         difficulty: str = "standard", workers: int | None = None,
                         progress: Callable[[int], None] | None = None) -> Path:
    """Write a phantom set to ``out`` and return the manifest path."""
    if difficulty not in DIFFICULTIES:
        raise DataError(f"unknown phantom difficulty {difficulty!r}; one of {', '.join(DIFFICULTIES)}")
    if n_per_class < 1 or size < 16:
        raise DataError("phantom needs n_per_class >= 1 and size >= 16")
    out = Path(out)
    params = _set_params(n_per_class, size, seed, difficulty)
    existing = _read_manifest(out)
    if existing is not None and existing["params"] == params:
        return out / MANIFEST
    jobs = [(label, i) for label in CLASSES for i in range(n_per_class)]

    def make(job: tuple[str, int]) -> dict:
        label, index = job
        ph = render_phantom(seed, label, index, size=size, difficulty=difficulty)
        pid = phantom_id(label, index)
        _write_png(out / "images" / label / f"{pid}.png", _to_uint8(ph.image))
        _write_png(out / "masks" / "lesion" / label / f"{pid}.png", ph.lesion.astype(np.uint8) * 255)
        _write_png(out / "masks" / "lung" / label / f"{pid}.png", ph.lung.astype(np.uint8) * 255)
        return {"id": pid, "label": label, "index": index,
                "lesion_fraction": round(float(ph.lesion.mean()), 6),
                "lesion_share": ph.params["lesion_share"], "params": ph.params}

    items = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for item in pool.map(make, jobs):
            items.append(item)
            if progress is not None:
                progress(1)
    atomic.write_json(out / MANIFEST, {"format": FORMAT_VERSION, "params": params, "items": items})
    return out / MANIFEST


class PhantomDataset(Dataset):
    """Generated on first use into ``path`` (default: the run directory's ``data/phantom``).

    Options left unset take the values of a set already at ``path`` (so a generated set can be
    read as it is), or the defaults when generating. A set whose parameters differ from the
    options given is generated again: it is derived data, byte-identical from its seed.
    """

    classes = CLASSES
    defaults = {"n_per_class": 250, "size": 128, "seed": 0, "difficulty": "standard"}
    counterfactuals = tuple(COUNTERFACTUAL_LESION_MODES)

    def __init__(self, n_per_class: int | None = None, size: int | None = None,
                 seed: int | None = None, difficulty: Difficulty | None = None,
                 path: str | None = None) -> None:
        for name, value, low in (("n_per_class", n_per_class, 1), ("size", size, 16), ("seed", seed, 0)):
            if value is not None and value < low:
                raise ValueError(f"phantom: {name} must be at least {low}, got {value}")
        self.given = {k: v for k, v in {"n_per_class": n_per_class, "size": size, "seed": seed,
                                         "difficulty": difficulty}.items() if v is not None}
        self.path = path

    def external(self, path: str) -> "PhantomDataset":
        return PhantomDataset(path=path, **self.given)

    def scan(self, workdir: Path | None = None, progress: Progress | None = None) -> Scan:
        root = self._root(workdir)
        manifest = _read_manifest(root)
        on_disk = manifest["params"] if manifest is not None else {}
        wanted = _set_params(**{**self.defaults, **{k: on_disk[k] for k in self.defaults if k in on_disk}, **self.given})
        if manifest is None or on_disk != wanted:
            generate_phantom_set(root, wanted["n_per_class"], wanted["size"], wanted["seed"],
                                 wanted["difficulty"], progress=progress)
            manifest = _read_manifest(root)
        return scan_phantom_set(root, manifest)

    def counterfactual(self, record: Record, change: str, workdir: Path | None = None) -> np.ndarray:
        """The record's image re-rendered from the set's manifest with ``change`` applied, as its
        PNG would decode: the renderer makes the twin from the same seeds (pixel-identical away
        from the lesion), then it is rounded to 8 bits as the saved image was.

        The set is the one the record's file belongs to (``<set>/images/<class>/<id>.png``), which
        need not be ``workdir``'s: a study variant reads the phantoms of the run it shares them with."""
        if change not in COUNTERFACTUAL_LESION_MODES:
            raise DataError(f"phantom: unknown counterfactual {change!r}; "
                            f"one of {', '.join(self.counterfactuals)}")
        parents = Path(record.path).parents
        root = parents[2] if len(parents) > 2 else Path(record.path).parent
        index = _manifest_index(root)
        item = index.items.get(tuple(record.id.split("/")[-2:]))
        expected = root / "images" / item["label"] / f"{item['id']}.png" if item else None
        if expected is None or Path(record.path).resolve() != expected.resolve():
            raise DataError(f"phantom: {record.id!r} ({record.path}) is not an image of the phantom set at {root}")
        params = index.params
        ph = render_phantom(params["seed"], item["label"], item["index"], size=params["size"],
                            difficulty=params["difficulty"], lesion=COUNTERFACTUAL_LESION_MODES[change])
        return _to_uint8(ph.image).astype(np.float32) / 255.0

    def _root(self, workdir: Path | None) -> Path:
        if self.path is not None:
            return Path(self.path).expanduser()
        if workdir is None:
            raise DataError("phantom: give a path, or run inside a run directory")
        return Path(workdir) / "phantom"


def scan_phantom_set(root: Path, manifest: dict) -> Scan:
    scan = Scan(classes=list(CLASSES))
    for item in manifest["items"]:
        label, pid = item["label"], item["id"]
        path = root / "images" / label / f"{pid}.png"
        if not path.is_file():
            scan.skipped.append(Skipped(str(path), "listed in manifest but missing"))
            continue
        scan.records.append(Record(
            id=f"{label}/{pid}", label=label, path=path, patient=f"{label}/{pid}",
            lesion_mask=root / "masks" / "lesion" / label / f"{pid}.png",
            lung_mask=root / "masks" / "lung" / label / f"{pid}.png"))
    return scan


@dataclass(frozen=True)
class _ManifestIndex:
    params: dict
    items: dict[tuple[str, str], dict]
    """Manifest entries by (class, id), the last two parts of a record id."""


def _manifest_index(root: Path) -> _ManifestIndex:
    """The set's manifest, indexed; read once per version of the file (a 1,000-image manifest
    takes longer to parse than an image takes to render)."""
    try:
        stat = (root / MANIFEST).stat()
    except OSError:
        raise DataError(f"phantom: no phantom set at {root} (scan it first)") from None
    return _indexed_manifest(str(root), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _indexed_manifest(root: str, mtime_ns: int, size: int) -> _ManifestIndex:
    manifest = _read_manifest(Path(root))
    if manifest is None:
        raise DataError(f"phantom: no readable phantom manifest at {root}")
    if manifest.get("format") != FORMAT_VERSION:
        raise DataError(f"phantom: the set at {root} was written by another version of the renderer; "
                        "scan it again to regenerate it")
    return _ManifestIndex(params=manifest["params"],
                          items={(it["label"], it["id"]): it for it in manifest["items"]})


def _set_params(n_per_class: int, size: int, seed: int, difficulty: str, **_: object) -> dict:
    return {"n_per_class": n_per_class, "size": size, "seed": seed, "difficulty": difficulty,
            "format": FORMAT_VERSION}


def _read_manifest(root: Path) -> dict | None:
    try:
        manifest = atomic.read_json(root / MANIFEST)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "items" in manifest else None


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _write_png(path: Path, array: np.ndarray) -> None:
    """Written atomically with fixed settings, so the same array gives the same bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=6)
    atomic.write_bytes(path, buf.getvalue())
