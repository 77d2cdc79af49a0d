"""Mean and standard deviation over seeds of a study's variants (``<name>-s<k>`` run directories).

A single seed of a small real-data run says little: early stopping lands on different epochs, and
the validation-chosen thresholds move. This groups a study's runs by name without the trailing
``-s<k>`` and prints, per group, accuracy, each binary task's AUC, sensitivity and specificity,
and for one class each explainer's per-image lung energy and whether it passes the cascading
randomisation test, as mean +- sd (n seeds).

    .venv/bin/python benchmarks/seed_summary.py runs/cxr3-study --class COVID-19
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
        name = re.sub(r"-s\d+$", "", metrics_path.parent.name)
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
        for explainer, sanity in m.get("sanity", {}).items():
            row[f"{explainer} passes randomisation"].append(float(sanity["passes"]))
    return groups


def fmt(values: list[float]) -> str:
    if all(isinstance(v, int) for v in values):
        return "/".join(str(v) for v in sorted(set(values)))
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a study output folder (xaicxr study ... --out)")
    parser.add_argument("--class", dest="cls", default="COVID-19",
                        help="class whose template lung energy is shown (default COVID-19)")
    parser.add_argument("--json", action="store_true", help="print the raw values as JSON")
    args = parser.parse_args()
    groups = collect(args.study, args.cls)
    if not groups:
        raise SystemExit(f"no */metrics.json under {args.study}")
    if args.json:
        print(json.dumps({g: dict(v) for g, v in groups.items()}, indent=1))
        return
    keys = list(dict.fromkeys(k for row in groups.values() for k in row))
    print("| variant | seeds | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for name, row in groups.items():
        seeds = len(row["accuracy"])
        print(f"| {name} | {seeds} | " + " | ".join(fmt(row[k]) if row.get(k) else "" for k in keys) + " |")


if __name__ == "__main__":
    main()
