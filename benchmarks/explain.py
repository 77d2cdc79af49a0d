"""Explainer throughput and heatmap-store memory, measured side by side in one process.

VGG19 (full width, random weights: ImageNet weights cannot be downloaded here), batch 16:

* images/s of the plain compiled forward pass, of ``gradcam`` (one compiled function) and of
  ``gradcam-tfkv`` (tf-keras-vis), in interleaved rounds (the medians are reported, since
  other processes may share the CPU);
* all-class ``gradcam`` (every class from one forward pass) against one class
  (``--jacobian``: also through ``batch_jacobian`` instead of one backward pass per class);
* the largest difference between ``gradcam`` and ``gradcam-tfkv`` maps;
* ``--every-explainer``: images/s of every built-in explainer at VGG19's default layer next to
  the forward pass in the same interleaved rounds, the ratio to the forward pass and, for the
  methods with a natural count of forward passes per image (Score-CAM: one per channel plus the
  activations; Integrated Gradients: one per step; occlusion, RISE: one per mask), the ratio to
  that many forward passes ("own limit"); for Integrated Gradients also the ratio to that many
  *gradient* passes ("gradient limit": the compiled gradient of the class logit with respect to
  the image, one forward and one backward pass through every layer, timed in the same rounds),
  since each of its steps needs one; native Score-CAM against tf-keras-vis at the same
  ``max_n`` (speed and largest map difference). The pass counts are options, so a run stays
  short on a CPU (the ratios, not the counts, are what the targets are about);
* resident memory while ``--rss-images`` random images (made on the fly) are explained into a
  heatmap store: sampled before every batch; the growth is the median of the last tenth of
  the samples minus that of the first tenth after warm-up (the first 5 batches or 10%, while
  caches and allocator pools fill; single samples jump with the allocator), plus the process
  peak (VmHWM).

    .venv/bin/python benchmarks/explain.py --images 32 --rounds 5 --rss-images 2000
    .venv/bin/python benchmarks/explain.py --every-explainer --skip-throughput --rss-images 0

The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

CLASSES = ["normal", "bacteria", "virus", "covid"]


def rss_mib(field: str = "VmRSS") -> float:
    """Resident memory (``VmRSS``) or its peak so far (``VmHWM``) from /proc, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_model(size: int, width: float):
    import keras

    from xaicxr import plugins

    keras.utils.set_random_seed(0)
    backbone = plugins.get("backbone", "vgg19")(weights="none", width=width, input_size=size)
    return backbone.build(CLASSES)


def timed_rounds(tasks: dict[str, Callable[[], None]], rounds: int,
                 n_images: int) -> dict[str, list[float]]:
    """images/s per task and round; the task order rotates every round."""
    rates: dict[str, list[float]] = {name: [] for name in tasks}
    names = list(tasks)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            tasks[name]()
            rates[name].append(n_images / (time.perf_counter() - start))
            print(f"round {r + 1}/{rounds} {name:>16}: {rates[name][-1]:6.2f} img/s",
                  file=sys.stderr)
    return rates


def throughput(model, args) -> dict[str, float]:
    import tensorflow as tf

    from xaicxr import plugins

    rng = np.random.default_rng(0)
    images = rng.random((args.images, args.size, args.size, 1), dtype=np.float32)
    batches = [images[i:i + args.batch] for i in range(0, len(images), args.batch)]
    spec = tf.TensorSpec((None, args.size, args.size, 1), tf.float32)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec],
                          autograph=False)
    targets = [np.asarray(forward(b)).argmax(1) for b in batches]
    gradcam = plugins.get("explainer", "gradcam")()
    tfkv = plugins.get("explainer", "gradcam-tfkv")()

    class GradcamJacobian(type(gradcam)):
        allclass_method = "jacobian"

    jacobian = GradcamJacobian()

    per_batch: dict[str, Callable[[np.ndarray, np.ndarray], object]] = {
        "forward": lambda b, t: forward(b).numpy(),
        "gradcam": lambda b, t: gradcam.explain(model, b, t),
        "gradcam-tfkv": lambda b, t: tfkv.explain(model, b, t),
        "gradcam-all": lambda b, t: gradcam.explain_all(model, b),
    }
    if args.jacobian:
        per_batch["gradcam-all-jac"] = lambda b, t: jacobian.explain_all(model, b)
    for fn in per_batch.values():  # trace and warm up
        fn(batches[0], targets[0])

    def every_batch(fn: Callable[[np.ndarray, np.ndarray], object]) -> Callable[[], None]:
        def run() -> None:
            for b, t in zip(batches, targets):
                fn(b, t)
        return run

    tasks = {name: every_batch(fn) for name, fn in per_batch.items()}
    rates = timed_rounds(tasks, args.rounds, len(images))
    med = {name: statistics.median(values) for name, values in rates.items()}
    ours, degenerate = gradcam.explain_with_info(model, batches[0], targets[0])
    theirs = tfkv.explain(model, batches[0], targets[0])
    return {
        "gradcam_img_s": med["gradcam"],
        "tfkv_img_s": med["gradcam-tfkv"],
        "forward_img_s": med["forward"],
        "allclass_img_s": med["gradcam-all"],
        "gradcam_vs_tfkv": med["gradcam"] / med["gradcam-tfkv"],
        "gradcam_vs_forward": med["gradcam"] / med["forward"],
        "allclass_vs_single": med["gradcam"] / med["gradcam-all"],
        **({"allclass_jacobian_vs_single": med["gradcam"] / med["gradcam-all-jac"]}
           if args.jacobian else {}),
        "agreement_max_abs_diff": float(np.abs(ours - theirs).max()),
        "agreement_degenerate": int(degenerate.sum()),
        "rounds": {name: [round(v, 3) for v in values] for name, values in rates.items()},
    }


CAMS = ["gradcam", "gradcam++", "layercam", "hirescam", "xgradcam", "eigencam", "ablationcam"]


def explainer_cost(model, args) -> dict[str, object]:
    """Every explainer against the forward pass, in interleaved rounds; see the docstring."""
    import tensorflow as tf

    from xaicxr import plugins
    from xaicxr_builtins.explainers.tfkv import logits_model

    rng = np.random.default_rng(0)
    images = rng.random((args.images, args.size, args.size, 1), dtype=np.float32)
    spec = tf.TensorSpec((None, args.size, args.size, 1), tf.float32)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec],
                          autograph=False)
    targets = np.asarray(forward(images)).argmax(1)
    heavy = min(args.heavy_images, len(images))
    channels = int(model.get_layer("block5_conv4").output.shape[-1])
    max_n = args.scorecam_max_n or channels
    occlusion = plugins.get("explainer", "occlusion")(patch=args.occlusion_patch,
                                                      stride=args.occlusion_patch, batch=args.batch)
    made = {name: (plugins.get("explainer", name)(), len(images), None) for name in CAMS}
    made.update({
        "scorecam": (plugins.get("explainer", "scorecam")(max_n=max_n, channel_batch=args.batch),
                     heavy, max_n + 1),
        "scorecam-tfkv": (plugins.get("explainer", "scorecam-tfkv")(max_n=max_n,
                                                                    batch_size=args.batch),
                          heavy, max_n + 1),
        "integrated-gradients": (plugins.get("explainer", "integrated-gradients")(
            steps=args.ig_steps, batch=args.batch), heavy, args.ig_steps),
        "occlusion": (occlusion, heavy, occlusion.passes((args.size, args.size)) + 1),
        "rise": (plugins.get("explainer", "rise")(masks=args.rise_masks, batch=args.batch),
                 heavy, args.rise_masks),
    })

    def batched(fn: Callable[[np.ndarray, np.ndarray], object], n: int) -> Callable[[], int]:
        def run() -> int:
            for i in range(0, n, args.batch):
                fn(images[i:min(i + args.batch, n)], targets[i:min(i + args.batch, n)])
            return n
        return run

    graph = logits_model(model)

    @tf.function(input_signature=[spec, tf.TensorSpec((None,), tf.int64)], autograph=False)
    def input_gradient(x, t):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = graph([x], training=False)
            score = tf.gather(logits, t, axis=1, batch_dims=1)
        return tape.gradient(score, x)

    tasks = {"forward": batched(lambda b, t: forward(b).numpy(), len(images)),
             "input-gradient": batched(lambda b, t: input_gradient(b, t).numpy(), len(images))}
    for name, (explainer, n, _) in made.items():
        tasks[name] = batched(lambda b, t, e=explainer: e.explain(model, b, t), n)
    for task in tasks.values():  # trace and warm up
        task()
    rates: dict[str, list[float]] = {name: [] for name in tasks}
    names = list(tasks)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            done = tasks[name]()
            rates[name].append(done / (time.perf_counter() - start))
            print(f"round {r + 1}/{args.rounds} {name:>20}: {rates[name][-1]:7.3f} img/s",
                  file=sys.stderr)
    med = {name: statistics.median(values) for name, values in rates.items()}
    rows = {}
    for name, (_, n, passes) in made.items():
        rows[name] = {"img_s": round(med[name], 4), "images": n,
                      "vs_forward": round(med[name] / med["forward"], 4)}
        if passes:
            rows[name].update(passes_per_image=passes,
                              vs_own_limit=round(med[name] * passes / med["forward"], 4))
    native, reference = made["scorecam"][0], made["scorecam-tfkv"][0]
    a = native.explain(model, images[:heavy], targets[:heavy])
    b = reference.explain(model, images[:heavy], targets[:heavy])
    return {"forward_img_s": med["forward"], "explainers": rows,
            "input_gradient_img_s": med["input-gradient"],
            "integrated_gradients_vs_gradient_limit": round(
                med["integrated-gradients"] * args.ig_steps / med["input-gradient"], 4),
            "scorecam_max_n": max_n, "layer_channels": channels,
            "scorecam_vs_tfkv": med["scorecam"] / med["scorecam-tfkv"],
            "scorecam_max_abs_diff": float(np.abs(a - b).max()),
            "rounds": {name: [round(v, 4) for v in values] for name, values in rates.items()}}


def store_memory(model, args) -> dict[str, float]:
    from xaicxr import plugins
    from xaicxr.io.heatmap_store import Columns
    from xaicxr.stages.explain import ExplainJob, explain_to_store

    n = args.rss_images
    samples: list[tuple[int, float]] = []

    def images(start: int, stop: int) -> np.ndarray:
        samples.append((start, rss_mib()))
        rng = np.random.default_rng(start)
        return rng.random((stop - start, args.size, args.size, 1), dtype=np.float32)

    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=n).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "heatmaps" / "gradcam.h5"
        start = time.perf_counter()
        job = ExplainJob(name="gradcam", explainer=plugins.get("explainer", "gradcam")(), layer=None,
                         targets="true", split="test", batch_size=args.batch, params={})
        columns = Columns.of([f"img{i:05d}" for i in range(n)], probs.argmax(1), probs.argmax(1), probs,
                             probs.argmax(1), len(CLASSES))
        explain_to_store(path, job, model, "0" * 64, CLASSES, columns, images)
        elapsed = time.perf_counter() - start
        samples.append((n, rss_mib()))
        size_mib = path.stat().st_size / 2**20
    per_batch = [v for _, v in samples[:-1]]
    warm = per_batch[max(5, len(per_batch) // 10):] or per_batch  # skip filling caches, pools
    tenth = max(1, len(warm) // 10)
    early, late = float(np.median(warm[:tenth])), float(np.median(warm[-tenth:]))
    picks = np.linspace(0, len(samples) - 1, 11).round().astype(int)
    return {
        "rss_images": n,
        "store_img_s": n / elapsed,
        "store_file_mib": size_mib,
        "rss_samples_mib": {int(samples[i][0]): round(samples[i][1], 1) for i in picks},
        "rss_first_tenth_mib": early,
        "rss_last_tenth_mib": late,
        "rss_growth_mib": late - early,
        "rss_max_sampled_mib": float(max(v for _, v in samples)),
        "peak_rss_mib": rss_mib("VmHWM"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32, help="images per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0, help="VGG19 channel width factor")
    parser.add_argument("--rss-images", type=int, default=2000,
                        help="images explained into a store for the memory figures (0: skip)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--jacobian", action="store_true",
                        help="also time all-class mode through batch_jacobian")
    parser.add_argument("--every-explainer", action="store_true",
                        help="time every built-in explainer against the forward pass")
    parser.add_argument("--heavy-images", type=int, default=2,
                        help="images per round for Score-CAM, IG, occlusion, RISE")
    parser.add_argument("--scorecam-max-n", type=int, default=32,
                        help="Score-CAM channels (0: every channel of the layer)")
    parser.add_argument("--ig-steps", type=int, default=8)
    parser.add_argument("--occlusion-patch", type=int, default=56, help="patch = stride, px")
    parser.add_argument("--rise-masks", type=int, default=32)
    args = parser.parse_args()

    import tensorflow as tf

    model = build_model(args.size, args.width)
    result: dict[str, object] = {"size": args.size, "batch": args.batch, "width": args.width,
                                 "images_per_round": args.images,
                                 "threads": tf.config.threading.get_intra_op_parallelism_threads(),
                                 "cpus": os.cpu_count()}
    if not args.skip_throughput:
        result.update(throughput(model, args))
    if args.every_explainer:
        result["every_explainer"] = {
            "heavy_images": args.heavy_images, "ig_steps": args.ig_steps,
            "occlusion_patch": args.occlusion_patch, "rise_masks": args.rise_masks,
            **explainer_cost(model, args)}
    if args.rss_images:
        result.update(store_memory(model, args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
