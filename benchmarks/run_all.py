"""Run every benchmark and print one table of ratios with the machine description.

    .venv/bin/python benchmarks/run_all.py            # the full sizes of docs/results.md (about an hour)
    .venv/bin/python benchmarks/run_all.py --quick    # smaller sizes, same code paths (about 6 min);
                                                      # the targets hold for the full sizes only

Each benchmark prints a JSON object as its last line; this script collects those objects into
``benchmarks/last-run.json`` and prints the ratios that have targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

FULL = {
    "train_cache": ["--images", "200", "--epochs", "3"],
    "explain": ["--images", "32", "--rounds", "5", "--rss-images", "2000"],
    "aggregate": ["--repeat", "3", "--compression", "gzip"],
    "phantom_baselines": ["--n-per-class", "300", "--size", "64", "--epochs", "20"],
}
QUICK = {
    "train_cache": ["--images", "48", "--size", "128", "--epochs", "3"],
    "explain": ["--images", "16", "--rounds", "3", "--rss-images", "64", "--size", "128"],
    "aggregate": ["--repeat", "1", "--compression", "gzip", "--n", "2000", "--skip-naive"],
    "phantom_baselines": ["--n-per-class", "100", "--size", "64", "--epochs", "10"],
}
RATIOS = [
    ("train_cache", "speedup_head", "cached vs naive epoch, head only", ">= 50"),
    ("train_cache", "speedup_block5", "cached vs naive epoch, block5 + head", ">= 3.5"),
    ("explain", "gradcam_vs_forward", "gradcam vs forward pass", ">= 0.9"),
    ("explain", "gradcam_vs_tfkv", "gradcam vs tf-keras-vis Gradcam", ">= 3.5"),
    ("explain", "allclass_vs_single", "all-class vs one class (time)", "<= 1.2"),
    ("explain", "rss_growth_mib", "RSS growth while storing (MiB)", "flat"),
    ("aggregate", "ours_vs_read", "mean + median vs one read pass", "<= 1.5"),
    ("aggregate", "ours_peak_mib", "mean + median peak RSS (MiB)", "<= 512"),
    ("phantom_baselines", "linear_acc", "phantom linear baseline accuracy", "<= 0.85"),
    ("phantom_baselines", "cnn_acc", "phantom small CNN accuracy", ">= 0.95"),
    ("demo", "seconds", "demo wall time, data to report (s)", "<= 180"),
]


def last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def run_script(name: str, args: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    result = last_json(proc.stdout)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def run_demo() -> dict:
    out = Path(tempfile.mkdtemp(prefix="xaicxr-demo-")) / "demo"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "xaicxr.cli", "run", "--out", str(out), "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    seconds = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1]}
    summary = json.loads(proc.stdout)
    return {"seconds": seconds, "accuracy": summary.get("evaluate", {}).get("accuracy")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", help="names to run (train_cache explain aggregate phantom_baselines demo)")
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    names = args.only or [*plan, "demo"]
    results = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_demo() if name == "demo" else run_script(name, plan[name])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\nxaicxr benchmarks ({'quick' if args.quick else 'full'} sizes) on {machine}\n")
    print(f"{'benchmark':55s} {'value':>10s}  target")
    for bench, key, label, target in RATIOS:
        if bench not in results:
            continue
        value = results[bench].get(key, results[bench].get("error", "-"))
        shown = f"{value:10.3f}" if isinstance(value, (int, float)) else f"{str(value)[:40]:>10s}"
        print(f"{label:55s} {shown}  {target}")
    (HERE / "last-run.json").write_text(json.dumps({"machine": machine, "quick": args.quick, **results}, indent=2))
    print(json.dumps({"machine": machine, **{f"{b}.{k}": results[b].get(k) for b, k, _, _ in RATIOS if b in results}}))


if __name__ == "__main__":
    main()
