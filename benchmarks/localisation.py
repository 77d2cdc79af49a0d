"""Which explainer settings localise the lesion better than a map that knows nothing? (a study)

Reads the output folder of a localisation study (``xaicxr study examples/phantom-localisation-study.toml
--out runs/loc-val``: every built-in explainer at three layers, one shared model) and prints, per
lesion class, every setting's pointing game (tolerance 0 and the default tolerance) and energy
lift with their 95 % intervals next to the best uninformed baseline and the class prior, the
deletion/insertion AUCs (ROAD fill) with their skill over a random order, the cascading
randomisation verdict and the random-logit similarity, and the model's reliance on the lesion.

A setting is *selected* for a class when its pointing game beats the class prior's by more than
``--min-effect`` (paired per image, from ``quality.h5``) after Holm's adjustment over every
setting compared for that class (family-wise error 5 %, Holm 1979), and it passes the cascade
(its maps after randomising every layer above the explained one are less like the trained maps
than two different images' maps are). The skill is shown with its simultaneous (Bonferroni)
interval beside its Holm-adjusted p. Run it on a study of the validation split to choose;
report the test split once, for the chosen settings only.

    .venv/bin/xaicxr study examples/phantom-localisation-study.toml --out runs/loc-val
    .venv/bin/python benchmarks/localisation.py runs/loc-val [--markdown tables.md]
    .venv/bin/python benchmarks/localisation.py runs/backbones-val --variant '^vgg19$'

``--markdown`` also writes the per-class tables and the cascade table as docs/results.md shows them.
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from xaicxr.analysis.intervals import describe, estimate, paired_exceedance_p, wholly_above
from xaicxr.analysis.stats import holm

LESION_CLASSES = ("bacteria", "virus", "covid")


est = describe


def settings(out: Path) -> list[dict[str, Any]]:
    """One entry per (variant, explainer): its layer, split and metrics."""
    summary = json.loads((out / "summary.json").read_text())
    found, seen = [], set()
    for row in summary["variants"]:
        key = (row["variant"], row["explainer"])
        if key in seen:
            continue
        seen.add(key)
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        config = tomllib.loads((Path(row["run_dir"]) / "config.toml").read_text())
        spec = next(e for e in config["explain"] if e["name"] == row["explainer"])
        found.append({"variant": row["variant"], "explainer": row["explainer"], "layer": row["layer"],
                      "split": spec["split"], "metrics": metrics, "run_dir": Path(row["run_dir"])})
    return found


def paired_pointing(run_dir: Path, store: str, cls: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-image pointing hits of a store's maps and of the class prior on the same images, from
    the run's ``quality.h5`` (the prior's are kept under the first store that explained them)."""
    path = run_dir / "quality.h5"
    if not path.exists():
        return None
    with h5py.File(path, "r") as h5:
        own = h5.get(f"scores/{store}/{cls}")
        if own is None or "pointing" not in own:
            return None
        ids = own["ids"][...]
        for first in h5.get("baselines", {}):
            prior = h5.get(f"baselines/{first}/{cls}/class_prior/pointing")
            same = h5.get(f"scores/{first}/{cls}/ids")
            if prior is not None and same is not None and np.array_equal(same[...], ids):
                return own["pointing"][...], prior[...]
    return None


def holm_selection(rows: list[dict[str, Any]], pairs: list[tuple[np.ndarray, np.ndarray] | None], *,
                   min_effect: float, seed: int = 0) -> None:
    """Per row: ``skill_p`` (one-sided bootstrap p of skill over the prior > ``min_effect``),
    ``skill_p_holm`` over the rows that have per-image scores, and ``skill_simultaneous``
    (Bonferroni interval at 95 % for all of them together)."""
    have = [i for i, pair in enumerate(pairs) if pair is not None]
    p = [paired_exceedance_p(*pairs[i], margin=min_effect, seed=seed) for i in have]
    adjusted = holm(p) if p else []
    alpha = 0.05 / max(len(have), 1)
    for i, raw, adj in zip(have, p, adjusted):
        a, b = pairs[i]
        keep = np.isfinite(a) & np.isfinite(b)
        diff = a[keep] - b[keep]
        rng = np.random.default_rng(seed)
        means = diff[rng.integers(0, len(diff), size=(4000, len(diff)))].mean(axis=1) if len(diff) > 1 else diff
        rows[i].update(skill_p=raw, skill_p_holm=float(adj), skill_simultaneous=estimate(
            diff.mean() if len(diff) else None, np.percentile(means, 100 * alpha / 2) if len(diff) > 1 else None,
            np.percentile(means, 100 * (1 - alpha / 2)) if len(diff) > 1 else None, len(diff)))
    for i in set(range(len(rows))) - set(have):
        rows[i].update(skill_p=None, skill_p_holm=None, skill_simultaneous=None)


def name_settings(found: list[dict[str, Any]]) -> None:
    """``explainer@layer`` (or the explainer of a layer-free method); prefixed by the variant
    where one label names several settings (the same explainer in several models)."""
    labels = [_label(f) for f in found]
    for f, label in zip(found, labels):
        f["setting"] = f"{f['variant']}/{label}" if labels.count(label) > 1 else label


def _label(found: dict[str, Any]) -> str:
    return f"{found['explainer']}@{found['layer']}" if found["layer"] else found["explainer"]


def _cell(estimate: Any) -> str:
    return est(estimate).replace(" ", "&nbsp;", 1) if estimate else "-"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(report: dict[str, Any]) -> str:
    """Per lesion class: the uninformed maps, then every setting; then one cascade table."""
    out = []
    for cls, data in report["classes"].items():
        rel = data["reliance"]
        out.append(f"**{cls}** (n = {data['settings'][0]['pointing_game']['n']}"
                   + (f"; lesion removed: class-probability drop {est(rel['probability_drop'])}" if rel else "") + ")\n")
        out.append("| map | pointing game | pointing game @ tolerance | skill over the class prior | "
                   "simultaneous 95 % (Bonferroni) | Holm p (skill > min effect) | energy lift | ROAD deletion AUC |")
        out.append("|---|---|---|---|---|---|---|---|")
        for name in ("class_prior", "lungs", "lungs_blurred", "uniform", "random"):
            b = data["baselines"].get(name, {})
            faith = (b.get("faithfulness") or {}).get("road", {})
            out.append(f"| *{name}* | {_cell(b.get('pointing_game'))} | {_cell(b.get('pointing_game_tolerance'))} | "
                       f"| | | {_cell(b.get('energy_lift'))} | {_cell(faith.get('deletion_auc'))} |")
        for r in data["settings"]:
            mark = "**" if r.get("beats_prior_holm") and r["cascade_passes"] else ""
            out.append(f"| {mark}{r['setting']}{mark} | {_cell(r['pointing_game'])} | "
                       f"{_cell(r['pointing_game_tolerance'])} | {_cell(r['skill'])} | "
                       f"{_cell(r.get('skill_simultaneous'))} | {_p(r.get('skill_p_holm'))} | {_cell(r['energy_lift'])} | "
                       f"{_cell(r['deletion_auc'])} |")
        out.append(f"\nselected: {data['selected'] or 'none'}\n")
    first = next(iter(report["classes"].values()))["settings"]
    out.append("| setting | Spearman after randomising every layer above | reference (two images) | cascade "
               "| random-logit Spearman |")
    out.append("|---|---|---|---|---|")
    for r in first:
        out.append(f"| {r['setting']} | {_cell(r['cascade_spearman'])} | {_cell(r['reference_spearman'])} | "
                   f"{'passes' if r['cascade_passes'] else 'fails'} | {_cell(r['random_logit_spearman'])} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study_out", type=Path)
    ap.add_argument("--fill", default="road")
    ap.add_argument("--min-effect", type=float, default=0.05,
                    help="the pointing-game skill over the class prior a setting must exceed (default 0.05)")
    ap.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    ap.add_argument("--variant", default="", help="only the variants whose name matches this "
                    "regular expression: one model at a time in a study over backbones, since "
                    "the class prior's deletion AUC and the reliance figures belong to a model")
    args = ap.parse_args()
    found = [f for f in settings(args.study_out) if re.search(args.variant, f["variant"])]
    if not found:
        raise SystemExit(f"no variant of {args.study_out} matches {args.variant!r}")
    name_settings(found)
    chosen: dict[str, Any] = {}
    report: dict[str, Any] = {"study": str(args.study_out), "split": sorted({f["split"] for f in found}),
                              "classes": {}}
    first = found[0]["metrics"]
    for cls in LESION_CLASSES:
        baselines = first.get("baselines", {}).get(cls, {})
        prior = baselines.get("class_prior", {})
        reliance = first.get("reliance", {}).get(cls)
        print(f"\n== {cls}: n = {first['per_image'][found[0]['explainer']][cls]['n']}"
              + (f"; model relies on the lesion: {reliance['relies_on_lesion']} (p drop "
                 f"{est(reliance['probability_drop'])})" if reliance else ""))
        print(f"   class prior: pointing {est(prior.get('pointing_game'))}, tolerance "
              f"{est(prior.get('pointing_game_tolerance'))}, lift {est(prior.get('energy_lift'))}")
        for name in ("uniform", "lungs", "lungs_blurred", "random"):
            b = baselines.get(name, {})
            print(f"   {name:13s}: pointing {est(b.get('pointing_game'))}, lift {est(b.get('energy_lift'))}")
        rows = []
        for f in found:
            m, e = f["metrics"], f["explainer"]
            q = m["per_image"][e][cls]
            faith = m.get("faithfulness", {}).get(e, {}).get(cls, {}).get(args.fill, {})
            rand = m.get("randomisation", {}).get(e, {})
            sanity = m.get("sanity", {}).get(e, {})
            row = {"setting": f["setting"], "pointing_game": q.get("pointing_game"),
                   "pointing_game_tolerance": q.get("pointing_game_tolerance"),
                   "skill": q.get("skill", {}).get("pointing_game"), "energy_lift": q.get("energy_lift"),
                   "energy_lift_lungs": q.get("energy_lift_lungs"),
                   "deletion_auc": faith.get("deletion_auc"), "deletion_skill": faith.get("deletion_auc_skill"),
                   "insertion_auc": faith.get("insertion_auc"), "insertion_skill": faith.get("insertion_auc_skill"),
                   "cascade_passes": sanity.get("passes"),
                   "cascade_spearman": sanity.get("spearman_above_layer_randomised"),
                   "reference_spearman": sanity.get("reference_spearman"),
                   "random_logit_spearman": (rand.get("random_logit") or {}).get("spearman"),
                   "beats_prior": wholly_above(q.get("pointing_game"), prior.get("pointing_game")),
                   "beats_prior_tolerance": wholly_above(q.get("pointing_game_tolerance"),
                                                         prior.get("pointing_game_tolerance"))}
            rows.append(row)
            print(f"   {row['setting']:24s} PG {est(row['pointing_game']):20s} PG@tol {est(row['pointing_game_tolerance']):20s} "
                  f"skill {est(row['skill']):22s} lift {est(row['energy_lift']):20s} "
                  f"del {est(row['deletion_auc'])} ins {est(row['insertion_auc'])} "
                  f"cascade {'pass' if row['cascade_passes'] else 'FAIL'} ({est(row['cascade_spearman'])} vs ref "
                  f"{est(row['reference_spearman'])}) random-logit {est(row['random_logit_spearman'])}"
                  f"{'  <- beats the prior' if row['beats_prior'] else ''}")
        holm_selection(rows, [paired_pointing(f["run_dir"], f["explainer"], cls) for f in found],
                       min_effect=args.min_effect)
        for row in rows:
            row["beats_prior_holm"] = row["skill_p_holm"] is not None and row["skill_p_holm"] < 0.05
            if row["skill_p_holm"] is not None:
                print(f"   {row['setting']:24s} skill (simultaneous 95 %) {est(row['skill_simultaneous'])}, "
                      f"p(skill > {args.min_effect}) {row['skill_p']:.4f}, Holm {row['skill_p_holm']:.4f}")
        eligible = [r for r in rows if r["beats_prior_holm"] and r["cascade_passes"]]
        best = max(eligible, key=lambda r: r["pointing_game"]["value"]) if eligible else None
        chosen[cls] = best["setting"] if best else None
        print(f"   selected: {chosen[cls] or 'none (no setting beats the class prior by the minimum effect after Holm, and passes the cascade)'}")
        report["classes"][cls] = {"prior": prior, "baselines": baselines, "reliance": reliance, "settings": rows,
                                  "selected": chosen[cls]}
    report["selected"] = chosen
    if args.markdown:
        args.markdown.write_text(markdown(report))
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
