"""The local executor against a local Dask cluster of 1 and 2 workers, on one run, in one session.

A phantom run is trained for one epoch (``--until evaluate``: the model's quality does not
matter here); then Grad-CAM explains the whole image cache (``split = "all"``) with each
executor, ``--rounds`` times, in interleaved order (local, dask-1, dask-2, local, ...):

* ``start_s``: starting the executor (the cluster's scheduler and worker processes);
* ``first_pass_s``: the first explain on it (workers import TensorFlow, load ``model.keras``
  and trace the explainer; the local executor traces);
* ``pass_s``: the median of the later passes (everything loaded and traced);
* ``overhead_ms_per_batch``: ``--overhead-tasks`` tasks that only return a batch-sized result
  (the maps and flags of ``--batch`` images), mapped like explain batches: time per task,
  median of the rounds: what the engine adds to every batch, besides the one-time costs;
* ``identical``: whether each store's datasets equal the local store's byte for byte;
* the templates (mean, median, std) reduced locally and on 2 workers (``partition_rows``,
  merged on the workers in a fixed tree): time (median of ``--rounds``, after one warm-up
  reduction) and whether the templates are equal (largest difference for std).

    .venv/bin/python benchmarks/executor.py --out /tmp/xaicxr-executor --rounds 3

``--quality`` measures the quality stage instead, on the demo's run (``xaicxr/default.toml``:
1,000 phantoms at 64 px, Grad-CAM and LayerCAM of the test split, every quality figure) trained
for one epoch: the stage with the local executor and with a local Dask cluster of 2 workers,
``--rounds`` times interleaved (local, dask, local, ...). The cluster is started once and kept
for every round (:func:`xaicxr.executors.shared_executors`, as a study keeps it): its first
round includes the start and the workers' TensorFlow import, model load and tracing
(``first_s``), the later ones do not (``warm_s``, median). ``identical``: ``quality.h5`` (every
dataset and attribute) and the quality figures of ``metrics.json`` equal the local ones.

    .venv/bin/python benchmarks/executor.py --quality --out /tmp/xaicxr-quality --rounds 2

The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import numpy as np  # noqa: E402


def config(args: argparse.Namespace) -> dict:
    from xaicxr.config import resolve

    return resolve({
        "dataset": {"name": "phantom", "n_per_class": args.per_class, "size": args.size, "seed": 0,
                    "difficulty": "easy"},
        "split": {"test": 0.2, "val": 0.1},
        "backbone": {"name": "vgg19", "weights": "none", "width": args.width, "batchnorm": True,
                     "input_size": args.size, "dense": [32]},
        "train": {"epochs": 1, "batch_size": 32},
        "explain": [{"name": "gradcam", "layer": "block5_conv4", "split": "all", "batch_size": args.batch}],
        "aggregate": [{"name": "mean"}, {"name": "median"}, {"name": "std"}],
    }, "benchmarks/executor.py")


def store_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with h5py.File(path, "r") as h5:
        for name in sorted(h5):
            data = h5[name][()]
            digest.update(name.encode() + (repr(data.tolist()).encode() if data.dtype == object else data.tobytes()))
        digest.update(repr(sorted((k, str(v)) for k, v in h5.attrs.items())).encode())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """Every dataset (bytes, dtype, shape) and attribute of an HDF5 file, groups included."""
    digest = hashlib.sha256()

    def visit(name: str, obj: h5py.HLObject) -> None:
        digest.update(name.encode() + repr(sorted((k, str(v)) for k, v in obj.attrs.items())).encode())
        if isinstance(obj, h5py.Dataset):
            data = obj[()]
            digest.update(repr(data.tolist()).encode() if data.dtype == object else data.tobytes())
            digest.update(f"{obj.dtype}{obj.shape}".encode())

    with h5py.File(path, "r") as h5:
        h5.visititems(visit)
        digest.update(repr(sorted((k, str(v)) for k, v in h5.attrs.items())).encode())
    return digest.hexdigest()


def figures_digest(metrics: Path) -> str:
    """``metrics.json`` but its timings."""
    figures = json.loads(metrics.read_text())
    figures.pop("timings_s", None)
    return hashlib.sha256(json.dumps(figures, sort_keys=True).encode()).hexdigest()


def quality_benchmark(args: argparse.Namespace) -> dict:
    """The quality stage on the demo's run, local against a kept 2-worker Dask cluster."""
    from xaicxr.config import load_config
    from xaicxr.executors import shared_executors
    from xaicxr.pipeline import run_pipeline
    from xaicxr.rundir import RunDir

    base = load_config()
    base["train"] = {**base["train"], "epochs": 1}
    base["probe"] = {**base["probe"], "enabled": False}
    rundir = RunDir(args.out)
    start = time.perf_counter()
    run_pipeline(base, args.out, until="templates")
    prepare_s = time.perf_counter() - start
    configs = {"local": base, "dask-2": {**base, "run": {**base["run"], "executor": "dask", "workers": 2}}}
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    digests: dict[str, set] = {name: set() for name in configs}
    with shared_executors():
        for _ in range(args.rounds):
            for name, cfg in configs.items():
                start = time.perf_counter()
                run_pipeline(cfg, args.out, until="quality", force="quality")
                seconds[name].append(time.perf_counter() - start)
                digests[name].add((file_digest(rundir.quality), figures_digest(rundir.metrics)))
                print(name, [round(x, 2) for x in seconds[name]], file=sys.stderr, flush=True)
    from xaicxr.io.imagecache import open_image_cache

    test_images = len(open_image_cache(rundir.image_cache(int(base["backbone"]["input_size"]))).rows("test"))
    local = statistics.median(seconds["local"])
    warm = statistics.median(seconds["dask-2"][1:]) if args.rounds > 1 else None
    return {"test_images": test_images, "explained": [e["name"] for e in base["explain"]], "rounds": args.rounds,
            "cpus": os.cpu_count(), "load_average": os.getloadavg(), "prepare_s": round(prepare_s, 1),
            "local_s": round(local, 2), "local_rounds_s": [round(x, 2) for x in seconds["local"]],
            "dask-2_first_s": round(seconds["dask-2"][0], 2),
            "dask-2_warm_s": round(warm, 2) if warm is not None else None,
            "dask-2_rounds_s": [round(x, 2) for x in seconds["dask-2"]],
            "dask-2_first_over_local": round(seconds["dask-2"][0] / local, 3),
            "dask-2_warm_over_local": round(warm / local, 3) if warm is not None else None,
            "identical": len(digests["local"]) == 1 and digests["dask-2"] == digests["local"]}


class BatchSizedResult:
    """A task that does nothing but return what an explain batch returns."""

    def __init__(self, rows: int, size: int) -> None:
        self.rows, self.size = rows, size

    def __call__(self, span: tuple[int, int]) -> tuple:
        return np.zeros((self.rows, self.size, self.size), np.float32), np.zeros(self.rows, bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/xaicxr-executor"))
    parser.add_argument("--per-class", type=int, default=48, help="phantoms per class (4 classes)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partition-rows", type=int, default=32)
    parser.add_argument("--overhead-tasks", type=int, default=100)
    parser.add_argument("--templates-only", action="store_true", help="only the template reduction "
                        "(on the store an earlier run of this script left in --out)")
    parser.add_argument("--quality", action="store_true", help="the quality stage of the demo's run instead "
                        "(local against 2 Dask workers)")
    args = parser.parse_args()
    if args.quality:
        print(json.dumps(quality_benchmark(args)))
        return

    from xaicxr.executors import LocalExecutor
    from xaicxr.executors.dask_cluster import DaskExecutor
    from xaicxr.io.imagecache import open_image_cache
    from xaicxr.io.modelfile import load_model, model_sha256
    from xaicxr.pipeline import run_pipeline
    from xaicxr.rundir import RunDir
    from xaicxr.stages.explain import ExplainJob, explain_split
    from xaicxr.stages.templates import make_aggregators, reduce_states

    cfg = config(args)
    rundir = RunDir(args.out)
    run_pipeline(cfg, args.out, until="evaluate")
    model = load_model(rundir.model)
    sha = model_sha256(rundir.model)
    cache = open_image_cache(rundir.image_cache(args.size))
    job = ExplainJob.from_spec(cfg["explain"][0], rundir)
    n = len(cache.rows("all"))
    spans = [(s, min(s + args.batch, n)) for s in range(0, n, args.batch)]

    makers = {"local": LocalExecutor, "dask-1": lambda: DaskExecutor(workers=1, partition_rows=args.partition_rows),
              "dask-2": lambda: DaskExecutor(workers=2, partition_rows=args.partition_rows)}
    figures: dict[str, dict] = {name: {"start_s": [], "first_pass_s": [], "pass_s": [], "overhead_ms_per_batch": [],
                                       "digests": set()} for name in makers}
    for _ in range(0 if args.templates_only else args.rounds):
        for name, make in makers.items():
            start = time.perf_counter()
            executor = make()
            figures[name]["start_s"].append(time.perf_counter() - start)
            try:
                for index in range(2):
                    start = time.perf_counter()
                    path = explain_split(rundir, job, model, sha, cache, overwrite=True, executor=executor)
                    seconds = time.perf_counter() - start
                    figures[name]["first_pass_s" if index == 0 else "pass_s"].append(seconds)
                    figures[name]["digests"].add(store_digest(path))
                tasks = [(0, args.batch)] * args.overhead_tasks
                start = time.perf_counter()
                for _ in executor.map(BatchSizedResult(args.batch, args.size), tasks):
                    pass
                figures[name]["overhead_ms_per_batch"].append(1000 * (time.perf_counter() - start) / len(tasks))
            finally:
                executor.close()
            print(name, {k: [round(x, 3) for x in v] for k, v in figures[name].items() if k != "digests"},
                  file=sys.stderr, flush=True)

    local_digests = figures["local"]["digests"]
    results: dict = {"images": n, "batches": len(spans), "batch": args.batch, "size": args.size, "width": args.width,
                     "rounds": args.rounds, "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    for name, f in figures.items() if not args.templates_only else ():
        results[name] = {k: round(statistics.median(v), 3) for k, v in f.items() if k != "digests"}
        results[name]["identical"] = f["digests"] == local_digests and len(local_digests) == 1
    if not args.templates_only:
        for name in ("dask-1", "dask-2"):
            results[f"{name}_over_local_pass"] = round(results[name]["pass_s"] / results["local"]["pass_s"], 3)
        results["dask-2_over_dask-1_pass"] = round(results["dask-2"]["pass_s"] / results["dask-1"]["pass_s"], 3)

    aggregators = make_aggregators(cfg["aggregate"])
    store = rundir.heatmaps("gradcam")
    start = time.perf_counter()
    local_states = reduce_states(store, cfg, aggregators, LocalExecutor())
    local_s = time.perf_counter() - start
    with DaskExecutor(workers=2, partition_rows=args.partition_rows) as executor:
        reduce_states(store, cfg, make_aggregators(cfg["aggregate"]), executor)  # workers import the plugins
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            cluster_states = reduce_states(store, cfg, make_aggregators(cfg["aggregate"]), executor)
            times.append(time.perf_counter() - start)
        cluster_s = statistics.median(times)
    templates = {"local_s": round(local_s, 3), "dask-2_s": round(cluster_s, 3),
                 "partitions": -(-n // args.partition_rows)}
    for name, agg in aggregators.items():
        diffs = [float(np.max(np.abs(agg.finalize(local_states[name][c]) - agg.finalize(cluster_states[name][c]))))
                 for c in local_states[name]]
        templates[name] = {"equal": max(diffs) == 0.0, "max_abs_difference": max(diffs)}
    results["templates"] = templates
    print(json.dumps(results))


if __name__ == "__main__":
    main()
