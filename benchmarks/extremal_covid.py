"""Does extremal perturbation find the lesions of one class where the other explainers do not?

On a finished phantom run (the demo: ``xaicxr run --out runs/demo``), explains the test images of
``--class`` with ``extremal`` (defaults, or ``--fill fade``, ``--logit``) through the Python API and
scores the maps like the quality stage does (pointing game with and without tolerance, energy
lift), beside the class prior (the mean training lesion mask of the class), with the paired
skill. Prints one JSON object. About 3 to 5 min for the demo's 50 covid test images on 2 cores.

    python benchmarks/extremal_covid.py runs/demo [--class covid] [--fill blur|fade] [--logit]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--class", dest="cls", default="covid")
    parser.add_argument("--fill", default="blur", choices=["blur", "fade"])
    parser.add_argument("--logit", action="store_true", help="explain the class logit, not its probability")
    args = parser.parse_args()

    import h5py

    from xaicxr import plugins
    from xaicxr.analysis.intervals import paired_difference
    from xaicxr.analysis.localisation import TOLERANCE_AT_224, Targets, class_figures, default_tolerance
    from xaicxr.io.imagecache import SPLITS
    from xaicxr.io.modelfile import load_model
    from xaicxr.plugins.targets import ClassLogit, ClassProbability
    from xaicxr.rundir import RunDir

    run = RunDir(args.run)
    classes = run.read_split()["classes"]
    k = classes.index(args.cls)
    model = load_model(run.model)
    cache = next(run.root.glob("cache/images-*.h5"))
    with h5py.File(cache) as h5:
        labels, split = h5["labels"][:], h5["split"][:]
        images, lesion, lung = h5["images"][:], h5["lesion"][:], h5["lung"][:]
    rows = np.flatnonzero((split == SPLITS.index("test")) & (labels == k))
    prior = lesion[(split == SPLITS.index("train")) & (labels == k)].astype(np.float32).mean(axis=0)
    target = (ClassLogit if args.logit else ClassProbability)(np.full(len(rows), k))
    explainer = plugins.get("explainer", "extremal")(fill=args.fill)
    start = time.perf_counter()
    maps, flags = explainer.explain_with_info(model, images[rows][..., None].astype(np.float32), target)
    seconds = time.perf_counter() - start
    truth = Targets(lesion[rows], lung[rows], default_tolerance(images.shape[-1], TOLERANCE_AT_224))
    own, base = truth.scores(maps, flags), truth.scores(np.broadcast_to(prior, maps.shape).copy())
    figures, prior_figures = class_figures(own, truth), class_figures(base, truth)
    print(json.dumps({
        "class": args.cls, "n": int(len(rows)), "fill": args.fill, "score": "logit" if args.logit else "probability",
        "seconds": round(seconds, 1), "degenerate": int(np.sum(flags)),
        "pointing_game": figures["pointing_game"], "prior_pointing_game": prior_figures["pointing_game"],
        "pointing_game_tolerance": figures["pointing_game_tolerance"],
        "prior_pointing_game_tolerance": prior_figures["pointing_game_tolerance"],
        "skill": paired_difference(own["pointing"], base["pointing"]),
        "skill_tolerance": paired_difference(own["pointing_tolerance"], base["pointing_tolerance"]),
        "energy_lift": figures.get("energy_lift"), "prior_energy_lift": prior_figures.get("energy_lift")}, indent=1))


if __name__ == "__main__":
    main()
