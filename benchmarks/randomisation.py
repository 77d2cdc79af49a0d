"""How long the cascading randomisation test takes, against the naive way, in one process.

Width-0.125 VGG19-BN (random weights: the time does not depend on what was learned), 4 classes,
``--images`` random gray images, Grad-CAM and LayerCAM at their default layer, in ``--rounds``
interleaved rounds (other processes may share the CPU; the medians are reported):

* ``test``: :func:`xaicxr.analysis.randomisation.randomisation_test` over all 18 steps, with the
  trained maps, the random-logit maps, the reference and every interval (20 explain passes:
  one working copy, weights assigned in place, one trace);
* ``naive``: the 18 steps explained with a fresh clone per step (``keras.models.clone_model``
  under the same seed, trained weights copied back below the step), so every step clones the
  model and traces a new function: the explaining alone, no figures.

    .venv/bin/python benchmarks/randomisation.py --size 96 --images 48 --rounds 2

The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

CLASSES = ["normal", "bacteria", "virus", "covid"]


def build_model(size: int, width: float):
    import keras

    from xaicxr import plugins

    keras.utils.set_random_seed(0)
    backbone = plugins.get("backbone", "vgg19")(weights="none", width=width, batchnorm=True,
                                                input_size=size, dense=[16], dropout=0.0)
    return backbone.build(CLASSES)


def naive_cascade(model, explainer, images, targets, seed: int) -> int:
    """Explain ``images`` after each step, re-cloning the model for every step; the steps done."""
    import keras

    from xaicxr.analysis.randomisation import explain_batches, leaf_layers, cascade_steps

    steps = cascade_steps(model)
    trained = leaf_layers(model)
    for k in range(len(steps)):
        keras.utils.set_random_seed(seed)
        clone = keras.models.clone_model(model)
        randomised = {path for step in steps[:k + 1] for path in step.layers}
        for path, layer in leaf_layers(clone).items():
            if path not in randomised:
                layer.set_weights(trained[path].get_weights())
        explain_batches(explainer, clone, images, targets, None)
        del clone
    return len(steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--explainers", nargs="+", default=["gradcam", "layercam"])
    args = ap.parse_args()

    from xaicxr import plugins
    from xaicxr.analysis.randomisation import randomisation_seed, randomisation_test

    model = build_model(args.size, args.width)
    rng = np.random.default_rng(0)
    images = rng.random((args.images, args.size, args.size, 1), dtype=np.float32)
    labels = np.arange(args.images) % len(CLASSES)
    figures: dict[str, dict[str, list[float]]] = {}
    for name in args.explainers:
        times = figures.setdefault(name, {"test": [], "naive": []})
        for _ in range(args.rounds):
            explainer = plugins.get("explainer", name)()
            start = time.perf_counter()
            result = randomisation_test(model, explainer, images, labels, labels, CLASSES,
                                        layer=None, train_seed=0)
            times["test"].append(time.perf_counter() - start)
            explainer = plugins.get("explainer", name)()
            start = time.perf_counter()
            naive_cascade(model, explainer, images, labels, randomisation_seed(0, 0))
            times["naive"].append(time.perf_counter() - start)
        test, naive = statistics.median(times["test"]), statistics.median(times["naive"])
        print(f"{name}: randomisation_test {test:.1f} s ({len(result['steps'])} steps, "
              f"{args.images} images, {args.size} px), naive clone-per-step cascade {naive:.1f} s "
              f"({naive / test:.1f}x); rounds {times}")
    print(json.dumps({"size": args.size, "width": args.width, "images": args.images,
                      "rounds": args.rounds, "seconds": figures,
                      "median": {k: {m: round(statistics.median(v), 2) for m, v in t.items()}
                                 for k, t in figures.items()}}))


if __name__ == "__main__":
    main()
