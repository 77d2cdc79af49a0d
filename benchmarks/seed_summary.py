"""Mean and 95 % interval over seeds of a study's variants (run directories named ``<name>-s<k>``
or ``<name>__seed=<k>``, as a study's matrix over ``train.seed`` names them).

A single seed of a small real-data run says little: early stopping lands on different epochs, and
the validation-chosen thresholds move. This groups a study's runs by name without the trailing
``-s<k>`` and prints, per group, accuracy, each binary task's AUC, sensitivity and specificity,
and for one class each explainer's per-image lung energy and whether it passes the cascading
randomisation test, and, where the run has the shortcut probe, the AUC of the model-input
features alone (``input``, forest) for each binary task. Each figure is the mean over seeds with
a 95 % t-interval over the seeds (mean +- t(0.975, n-1) sd / sqrt(n), clipped to [0, 1], where every figure here lies; with 3 seeds it is wide,
and it says how much retraining moves a figure, not how uncertain one run is: each run's own
bootstrap intervals are in its metrics.json); beside the lung energy, that of a uniform map (the
lungs' share of the image: what a map that ignores the image scores). ``--only REGEX`` keeps the matching columns.

    .venv/bin/python benchmarks/seed_summary.py runs/cxr3-study --class COVID-19
    .venv/bin/python benchmarks/seed_summary.py runs/paper-real-ablation --class covid \
        --only "accuracy|covid-vs-rest auc|probe|lung"
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path


def collect(study: Path, cls: str) -> dict[str, dict[str, list[float]]]:
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for metrics_path in sorted(study.glob("*/metrics.json")):
        name = re.sub(r"(-s\d+|_*seed=\d+)$", "", metrics_path.parent.name)
        m = json.loads(metrics_path.read_text())
        row = groups[name]
        row["n_test"].append(m["n_test"])
        row["accuracy"].append(m["accuracy"])
        for task, b in m.get("binary", {}).items():
            for key in ("auc", "sensitivity", "specificity"):
                if b.get(key) is not None:
                    row[f"{task} {key}"].append(b[key])
        for explainer, per_class in m.get("per_image", {}).items():
            lung = per_class.get(cls, {}).get("lung_energy") or {}
            if lung.get("value") is not None:
                row[f"{explainer} {cls} lung energy"].append(lung["value"])
        uniform = m.get("baselines", {}).get(cls, {}).get("uniform", {}).get("lung_energy") or {}
        if uniform.get("value") is not None:
            row[f"uniform map {cls} lung energy"].append(uniform["value"])
        for target, probe in m.get("probe", {}).get("targets", {}).items():
            forest = probe.get("input", {}).get("forest") or {}
            if target.startswith("binary:") and forest.get("value") is not None:
                row[f"probe input {target[7:]} auc"].append(forest["value"])
        for explainer, sanity in m.get("sanity", {}).items():
            row[f"{explainer} passes randomisation"].append(float(sanity["passes"]))
    return groups


def fmt(values: list[float]) -> str:
    if all(isinstance(v, int) for v in values):
        return "/".join(str(v) for v in sorted(set(values)))
    if len(values) == 1:
        return f"{values[0]:.3f}"
    from scipy import stats

    mean, half = statistics.mean(values), 0.0
    if statistics.stdev(values) > 0:
        half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return f"{mean:.3f} [{max(0.0, mean - half):.2f}, {min(1.0, mean + half):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a study output folder (xaicxr study ... --out)")
    parser.add_argument("--class", dest="cls", default="COVID-19",
                        help="class whose template lung energy is shown (default COVID-19)")
    parser.add_argument("--only", default="", help="keep the columns matching this regular expression")
    parser.add_argument("--json", action="store_true", help="print the raw values as JSON")
    args = parser.parse_args()
    groups = collect(args.study, args.cls)
    if not groups:
        raise SystemExit(f"no */metrics.json under {args.study}")
    if args.json:
        print(json.dumps({g: dict(v) for g, v in groups.items()}, indent=1))
        return
    keys = [k for k in dict.fromkeys(k for row in groups.values() for k in row)
            if re.search(args.only, k)]
    print("| variant | seeds | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for name, row in groups.items():
        seeds = len(row["accuracy"])
        print(f"| {name} | {seeds} | " + " | ".join(fmt(row[k]) if row.get(k) else "" for k in keys) + " |")


if __name__ == "__main__":
    main()
