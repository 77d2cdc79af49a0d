"""Deletion/insertion curves against their own limit: the forward passes they must make.

    .venv/bin/python benchmarks/faithfulness.py                     # 96 px N=64, 224 px N=16
    .venv/bin/python benchmarks/faithfulness.py --n224 4 --rounds 3 # 224 px cut to 4 images

Models (random weights, ``weights="none"``, 4 classes): a width-reduced VGG19-BN at 96 px
(``width=0.125, batchnorm=True, dense=[64]``) and the full-width VGG19 at 224 px. Images are
uniform noise in [0, 1]; maps are Gaussian-smoothed noise (sigma = size / 14, like an upsampled
Grad-CAM), so the removed regions are large blobs, ROAD's hardest case. Per size, in one process:

* ``forward``: images/s of the plain compiled forward pass at the same batch size, over the
  images repeated to ``--forward96`` / ``--forward224`` passes (by default as many as the
  curves make at 96 px, 4 batches at 224 px);
* ``blur`` / ``road``: seconds per image of ``perturbation_curves`` with that fill (default 11
  fractions), the forward passes it makes per image (20: the shared end points are computed
  once), and ``of_limit`` = (passes per image / forward rate) / (seconds per image): 1.0 means
  the curves cost exactly their forward passes;
* ``*_of_limit_cpu``: the same ratio from this process's CPU time, less sensitive to other
  processes on a shared machine;
* ``road_alone``: seconds per image and step of the ``road`` fill on the masks of every interior
  curve point (deletion and insertion), and the conjugate-gradient iterations per batch.

Each timed task runs ``--rounds`` times, the tasks interleaved, and the medians are reported
(other processes may share the CPU). The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

CLASSES = ["normal", "bacteria", "virus", "covid"]
SETUPS = {
    96: {"width": 0.125, "batchnorm": True, "dense": [64]},
    224: {},
}


def build_model(size: int):
    import keras

    from xaicxr import plugins

    keras.utils.set_random_seed(0)
    return plugins.get("backbone", "vgg19")(weights="none", input_size=size,
                                            **SETUPS[size]).build(CLASSES)


def smooth_maps(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    from scipy import ndimage

    maps = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), (0, size / 14, size / 14))
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return (maps / maps.max(axis=(1, 2), keepdims=True)).astype(np.float32)


def curve_masks(maps: np.ndarray) -> np.ndarray:
    """(N * P, H, W) removed masks of every interior deletion and insertion point."""
    from xaicxr.analysis import faithfulness as fa

    n, height, width = maps.shape
    ranks = fa._ranks(fa.relevance_order(maps), (height, width))
    ranges, _, _ = fa.curve_perturbations(fa.FRACTIONS, height * width)
    interior = [(lo, hi) for lo, hi in ranges if 0 < hi - lo < height * width]
    return np.concatenate([(ranks >= lo) & (ranks < hi) for lo, hi in interior])


def bench_size(size: int, n: int, batch: int, rounds: int, forward_n: int) -> dict[str, object]:
    import tensorflow as tf
    from xaicxr_builtins.fills.road import Road, road_impute

    from xaicxr.analysis import faithfulness as fa

    road = Road()
    model = build_model(size)
    rng = np.random.default_rng(0)
    images = rng.random((n, size, size), dtype=np.float32)
    maps = smooth_maps(rng, n, size)
    spec = tf.TensorSpec((None, size, size, 1), tf.float32)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec],
                          autograph=False)
    targets = np.concatenate([forward(images[i:i + batch, ..., None]).numpy().argmax(1)
                              for i in range(0, n, batch)])
    masks = curve_masks(maps)
    iterations: list[int] = []
    impute = tf.function(lambda x, m: road_impute(x, m, return_iterations=True),
                         input_signature=[tf.TensorSpec((None, size, size), tf.float32),
                                          tf.TensorSpec((None, size, size), tf.bool)],
                         autograph=False)
    mask_images = np.tile(images, (len(masks) // n, 1, 1))  # masks are fraction-major
    forward_images = np.resize(images, (max(forward_n, batch), size, size))

    def run_forward() -> None:
        for i in range(0, len(forward_images), batch):
            forward(forward_images[i:i + batch, ..., None]).numpy()

    def run_curves(fill: str):
        return lambda: fa.perturbation_curves(model, images, maps, targets, fill=fill,
                                              batch_size=batch)

    def run_road_alone() -> None:
        for i in range(0, len(masks), batch):
            road.fill(mask_images[i:i + batch], masks[i:i + batch])

    for fill in ("blur", "road"):  # trace, on two images and the two end points only
        fa.perturbation_curves(model, images[:2], maps[:2], targets[:2], fill=fill,
                               batch_size=batch, fractions=np.array([0.0, 1.0]))
    run_forward()
    road.fill(mask_images[:2], masks[:2])
    for i in range(0, len(masks), batch):
        iterations.append(int(impute(mask_images[i:i + batch], masks[i:i + batch])[1]))

    tasks = {"forward": run_forward, "blur": run_curves("blur"), "road": run_curves("road"),
             "road_alone": run_road_alone}
    seconds: dict[str, list[float]] = {name: [] for name in tasks}
    cpu: dict[str, list[float]] = {name: [] for name in tasks}
    names = list(tasks)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            tasks[name]()
            seconds[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            print(f"{size} px round {r + 1}/{rounds} {name:>10}: {seconds[name][-1]:8.2f} s "
                  f"(cpu {cpu[name][-1]:8.2f} s)", file=sys.stderr, flush=True)
    med = {name: statistics.median(values) for name, values in seconds.items()}
    med_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    passes = fa.perturbation_curves(model, images[:1], maps[:1], targets[:1], fill="blur",
                                    batch_size=batch)["passes_per_image"]
    forward_rate = len(forward_images) / med["forward"]
    result: dict[str, object] = {"size": size, "images": n, "batch": batch, "rounds": rounds,
                                 "forward_images": len(forward_images),
                                 "forward_img_s": forward_rate, "passes_per_image": passes,
                                 "limit_s_per_image": passes / forward_rate}
    for fill in ("blur", "road"):
        per_image = med[fill] / n
        result[f"{fill}_s_per_image"] = per_image
        result[f"{fill}_of_limit"] = passes / forward_rate / per_image
        result[f"{fill}_of_limit_cpu"] = (passes * med_cpu["forward"] / len(forward_images)
                                          / (med_cpu[fill] / n))
    result["road_alone_s_per_image_step"] = med["road_alone"] / len(masks)
    result["road_alone_vs_forward"] = result["road_alone_s_per_image_step"] * forward_rate
    result["road_iterations"] = {"min": min(iterations), "median": statistics.median(iterations),
                                 "max": max(iterations)}
    result["seconds"] = {name: [round(v, 3) for v in values] for name, values in seconds.items()}
    result["cpu_seconds"] = {name: [round(v, 3) for v in values] for name, values in cpu.items()}
    return result


def table(results: list[dict[str, object]]) -> str:
    lines = [f"{'size':>5} {'N':>4} {'batch':>5} {'fwd img/s':>10} {'passes':>6} "
             f"{'limit s/img':>11} {'blur s/img':>10} {'blur of lim':>11} {'road s/img':>10} "
             f"{'road of lim':>11} {'cpu: blur':>9} {'road':>5} {'ROAD s/img/step':>15} "
             f"{'CG its':>9}"]
    for r in results:
        its = r["road_iterations"]
        lines.append(f"{r['size']:>5} {r['images']:>4} {r['batch']:>5} {r['forward_img_s']:>10.2f} "
                     f"{r['passes_per_image']:>6} {r['limit_s_per_image']:>11.4f} "
                     f"{r['blur_s_per_image']:>10.4f} {r['blur_of_limit']:>11.2f} "
                     f"{r['road_s_per_image']:>10.4f} {r['road_of_limit']:>11.2f} "
                     f"{r['blur_of_limit_cpu']:>9.2f} {r['road_of_limit_cpu']:>5.2f} "
                     f"{r['road_alone_s_per_image_step']:>15.5f} "
                     f"{its['min']:>3}-{its['max']:<3}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224], choices=sorted(SETUPS))
    parser.add_argument("--n96", type=int, default=64, help="images at 96 px")
    parser.add_argument("--n224", type=int, default=16, help="images at 224 px")
    parser.add_argument("--batch96", type=int, default=64)
    parser.add_argument("--batch224", type=int, default=16)
    parser.add_argument("--forward96", type=int, default=0,
                        help="forward passes timed at 96 px (0: as many as the curves make)")
    parser.add_argument("--forward224", type=int, default=64, help="forward passes timed at 224 px")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--rounds224", type=int, default=1,
                        help="rounds at 224 px (one curve pass costs minutes there)")
    args = parser.parse_args()

    import tensorflow as tf

    results = []
    for size in args.sizes:
        n, batch = (args.n96, args.batch96) if size == 96 else (args.n224, args.batch224)
        rounds = args.rounds if size == 96 else args.rounds224
        forward_n = (args.forward96 if size == 96 else args.forward224) or 20 * n
        results.append(bench_size(size, n, batch, rounds, forward_n))
    print(table(results), file=sys.stderr)
    print(json.dumps({"threads": tf.config.threading.get_intra_op_parallelism_threads(),
                      "cpus": os.cpu_count(), "results": results}))


if __name__ == "__main__":
    main()
