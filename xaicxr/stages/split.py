"""The split stage: stratified train/val/test splits that keep each patient's images in one
split, written to ``split.json``.

Patients are assigned whole, largest first, each to the split where it brings the class counts
closest to their targets; ties are broken by a seeded shuffle, so a seed gives one split. The
test set is an internal split, the dataset's own folders, an external ``test_path``, or a
leave-source-out ``test_pattern``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Sequence

from pathlib import Path

import numpy as np
from rich.markup import escape

from ..errors import ConfigError, DataError
from ..io import atomic
from ..io.imagecache import SPLITS
from ..plugins import Record
from ..progress import console
from ..rundir import RunDir
from . import Run

NAME = "split"
TABLES = ("split",)


def outputs(cfg: dict, rundir: RunDir) -> list[Path]:
    return [rundir.split]


def run(run: Run) -> dict:
    classes, records, external = run.dir.records()
    s = run.cfg["split"]
    split = split_records(records, classes, test=s.get("test", 0.0), val=s["val"], seed=s["seed"],
                          group_by_patient=s["group_by_patient"],
                          use_dataset_split=s["use_dataset_split"], external_test=external,
                          test_pattern=s.get("test_pattern"))
    summary = split_summary(split, records + external, classes)
    warnings = check_classes(summary["counts"], classes)
    test_set = ("external (test_path)" if external else
                "leave-source-out ([split] test_pattern)" if s.get("test_pattern") else "internal split")
    atomic.write_json(run.dir.split, {"classes": classes, "external_test": bool(external),
                                      "test_set": test_set, **s, **summary, **split,
                                      "warnings": warnings})
    return summary["sizes"]


def check_classes(counts: dict[str, dict[str, int]], classes: Sequence[str]) -> list[str]:
    """A class without a training image is an error (the model cannot learn it). A class
    without a test image is a warning, printed and kept in ``split.json`` and the report: the
    run still means something for the other classes (a held-out source may lack a class on
    purpose), but that class's recall, F1 and localisation figures cannot be measured."""
    for c in classes:
        if counts["train"][c] == 0:
            total = sum(counts[s][c] for s in counts)
            raise DataError(f"class {c!r} has no training image ({total} image{'s' if total != 1 else ''} in all, "
                            f"split {dict((s, counts[s][c]) for s in counts)}); add images of it or leave it out")
    if not any(counts["test"].values()):
        raise DataError(f"the test split is empty ({sum(sum(counts[s].values()) for s in counts)} images, split "
                        f"{ {s: sum(counts[s].values()) for s in counts} }): nothing could be evaluated; add images, "
                        "raise [split] test, or give a test set ([dataset] test_path)")
    warnings = [f"class {c!r} has no test image ({sum(counts[s][c] for s in counts)} in all): its recall, F1 "
                "and per-class figures cannot be measured" for c in classes if counts["test"][c] == 0]
    for w in warnings:
        console.print(f"[bold yellow]warning:[/] {escape(w)}")
    return warnings


def split_records(records: Sequence[Record], classes: Sequence[str], *, test: float = 0.2,
                  val: float = 0.1, seed: int = 0, group_by_patient: bool = True,
                  use_dataset_split: bool = False,
                  external_test: Sequence[Record] = (),
                  test_pattern: str | None = None) -> dict[str, list[str]]:
    """``{"train": ids, "val": ids, "test": ids}``.

    With ``external_test`` those records are the whole test set and ``records`` are split into
    train and val only. ``test_pattern`` does the same for the records whose id it matches (see
    :func:`held_out_by_pattern`). With ``use_dataset_split`` a record's own ``subset`` decides,
    and records without one (or a missing val subset) are split by the fractions.
    """
    if not (0 <= test < 1 and 0 <= val < 1 and test + val < 1):
        raise ConfigError(f"[split] fractions must satisfy 0 <= test, val and test + val < 1 (got test={test}, val={val})")
    if test_pattern is not None:
        if external_test or use_dataset_split:
            raise ConfigError("[split] test_pattern cannot be combined with [dataset] test_path "
                              "or [split] use_dataset_split: each of them decides the test set")
        held = held_out_by_pattern(records, test_pattern, group_by_patient)
        external_test = [r for r in records if r.id in held]
        records = [r for r in records if r.id not in held]
        untrained = [c for c in classes if not any(r.label == c for r in records)]
        if untrained:
            raise ConfigError(f"[split] test_pattern {test_pattern!r} holds out every image of class "
                              f"{untrained[0]!r}, so the model could not learn it")
    fractions = {"train": 1 - test - val, "val": val, "test": test}
    if external_test:
        fractions = {"train": 1 - val, "val": val, "test": 0.0}
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    rest = list(records)
    if use_dataset_split:
        rest = []
        for r in records:
            if r.subset in SPLITS and not (external_test and r.subset == "test"):
                out[r.subset].append(r.id)
            else:
                rest.append(r)
        if not out["val"] and val > 0:
            own_train = set(out["train"])
            carve = [r for r in records if r.id in own_train]
            parts = _assign(carve, classes, {"train": 1 - val, "val": val}, seed, group_by_patient)
            out["train"], out["val"] = parts["train"], parts["val"]
    for name, ids in _assign(rest, classes, fractions, seed, group_by_patient).items():
        out[name].extend(ids)
    out["test"].extend(r.id for r in external_test)
    return {s: sorted(out[s]) for s in SPLITS}


def held_out_by_pattern(records: Sequence[Record], pattern: str,
                        group_by_patient: bool = True) -> set[str]:
    """Ids of the records a leave-source-out test holds out: those whose id ``pattern`` matches
    (``re.search``), plus, when grouping by patient, every other image of their patients, so a
    held-out patient or source never also trains the model."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"[split] test_pattern {pattern!r} is not a valid regular expression: {exc}") from None
    held = {r.id for r in records if regex.search(r.id)}
    if not held:
        raise ConfigError(f"[split] test_pattern {pattern!r} matches no image id "
                          f"(ids look like {records[0].id!r})" if records else
                          f"[split] test_pattern {pattern!r}: the dataset has no images")
    if group_by_patient:
        patients = {r.patient for r in records if r.id in held and r.patient is not None}
        held |= {r.id for r in records if r.patient in patients}
    if len(held) == len(records):
        raise ConfigError(f"[split] test_pattern {pattern!r} holds out every image; nothing is left to train on")
    return held


def _assign(records: Sequence[Record], classes: Sequence[str], fractions: dict[str, float],
            seed: int, group_by_patient: bool) -> dict[str, list[str]]:
    names = [s for s, f in fractions.items() if f > 0]
    result: dict[str, list[str]] = {s: [] for s in fractions}
    if not records:
        return result
    col = {c: i for i, c in enumerate(classes)}
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        key = f"patient:{r.patient}" if group_by_patient and r.patient is not None else f"id:{r.id}"
        groups[key].append(r)
    keys = sorted(groups)
    rng = np.random.default_rng(seed)
    keys = [keys[i] for i in rng.permutation(len(keys))]
    keys.sort(key=lambda k: -len(groups[k]))
    totals = np.zeros(len(classes))
    for r in records:
        totals[col[r.label]] += 1
    target = np.array([[fractions[s] * t for t in totals] for s in names])
    current = np.zeros_like(target)
    scale = np.maximum(totals, 1.0)
    for key in keys:
        vec = np.zeros(len(classes))
        for r in groups[key]:
            vec[col[r.label]] += 1
        costs = []
        for i in range(len(names)):
            trial = current.copy()
            trial[i] += vec
            costs.append(float((((trial - target) / scale) ** 2).sum()))
        best = int(np.argmin(costs))
        current[best] += vec
        result[names[best]].extend(r.id for r in groups[key])
    return result


def split_summary(split: dict[str, list[str]], records: Sequence[Record],
                  classes: Sequence[str]) -> dict:
    """Counts per split and class, and how many patients appear in more than one split."""
    by_id = {r.id: r for r in records}
    counts = {s: {c: 0 for c in classes} for s in SPLITS}
    patient_splits: dict[str, set[str]] = defaultdict(set)
    for s in SPLITS:
        for i in split[s]:
            r = by_id[i]
            counts[s][r.label] += 1
            if r.patient is not None:
                patient_splits[r.patient].add(s)
    shared = sum(1 for v in patient_splits.values() if len(v) > 1)
    return {"counts": counts, "patients_in_several_splits": shared,
            "sizes": {s: len(split[s]) for s in SPLITS}}
