"""Streaming templates (mean + median in one pass) against a plain read pass and naive numpy.

    .venv/bin/python benchmarks/aggregate.py                     # 20,000 x 224x224, 4 classes
    .venv/bin/python benchmarks/aggregate.py --compression gzip --repeat 5

The store (float16, HDF5 chunks of 8 heatmaps, uncompressed unless ``--compression``) is
generated once into ``--dir`` and reused; generation is not timed. A warm-up read puts it in
the page cache, then each repetition runs, each in its own subprocess so that peak RSS
(VmHWM) does not mix:

1. ``read``:  read every chunk of the store, nothing else;
2. ``ours``:  ``build_templates`` with ``mean`` and ``median`` per class, then finalize;
3. ``naive``: load everything, then ``np.mean`` / ``np.median`` on axis 0 per class;
4. with ``--shards K``, ``ours/Kp``: K processes at once, each ``build_templates(shard=(k, K))``
   + ``save_states``, then one process that loads, merges and finalizes (wall = slowest shard
   + merge); its templates must equal ``ours``'s exactly.

Peak RSS includes the interpreter with numpy and h5py (``import_peak_mib``, ~75 MiB). Both
store layouts are worth running: uncompressed, the read pass is a page-cache copy (~0.02 ms
per heatmap) that no per-pixel median can approach; gzip-1 + shuffle is what a disk-frugal
writer would use, and there decompression dominates the read pass.

Times are medians over repetitions (the machine may be shared). The last line printed is a
JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

CLASSES = ["normal", "bacteria", "virus", "covid"]
MODES = ("read", "ours", "naive")
AGGREGATORS = ("mean", "median")


def gradcam_like(rng: np.random.Generator, n: int, size: int, patterns: np.ndarray,
                 labels: np.ndarray) -> np.ndarray:
    """Smooth maps in [0, 1]: a class pattern plus per-image variation on a 14x14 grid, ReLU,
    max-normalised and bilinearly upsampled, as Grad-CAM at ``block5_conv4`` gives."""
    grid = patterns[labels] + rng.normal(0, 0.35, (n, 14, 14))
    np.maximum(grid, 0, out=grid)
    grid /= np.maximum(grid.max(axis=(1, 2), keepdims=True), 1e-6)
    up = _bilinear(14, size)
    return np.einsum("ij,njk,lk->nil", up, grid, up, optimize=True).clip(0, 1)


def _bilinear(src: int, dst: int) -> np.ndarray:
    pos = (np.arange(dst) + 0.5) * src / dst - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, src - 2)
    frac = np.clip(pos - lo, 0, 1)
    out = np.zeros((dst, src))
    out[np.arange(dst), lo] = 1 - frac
    out[np.arange(dst), lo + 1] = frac
    return out


def make_store(path: Path, n: int, size: int, classes: int, compression: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    patterns = rng.random((classes, 14, 14)) ** 3 * 2
    labels = rng.integers(0, classes, n)
    predictions = np.where(rng.random(n) < 0.85, labels, rng.integers(0, classes, n))
    options = {"none": {}, "gzip": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
               "lzf": {"compression": "lzf", "shuffle": True}}[compression]
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        ds = f.create_dataset("heatmaps", (n, size, size), np.float16, chunks=(8, size, size), **options)
        for start in range(0, n, 512):
            stop = min(start + 512, n)
            ds[start:stop] = gradcam_like(rng, stop - start, size, patterns, labels[start:stop]).astype(np.float16)
        f.create_dataset("labels", data=labels)
        f.create_dataset("predictions", data=predictions)
        f.create_dataset("ids", data=[f"img{i:06d}" for i in range(n)], dtype=h5py.string_dtype())
        f.attrs["classes"] = json.dumps(CLASSES[:classes] if classes <= 4 else [f"c{k}" for k in range(classes)])
    os.replace(tmp, path)


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(mode: str, store: Path, chunk: int, save: Path | None, shard: str | None = None,
           parts: Path | None = None) -> dict:
    if mode in ("ours", "shard", "merge"):
        from xaicxr import plugins
        from xaicxr.analysis.aggregation import build_templates, finalize_templates, merge_states
        from xaicxr.io.template_store import load_states, save_states
        from xaicxr.rundir import Shard

        aggs = {name: plugins.get("aggregator", name)() for name in AGGREGATORS}
    base = peak_mib()
    cpu = time.process_time()
    start = time.perf_counter()
    templates: dict[str, dict[str, np.ndarray]] = {}
    if mode == "read":
        with h5py.File(store, "r") as f:
            ds = f["heatmaps"]
            buffer = np.empty((chunk, *ds.shape[1:]), ds.dtype)
            for lo in range(0, ds.shape[0], chunk):
                hi = min(lo + chunk, ds.shape[0])
                ds.read_direct(buffer, np.s_[lo:hi], np.s_[0:hi - lo])
    elif mode == "ours":
        states = build_templates(store, aggs, chunk=chunk)
        templates = finalize_templates(states, aggs)
    elif mode == "shard":
        part = Shard.parse(shard)
        with h5py.File(store, "r") as f:
            total = len(f["heatmaps"])
        save_states(save, build_templates(store, aggs, chunk=chunk, span=part.bounds(total)), aggs,
                    shard=[part.k, part.n])
        save = None
    elif mode == "merge":
        files = sorted(parts.glob("shard-*.h5"))
        templates = finalize_templates(merge_states((load_states(f, aggs)[0] for f in files), aggs), aggs)
    else:
        with h5py.File(store, "r") as f:
            heatmaps = f["heatmaps"][()]
            labels = f["labels"][()]
            classes = json.loads(f.attrs["classes"])
        templates = {"mean": {}, "median": {}}
        for k, cls in enumerate(classes):
            rows = heatmaps[labels == k].astype(np.float32)
            templates["mean"][cls] = np.mean(rows, axis=0, dtype=np.float64)
            templates["median"][cls] = np.median(rows, axis=0)
            del rows
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    if save is not None and templates:
        np.savez(save, **{f"{agg}/{cls}": t for agg, per in templates.items() for cls, t in per.items()})
    return {"mode": mode, "seconds": elapsed, "cpu_seconds": cpu, "peak_mib": peak_mib(), "import_peak_mib": base}


def _command(mode: str, store: Path, chunk: int, save: Path | None, shard: str | None = None,
             parts: Path | None = None) -> list[str]:
    cmd = [sys.executable, __file__, "--worker", mode, "--store", str(store), "--chunk", str(chunk)]
    if parts is not None:
        cmd += ["--parts", str(parts)]
    if save is not None:
        cmd += ["--save", str(save)]
    if shard is not None:
        cmd += ["--shard", shard]
    return cmd


def run_worker(mode: str, store: Path, chunk: int, save: Path | None, parts: Path | None = None) -> dict:
    done = subprocess.run(_command(mode, store, chunk, save, parts=parts), check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_sharded(store: Path, chunk: int, shards: int, folder: Path, save: Path | None) -> dict:
    """``shards`` processes at once, each ``build_templates(shard=(k, shards))`` + ``save_states``,
    then one process loading, merging and finalizing. Wall = slowest shard + merge (each
    without interpreter start-up, like the other passes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("shard-*.h5"):
        old.unlink()
    procs = [subprocess.Popen(_command("shard", store, chunk, folder / f"shard-{k}.h5", f"{k}/{shards}"),
                              stdout=subprocess.PIPE, text=True) for k in range(shards)]
    parts = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"shard worker failed ({proc.returncode})")
        parts.append(json.loads(out.strip().splitlines()[-1]))
    merged = run_worker("merge", store, chunk, save if save is not None else folder / "merged.npz", folder)
    merged["seconds"] += max(p["seconds"] for p in parts)
    merged["cpu_seconds"] += sum(p["cpu_seconds"] for p in parts)
    merged["peak_mib"] = max([merged["peak_mib"]] + [p["peak_mib"] for p in parts])
    merged["sum_peak_mib"] = sum(p["peak_mib"] for p in parts)
    return merged


def compare(ours: Path, naive: Path) -> dict[str, float]:
    a, b = np.load(ours), np.load(naive)
    out = {}
    for agg in ("mean", "median"):
        keys = [k for k in b.files if k.startswith(agg + "/")]
        out[f"{agg}_max_abs_err"] = float(max(np.abs(a[k] - b[k]).max() for k in keys))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--compression", choices=["none", "gzip", "lzf"], default="none")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "xaicxr-bench")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--shards", type=int, default=0,
                        help="also time this many shard processes at once, then a merge (0: skip)")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--worker", choices=MODES + ("shard", "merge"), help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--shard", help=argparse.SUPPRESS)
    parser.add_argument("--parts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.store, args.chunk, args.save, args.shard, args.parts)))
        return

    args.dir.mkdir(parents=True, exist_ok=True)
    store = args.dir / f"heatmaps-{args.n}x{args.size}-c{args.classes}-{args.compression}.h5"
    if not store.exists():
        t = time.perf_counter()
        make_store(store, args.n, args.size, args.classes, args.compression)
        print(f"generated {store} ({store.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s",
              file=sys.stderr)
    run_worker("read", store, args.chunk, None)  # warm the page cache
    load_before = os.getloadavg()[0]

    sharded = f"ours/{args.shards}p"
    modes = ["read", "ours"] + ([sharded] if args.shards > 1 else []) + ([] if args.skip_naive else ["naive"])
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(args.repeat):
        for mode in modes:
            save = args.dir / f"{mode.replace('/', '-')}.npz" if r == 0 and mode != "read" else None
            if mode == sharded:
                runs[mode].append(run_sharded(store, args.chunk, args.shards, args.dir / "shards", save))
            else:
                runs[mode].append(run_worker(mode, store, args.chunk, save))
            print(f"  run {r + 1} {mode:5s} {runs[mode][-1]['seconds']:7.2f} s "
                  f"{runs[mode][-1]['peak_mib']:7.0f} MiB", file=sys.stderr)

    med = {m: float(np.median([x["seconds"] for x in runs[m]])) for m in modes}
    cpu = {m: float(np.median([x["cpu_seconds"] for x in runs[m]])) for m in modes}
    peak = {m: float(max(x["peak_mib"] for x in runs[m])) for m in modes}
    errors = compare(args.dir / "ours.npz", args.dir / "naive.npz") if "naive" in modes else {}
    if sharded in modes:
        errors["sharded_vs_ours_max_abs_diff"] = compare(args.dir / "ours.npz",
                                                         args.dir / f"{sharded.replace('/', '-')}.npz")["median_max_abs_err"]
    per_image = 1000 / args.n
    print(f"\n{args.n} heatmaps {args.size}x{args.size} float16, {args.classes} classes, "
          f"compression={args.compression}, chunk={args.chunk}, "
          f"load avg {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"{'pass':6s} {'wall s':>7s} {'ms/img':>7s} {'x read':>7s} {'cpu s':>7s} {'peak MiB':>9s}  all runs, wall s")
    for m in modes:
        print(f"{m:6s} {med[m]:7.2f} {med[m] * per_image:7.3f} {med[m] / med['read']:7.1f} {cpu[m]:7.2f} "
              f"{peak[m]:9.0f}  " + " ".join(f"{x['seconds']:.2f}" for x in runs[m]))
    naive = "naive" in modes
    result = {"n": args.n, "size": args.size, "classes": args.classes, "compression": args.compression,
              "chunk": args.chunk, "repeats": args.repeat, "load_avg": round(load_before, 1),
              "read_s": round(med["read"], 3), "ours_s": round(med["ours"], 3),
              "naive_s": round(med["naive"], 3) if naive else None,
              "ours_vs_read": round(med["ours"] / med["read"], 2),
              "ours_vs_naive": round(med["ours"] / med["naive"], 3) if naive else None,
              "read_cpu_s": round(cpu["read"], 3), "ours_cpu_s": round(cpu["ours"], 3),
              "naive_cpu_s": round(cpu["naive"], 3) if naive else None,
              "read_peak_mib": round(peak["read"]), "ours_peak_mib": round(peak["ours"]),
              "naive_peak_mib": round(peak["naive"]) if naive else None,
              "import_peak_mib": round(runs["ours"][0]["import_peak_mib"]),
              **({f"ours_{args.shards}proc_s": round(med[sharded], 3),
                  f"ours_{args.shards}proc_vs_read": round(med[sharded] / med["read"], 2),
                  f"ours_{args.shards}proc_peak_mib_each": round(peak[sharded]),
                  f"ours_{args.shards}proc_peak_mib_sum": round(max(x["sum_peak_mib"] for x in runs[sharded]))}
                 if sharded in modes else {}),
              **{k: float(f"{v:.4g}") for k, v in errors.items()},
              "median_error_bound": 1 / 1024}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
