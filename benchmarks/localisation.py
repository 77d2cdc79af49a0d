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

On a study with ``seeds = N`` (variants ``<name>__seed=<s>``, the same validation images for
every trained model), a setting's pointing game and skill are pooled over its N models and the
images (crossed bootstrap: images and models resampled independently; with 3 models this
describes these models), beside the t interval over the models (where another trained model
may land). A setting is chosen when its skill exceeds the minimum effect for every model
(intersection-union: its p is the largest per-model p), Holm-adjusted over the settings, and it
passes the cascade for every model.

    .venv/bin/xaicxr study examples/phantom-localisation-study.toml --out runs/loc-val
    .venv/bin/python benchmarks/localisation.py runs/loc-val [--markdown tables.md]
    .venv/bin/python benchmarks/localisation.py runs/backbones-val --variant '^vgg19$'
    .venv/bin/xaicxr study examples/phantom-localisation-seeds-study.toml --out runs/loc-val-seeds
    .venv/bin/python benchmarks/localisation.py runs/loc-val-seeds

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

from xaicxr.analysis.intervals import (crossed_bootstrap_mean, describe, estimate, paired_exceedance_p,
                                      t_interval, wholly_above)
from xaicxr.analysis.stats import holm
from xaicxr.study import SEED_SUFFIX

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
        seed = SEED_SUFFIX.search(row["variant"])
        found.append({"variant": row["variant"], "explainer": row["explainer"], "layer": row["layer"],
                      "split": spec["split"], "metrics": metrics, "run_dir": Path(row["run_dir"]),
                      "seed": int(seed.group(1)) if seed else None,
                      "model_free_variant": SEED_SUFFIX.sub("", row["variant"])})
    return found


def by_setting(found: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The study's settings in order, each as the list of its seeds' entries (one without seeds)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for f in found:
        groups.setdefault((f["model_free_variant"], f["explainer"]), []).append(f)
    return list(groups.values())


def seeded_scores(members: list[dict[str, Any]], cls: str, score: str = "pointing"
                  ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(seeds, images) per-image ``score`` of a setting's maps, one row per trained model, and
    the class prior's on the same images (None where no store kept it), from each seed's
    ``quality.h5``; None when a seed lacks the setting's own. The seeds must have scored the same
    images (the split does not depend on ``train.seed``)."""
    own, prior, ids = [], [], None
    for f in members:
        path = f["run_dir"] / "quality.h5"
        if not path.exists():
            return None
        with h5py.File(path, "r") as h5:
            group = h5.get(f"scores/{f['explainer']}/{cls}")
            if group is None or score not in group:
                return None
            these = group["ids"][...]
            own.append(group[score][...])
            prior.append(prior_scores(h5, cls, these, score))
        if ids is not None and not np.array_equal(ids, these):
            raise SystemExit(f"{f['variant']}: its {cls} images are not the other seeds' (a study over seeds "
                             "keeps the split: do not vary split.seed with them)")
        ids = these
    both = all(p is not None for p in prior)
    return np.asarray(own, np.float64), np.asarray(prior, np.float64) if both else None


SEEDED_BOOTSTRAP = 20_000
"""Resamples for the seeded figures: Holm over 27 settings asks for p below 0.05 / 27."""


def pooled(values: np.ndarray, *, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Mean of a (seeds, images) array over both, with the crossed bootstrap's interval
    (images and seeds resampled independently: :func:`crossed_bootstrap_mean`). With 3 seeds its
    seed part can reach no further than the best and the worst model: it describes these
    models, it does not generalise to others (:func:`between_seeds` does)."""
    return crossed_bootstrap_mean(np.asarray(values, np.float64).T, seed=seed, n_boot=SEEDED_BOOTSTRAP, alpha=alpha)


def between_seeds(values: np.ndarray) -> dict[str, Any]:
    """The mean of the per-model means of a (seeds, images) array with Student's t interval over
    the models (as ``xaicxr study`` reports seeds): how far another trained model may land."""
    return t_interval(np.nanmean(values, axis=1))


def seeded_holm_selection(rows: list[dict[str, Any]], pairs: list[tuple[np.ndarray, np.ndarray | None] | None], *,
                          min_effect: float, seed: int = 0) -> None:
    """:func:`holm_selection` over settings trained N times, by an intersection-union test: the
    skill over the class prior must exceed ``min_effect`` for every trained model, so a
    setting's p is the largest of its per-seed paired p's (Berger 1982), Holm-adjusted over the
    settings. ``skill_simultaneous`` is the pooled skill with its crossed interval at 0.05 over
    the number of settings (descriptive), ``skill_between_seeds`` the t interval over models."""
    have = [i for i, pair in enumerate(pairs) if pair is not None and pair[1] is not None]
    alpha = 0.05 / max(len(have), 1)
    p = []
    for i in have:
        own, prior = pairs[i]
        p.append(max(paired_exceedance_p(a, b, margin=min_effect, seed=seed, n_boot=SEEDED_BOOTSTRAP)
                     for a, b in zip(own, prior)))
    for i, raw, adj in zip(have, p, holm(p) if p else []):
        diff = pairs[i][0] - pairs[i][1]
        rows[i].update(skill_p=raw, skill_p_holm=float(adj), skill_simultaneous=pooled(diff, alpha=alpha, seed=seed),
                       skill_between_seeds=between_seeds(diff))
    for i in set(range(len(rows))) - set(have):
        rows[i].update(skill_p=None, skill_p_holm=None, skill_simultaneous=None, skill_between_seeds=None)


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
        prior = prior_scores(h5, cls, own["ids"][...], "pointing")
        return None if prior is None else (own["pointing"][...], prior)


def prior_scores(h5: h5py.File, cls: str, ids: np.ndarray, score: str) -> np.ndarray | None:
    """The class prior's per-image ``score`` on the images ``ids`` from an open ``quality.h5``
    (kept under the first store that explained those images), or None."""
    for first in h5.get("baselines", {}):
        prior = h5.get(f"baselines/{first}/{cls}/class_prior/{score}")
        same = h5.get(f"scores/{first}/{cls}/ids")
        if prior is not None and same is not None and np.array_equal(same[...], ids):
            return prior[...]
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


def verb(splits: list[str]) -> str:
    """What meeting the rule means: a study of the test split confirms (or not) what validation
    chose; it chooses nothing."""
    return "selected" if "test" not in splits else "meets the rule (a confirmation, not a choice)"


def name_settings(found: list[dict[str, Any]]) -> None:
    """``explainer@layer`` (or the explainer of a layer-free method); prefixed by the variant
    where one label names several settings (the same explainer in several models)."""
    labels = [_label(f) for f in found]
    for f, label in zip(found, labels):
        f["setting"] = f"{f['model_free_variant']}/{label}" if labels.count(label) > 1 else label


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
        out.append("| map | pointing game | pointing game @ tolerance | skill over the best uninformed map | "
                   "skill over the class prior, simultaneous 95 % (Bonferroni) | Holm p (skill over the class prior > "
                   "min effect) | energy lift | ROAD deletion AUC |")
        out.append("|---|---|---|---|---|---|---|---|")
        for name in ("class_prior", "lungs", "lungs_blurred", "uniform", "random"):
            b = data["baselines"].get(name, {})
            faith = (b.get("faithfulness") or {}).get("road", {})
            out.append(f"| *{name}* | {_cell(b.get('pointing_game'))} | {_cell(b.get('pointing_game_tolerance'))} | "
                       f"| | | {_cell(b.get('energy_lift'))} | {_cell(faith.get('deletion_auc'))} |")
        for r in data["settings"]:
            mark = "**" if r.get("beats_prior_holm") and r["cascade_passes"] else ""
            out.append(f"| {mark}{r['setting']}{mark} | {_cell(r['pointing_game'])} | "
                       f"{_cell(r['pointing_game_tolerance'])} | {_cell(r['skill'])}"
                       + (f" ({r['skill_baseline']})" if r.get("skill_baseline") else "") + " | "
                       f"{_cell(r.get('skill_simultaneous'))} | {_p(r.get('skill_p_holm'))} | {_cell(r['energy_lift'])} | "
                       f"{_cell(r['deletion_auc'])} |")
        out.append(f"\n{report['verb']}: {data['selected'] or 'none'}\n")
    first = next(iter(report["classes"].values()))["settings"]
    out.append("| setting | Spearman after randomising every layer above | reference (two images) | cascade "
               "| random-logit Spearman |")
    out.append("|---|---|---|---|---|")
    for r in first:
        out.append(f"| {r['setting']} | {_cell(r['cascade_spearman'])} | {_cell(r['reference_spearman'])} | "
                   f"{'passes' if r['cascade_passes'] else 'fails'} | {_cell(r['random_logit_spearman'])} |")
    return "\n".join(out) + "\n"


def seeded_report(groups: list[list[dict[str, Any]]], min_effect: float) -> dict[str, Any]:
    """Per lesion class, every setting pooled over its seeds (:func:`seeded_scores`), chosen by
    :func:`seeded_holm_selection` and the cascade passed in every seed; printed as it goes."""
    splits = sorted({f["split"] for g in groups for f in g})
    report: dict[str, Any] = {"seeds": sorted({f["seed"] for g in groups for f in g}), "split": splits,
                              "verb": verb(splits), "classes": {}}
    first = groups[0][0]["metrics"]
    for cls in LESION_CLASSES:
        baselines = first.get("baselines", {}).get(cls, {})
        drops = [f["metrics"].get("reliance", {}).get(cls, {}).get("probability_drop") for f in groups[0]]
        pairs = [seeded_scores(g, cls) for g in groups]
        rows = []
        for g, pair in zip(groups, pairs):
            tolerance = seeded_scores(g, cls, "pointing_tolerance")
            verdicts = [f["metrics"].get("sanity", {}).get(f["explainer"], {}).get("passes") for f in g]
            rows.append({
                "setting": g[0]["setting"], "seeds": len(g),
                "pointing_game": pooled(pair[0]) if pair else None,
                "pointing_game_per_seed": [float(np.nanmean(r)) for r in pair[0]] if pair else None,
                "pointing_game_tolerance": pooled(tolerance[0]) if tolerance else None,
                "skill": pooled(pair[0] - pair[1]) if pair and pair[1] is not None else None,
                "cascade_passes_in": sum(v is True for v in verdicts),
                "cascade_passes": all(v is True for v in verdicts)})
        seeded_holm_selection(rows, pairs, min_effect=min_effect)
        prior = next((pooled(p[1]) for p in pairs if p and p[1] is not None), None)
        for row in rows:
            row["beats_prior_holm"] = row["skill_p_holm"] is not None and row["skill_p_holm"] < 0.05
        eligible = [r for r in rows if r["beats_prior_holm"] and r["cascade_passes"]]
        best = max(eligible, key=lambda r: r["pointing_game"]["value"]) if eligible else None
        n_images = next((p[0].shape[1] for p in pairs if p), 0)
        print(f"\n== {cls}: {n_images} images x {len(report['seeds'])} seeds; class prior {est(prior)}; "
              f"lesion removed, p drop by seed: {', '.join(est(d) for d in drops)}")
        for r in rows:
            print(f"   {r['setting']:24s} PG {est(r['pointing_game']):20s} per seed "
                  f"{' '.join(f'{v:.2f}' for v in r['pointing_game_per_seed'] or [])}  skill {est(r['skill'])} "
                  f"simultaneous {est(r['skill_simultaneous'])} between seeds {est(r['skill_between_seeds'])} "
                  f"Holm p {_p(r['skill_p_holm'])} "
                  f"cascade {r['cascade_passes_in']}/{r['seeds']}")
        print(f"   {report['verb']}: {best['setting'] if best else 'none'}")
        report["classes"][cls] = {"prior": prior, "baselines": baselines, "probability_drop_by_seed": drops,
                                  "n_images": n_images, "settings": rows, "selected": best["setting"] if best else None}
    report["selected"] = {cls: data["selected"] for cls, data in report["classes"].items()}
    return report


def seeded_markdown(report: dict[str, Any]) -> str:
    out = []
    n_seeds = len(report["seeds"])
    for cls, data in report["classes"].items():
        drops = ", ".join(est(d) for d in data["probability_drop_by_seed"])
        out.append(f"**{cls}** ({data['n_images']} images x {n_seeds} trained models; lesion removed: "
                   f"class-probability drop {drops} by seed)\n")
        out.append("| map | pointing game, pooled | by seed | pointing game @ tolerance | skill over the class prior | "
                   "simultaneous 95 % (Bonferroni) | between seeds (t) | Holm p (skill over the class prior > min "
                   "effect for every seed) | cascade passes |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        out.append(f"| *class_prior* | {_cell(data['prior'])} | | | | | | | |")
        for r in data["settings"]:
            mark = "**" if r["beats_prior_holm"] and r["cascade_passes"] else ""
            per_seed = " / ".join(f"{v:.2f}" for v in r["pointing_game_per_seed"] or [])
            out.append(f"| {mark}{r['setting']}{mark} | {_cell(r['pointing_game'])} | {per_seed} | "
                       f"{_cell(r['pointing_game_tolerance'])} | {_cell(r['skill'])} | {_cell(r['skill_simultaneous'])} | "
                       f"{_cell(r['skill_between_seeds'])} | {_p(r['skill_p_holm'])} | {r['cascade_passes_in']} of {r['seeds']} |")
        out.append(f"\n{report['verb']}: {data['selected'] or 'none'}\n")
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
    groups = by_setting(found)
    name_settings([g[0] for g in groups])
    for g in groups:
        for f in g:
            f["setting"] = g[0]["setting"]
    if any(len(g) > 1 for g in groups):
        seeded = seeded_report(groups, args.min_effect)
        seeded["study"] = str(args.study_out)
        if args.markdown:
            args.markdown.write_text(seeded_markdown(seeded))
        print(json.dumps(seeded, default=str))
        return
    chosen: dict[str, Any] = {}
    report: dict[str, Any] = {"study": str(args.study_out), "split": sorted({f["split"] for f in found}),
                              "classes": {}}
    report["verb"] = verb(report["split"])
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
                   "skill": q.get("skill", {}).get("pointing_game"),
                   "skill_baseline": (q.get("skill", {}).get("pointing_game") or {}).get("baseline"),
                   "energy_lift": q.get("energy_lift"),
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
                  f"skill {est(row['skill']):22s} (over {row['skill_baseline']}) lift {est(row['energy_lift']):20s} "
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
        print(f"   {report['verb']}: {chosen[cls] or 'none (no setting beats the class prior by the minimum effect after Holm, and passes the cascade)'}")
        report["classes"][cls] = {"prior": prior, "baselines": baselines, "reliance": reliance, "settings": rows,
                                  "selected": chosen[cls]}
    report["selected"] = chosen
    if args.markdown:
        args.markdown.write_text(markdown(report))
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
