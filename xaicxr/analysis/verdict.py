"""What a run's figures say, class by class: the verdict the report opens with.

Read from ``metrics.json`` alone, in the order the figures have to be read. First, does the
model rely on the lesion at all (counterfactual twins where the data can make them, else the
expert's marked regions filled against random lung regions)? Only where it does is a heatmap
that points elsewhere the explainer failing; where it does not, localisation does not test the
explainer. Then, which explainer settings point at the lesion better than every map that knows
nothing about the image (the lower 95 % bound of their skill above 0); whether those settings
pass the cascading randomisation test; and whether features that are not disease already
predict the class (the shortcut probe).
"""

from __future__ import annotations

from typing import Any

from ..io.text import describe

RELIES = "relies"
DOES_NOT_RELY = "does not rely"
NOT_MEASURABLE = "not measurable here"

SKILL_FIGURES = ("pointing_game", "energy_lift")
"""The localisation figures a verdict reads, in order of preference: the first one a class has
in any store is used for every store, so the settings are compared on one scale."""

FIGURE_NAMES = {"pointing_game": "pointing game", "energy_lift": "energy lift"}


def verdicts(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per class of ``metrics["classes"]``: ``reliance`` (:data:`RELIES`, :data:`DOES_NOT_RELY`
    or :data:`NOT_MEASURABLE`) with ``reliance_source`` (the metrics key it was read from, or
    None), ``reliance_why`` and ``reliance_estimate`` (the probability drop it rests on: the
    twins', or the annotated region's beyond random regions for the fill that says least);
    ``explainers`` (``best``, ``beating``, ``figure``, ``skill``, ``why``, ``tests_explainer``);
    ``sanity`` per store; ``shortcut`` (``flagged``: None when the probe did not run)."""
    sanity = _sanity(metrics)
    out = {}
    for cls in metrics.get("classes", []):
        reliance = _reliance(metrics, cls)
        out[cls] = {**reliance, "explainers": _explainers(metrics, cls, reliance),
                    "sanity": sanity, "shortcut": _shortcut(metrics, cls)}
    return out


def run_verdict(metrics: dict[str, Any]) -> list[str]:
    """Short plain-text lines for the terminal: the shortcut probe, then one line per class."""
    lines = [probe_line(metrics)]
    for cls, v in verdicts(metrics).items():
        explainers = v["explainers"]
        best = explainers["best"]
        if explainers["figure"] is None:
            shown = "no localisation figures"
        elif best is None:
            shown = "best explainer: none beats a map that knows nothing"
        else:
            passes = v["sanity"].get(best, {}).get("passes")
            cascade = "" if passes is None else f" ({'passes' if passes else 'fails'} the randomisation test)"
            shown = f"best explainer: {best}{cascade}"
            if not explainers["tests_explainer"]:
                shown += ", but localisation does not test it here"
        lines.append(f"{cls}: {reliance_phrase(v)} ({_evidence(v)}); {shown}")
    return lines


def reliance_phrase(verdict: dict[str, Any]) -> str:
    """``relies on the lesion``, ``does not rely on the annotated region``, ``reliance not
    measurable here``."""
    if verdict["reliance"] == NOT_MEASURABLE:
        return f"reliance {NOT_MEASURABLE}"
    return f"{verdict['reliance']} on {_relied_on(verdict)}"


def _relied_on(reliance: dict[str, Any]) -> str:
    return "the annotated region" if reliance["reliance_source"] == "region_reliance" else "the lesion"


def _evidence(verdict: dict[str, Any]) -> str:
    """The figure a reliance verdict rests on, in a few words (the reason where there is none)."""
    drop = verdict.get("reliance_estimate")
    if drop is None:
        return verdict["reliance_why"]
    beyond = " beyond matched random regions" if verdict["reliance_source"] == "region_reliance" else ""
    return f"probability drop {describe(drop)}{beyond}"


def probe_line(metrics: dict[str, Any]) -> str:
    """The shortcut probe in one line: the targets it flags, with each one's strongest feature."""
    probe = metrics.get("probe")
    if not probe or "targets" not in probe:
        return "shortcut probe: not run"
    strongest = _one_per_problem(_strongest_per_target(probe.get("flagged") or []))
    if not strongest:
        return f"shortcut probe: no non-disease feature reaches AUC {probe.get('flag', 0.8)}"
    listed = "; ".join(f"{f['target']} ({f['feature']} AUC {describe(_auc(f))})" for f in strongest)
    return f"shortcut probe flags: {listed}"


def _reliance(metrics: dict[str, Any], cls: str) -> dict[str, Any]:
    twins = (metrics.get("reliance") or {}).get(cls) or {}
    if twins.get("has_lesion") and twins.get("relies_on_lesion") is not None:
        relies = bool(twins["relies_on_lesion"])
        drop = twins.get("probability_drop")
        why = (f"removing the lesion {'drops' if relies else 'changes'} the class probability by {describe(drop)}"
               f"{'' if relies else ' only'} (counterfactual twins, n = {twins.get('n')})")
        return _said(RELIES if relies else DOES_NOT_RELY, "reliance", why, drop)
    region = (metrics.get("region_reliance") or {}).get(cls) or {}
    if region.get("has_region"):
        fills = {fill: f.get("difference") for fill, f in (region.get("fills") or {}).items() if f.get("difference")}
        if region.get("relies_on_region") is None or not fills:
            return _said(NOT_MEASURABLE, None, region.get("note") or "the annotated regions could not be compared "
                                                                      "with matched random regions")
        relies = bool(region["relies_on_region"])
        differences = ", ".join(f"{describe(d)} ({fill})" for fill, d in fills.items())
        why = (f"filling the annotated region lowers the class probability by {differences} more than filling "
               f"same-area random regions with its share of lung (n = {region.get('n')})")
        if not relies:
            why += f"; not clearly more than the margin {region.get('margin', 0)}"
        weakest = min(fills.values(), key=lambda d: _lower(d) if _lower(d) is not None else float("-inf"))
        return _said(RELIES if relies else DOES_NOT_RELY, "region_reliance", why, weakest)
    if twins or region:
        why = region.get("note") or "no lesion annotation for this class"
    else:
        why = "no counterfactual twins and no annotated regions"
        not_measured = metrics.get("not_measured") or {}
        reasons = [not_measured[k] for k in ("reliance", "region-reliance", "region_reliance") if k in not_measured]
        if reasons:
            why += f" ({'; '.join(map(str, reasons))})"
    return _said(NOT_MEASURABLE, None, why)


def _said(reliance: str, source: str | None, why: str, estimate: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"reliance": reliance, "reliance_source": source, "reliance_why": why, "reliance_estimate": estimate}


def _explainers(metrics: dict[str, Any], cls: str, reliance: dict[str, Any]) -> dict[str, Any]:
    """The stores whose skill over the best uninformed map has a lower 95 % bound above 0."""
    skills = {store: ((per_class or {}).get(cls) or {}).get("skill") or {}
              for store, per_class in (metrics.get("per_image") or {}).items()}
    figure = next((f for f in SKILL_FIGURES if any(_lower(s.get(f)) is not None for s in skills.values())), None)
    out: dict[str, Any] = {"best": None, "beating": [], "figure": figure, "skill": {}, "tests_explainer": True}
    if figure is None:
        out["why"] = "no localisation figures for this class"
        return out
    out["skill"] = {store: s[figure] for store, s in skills.items() if _lower(s.get(figure)) is not None}
    ranked = sorted(out["skill"], key=lambda store: -_lower(out["skill"][store]))
    out["beating"] = [store for store in ranked if _lower(out["skill"][store]) > 0]
    top = ranked[0]
    top_skill = out["skill"][top]
    measured = f"{FIGURE_NAMES[figure]} {describe(top_skill)} relative to {top_skill.get('baseline')}"
    if out["beating"]:
        out["best"] = top
        out["why"] = f"{top}: {measured}"
    else:
        out["why"] = f"closest: {top}, {measured} (the best uninformed map)"
    if len(out["skill"]) > 1:
        out["why"] += f"; each of the {len(out['skill'])} settings judged on its own 95 % interval, not adjusted for their number"
    if reliance["reliance"] == DOES_NOT_RELY:
        out["tests_explainer"] = False
        out["why"] += (f"; the model does not rely on {_relied_on(reliance)} here, so localisation does not test "
                       "the explainer")
    elif reliance["reliance"] == NOT_MEASURABLE:
        out["tests_explainer"] = False
        out["why"] += "; whether the model relies on the region is not measured, so this does not yet test the explainer"
    return out


def _sanity(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {store: {"passes": s.get("passes"), "summary": s.get("summary", "")}
            for store, s in (metrics.get("sanity") or {}).items() if isinstance(s, dict)}


def _shortcut(metrics: dict[str, Any], cls: str) -> dict[str, Any]:
    probe = metrics.get("probe")
    if not probe or "targets" not in probe:
        return {"flagged": None, "hits": [], "why": "shortcut probe not run"}
    hits = _one_per_problem(_strongest_per_target([f for f in probe.get("flagged") or []
                                                   if cls in _target_classes(metrics, f["target"])]))
    if not hits:
        return {"flagged": False, "hits": [], "why": f"no non-disease feature reaches AUC {probe.get('flag', 0.8)}"}
    why = "; ".join(f"{f['target']}: {f['feature']} AUC {describe(_auc(f))}" for f in hits)
    return {"flagged": True, "hits": hits, "why": why}


def _target_classes(metrics: dict[str, Any], target: str) -> list[str]:
    """The classes a probe target is positive for: ``class:covid`` or ``covid`` a class, a binary
    task (``binary:covid-vs-rest`` or its bare name) its positive classes."""
    name = target.split(":", 1)[1] if target.startswith(("class:", "binary:")) else target
    if not target.startswith("binary:") and name in metrics.get("classes", []):
        return [name]
    task = (metrics.get("binary") or {}).get(name) or {}
    if "positive" in task:
        return list(task["positive"])
    return list((((metrics.get("probe") or {}).get("targets") or {}).get(target) or {}).get("positive") or [])


def _strongest_per_target(flagged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per target (its highest AUC), highest first."""
    best: dict[str, dict[str, Any]] = {}
    for f in flagged:
        if f["target"] not in best or (f.get("auc") or 0) > (best[f["target"]].get("auc") or 0):
            best[f["target"]] = f
    return sorted(best.values(), key=lambda f: -(f.get("auc") or 0))


def _one_per_problem(hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A class and its one-vs-rest task are one problem, fitted once: the same feature at the same
    AUC is one finding, named by the class target where there is one."""
    kept: dict[tuple, dict[str, Any]] = {}
    for f in sorted(hits, key=lambda f: not f["target"].startswith("class:")):
        kept.setdefault((f["feature"], f.get("auc"), tuple(f.get("ci95") or ())), f)
    return sorted(kept.values(), key=lambda f: -(f.get("auc") or 0))


def _auc(flag: dict[str, Any]) -> dict[str, Any]:
    return {"value": flag.get("auc"), "ci95": flag.get("ci95") or [None, None]}


def _lower(e: dict[str, Any] | None) -> float | None:
    if not e or e.get("value") is None:
        return None
    lo = (e.get("ci95") or [None])[0]
    return None if lo is None else float(lo)
