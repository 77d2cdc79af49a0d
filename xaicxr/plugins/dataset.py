"""The dataset plugin contract: ``Dataset.scan()`` lists ``Record``s and ``Skipped`` files; the
core decodes, resizes, batches and splits them. Also the file walk that dataset plugins share."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from ..errors import DataError
from ..io.imaging import precheck
from ..io.records import Record, Skipped

if TYPE_CHECKING:
    import numpy as np

Progress = Callable[[int], None]


@dataclass
class Scan:
    """The result of listing a dataset: usable records, and everything left out with a reason."""

    classes: list[str]
    records: list[Record] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


class Dataset:
    """Base of dataset plugins.

    A subclass takes its options as typed keyword arguments and implements :meth:`scan`.
    Decoding, resizing, batching and splitting are the core's job, so a plugin only says which
    files exist, what they are, and which files it left out and why.
    """

    #: Fixed class order, when the dataset defines one (e.g. ``cxr4``); otherwise found by ``scan``.
    classes: tuple[str, ...] = ()

    def scan(self, workdir: Path | None = None, progress: Progress | None = None) -> Scan:
        """List records and skipped files. ``workdir`` is a folder the dataset may use for files
        it generates or caches (the run directory's ``data/``); ``progress(n)`` may be called
        as work advances (files listed, images generated)."""
        raise NotImplementedError

    def external(self, path: str) -> "Dataset":
        """The same kind of dataset read from another location (``test_path``)."""
        raise DataError(f"{type(self).__name__} does not support an external test_path")

    #: The changes :meth:`counterfactual` can make (a synthetic dataset that knows how each image
    #: was made can re-make it without its lesion; a dataset of real files cannot).
    counterfactuals: tuple[str, ...] = ()

    def counterfactual(self, record: Record, change: str, workdir: Path | None = None) -> "np.ndarray":
        """``record``'s image with ``change`` applied, as the dataset's own file would decode:
        (H, W) float32 in [0, 1] at the file's size, so the core resizes it like the original.

        Changes: ``"lesion_removed"`` (the same image without its lesion: what the model's
        answer depends on when its evidence is the lesion) and ``"lesion_in_mask_only"`` (the
        lesion kept only inside its mask: whether the mask holds the evidence). ``workdir`` is
        the folder :meth:`scan` was given."""
        raise DataError(f"{type(self).__name__} cannot make counterfactual images ({change!r})")


def require_dir(path: str | Path | None, what: str) -> Path:
    if path is None:
        raise DataError(f"{what} needs a path (the 'path' option)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{what}: {root} is not a folder")
    return root


def walk_images(root: Path, skipped: list[Skipped]) -> Iterator[Path]:
    """Every usable image file under ``root``, sorted; everything else goes to ``skipped``.

    Hidden folders are reported once as a whole rather than walked (a ``.git`` inside a data
    folder should not flood the report), and symlinked folders are not followed.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for d in [d for d in dirnames if d.startswith(".")]:
            skipped.append(Skipped(str(Path(dirpath) / d) + "/", "hidden folder"))
            dirnames.remove(d)
        for d in [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            skipped.append(Skipped(str(Path(dirpath) / d) + "/", "symlinked folder not followed"))
            dirnames.remove(d)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            reason = precheck(path, root=root)
            if reason is None:
                yield path
            else:
                skipped.append(Skipped(str(path), reason))

