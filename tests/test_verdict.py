"""The verdict the report opens with (xaicxr.analysis.verdict), read from hand-made metrics.json
dicts; the HTML tables that leave out what does not apply; the panel in a real report."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
from shared_runs import FULL

from xaicxr.analysis.verdict import DOES_NOT_RELY, NOT_MEASURABLE, RELIES, run_verdict, verdicts
from xaicxr.io import html
from xaicxr.stages.report import EXAMPLES_PER_CLASS, _example_rows

CLASSES = ["normal", "bacteria", "virus", "covid"]


def est(value, lo, hi, n=40, **extra):
    return {"value": value, "ci95": [lo, hi], "n": n, **extra}


def twins(relies: bool, drop: float) -> dict:
    return {"n": 40, "has_lesion": True, "relies_on_lesion": relies,
            "probability_drop": est(drop, drop - 0.1, drop + 0.1), "split": "test"}


def region(relies: bool | None, difference: float = 0.1) -> dict:
    fill = {"drop_region": est(0.3, 0.2, 0.4), "drop_random": est(0.3 - difference, 0.1, 0.3),
            "difference": est(difference, difference - 0.05, difference + 0.05)}
    return {"n": 30, "has_region": True, "relies_on_region": relies, "random_regions": 8, "split": "test",
            "margin": 0.02, "fills": {"road": fill, "blur": fill}}


def skill(value, lo, hi, baseline="class_prior"):
    return {"skill": {"pointing_game": est(value, lo, hi, baseline=baseline)}}


def metrics(**parts) -> dict:
    return {"classes": CLASSES, "binary": {"covid-vs-rest": {"positive": ["covid"]},
                                           "abnormal-vs-normal": {"positive": ["bacteria", "virus", "covid"]}},
            **parts}


def test_reliance_is_read_from_the_twins_first_then_the_annotated_regions():
    v = verdicts(metrics(
        reliance={"normal": {"n": 40, "has_lesion": False, "relies_on_lesion": False},
                  "bacteria": twins(True, 0.7), "virus": twins(False, 0.02), "covid": twins(True, 0.5)},
        region_reliance={"bacteria": region(False), "normal": region(True)}))
    assert v["bacteria"]["reliance"] == RELIES and v["bacteria"]["reliance_source"] == "reliance", \
        "the twins decide where the class has a lesion, whatever the regions say"
    assert "0.70 [0.60, 0.80]" in v["bacteria"]["reliance_why"]
    assert v["virus"]["reliance"] == DOES_NOT_RELY
    assert v["normal"]["reliance"] == RELIES and v["normal"]["reliance_source"] == "region_reliance", \
        "no lesion in the twins: the expert's regions are the next source"
    assert v["covid"]["reliance_estimate"]["value"] == 0.5


def test_region_reliance_alone_decides_on_real_films():
    v = verdicts(metrics(reliance={}, region_reliance={
        "bacteria": region(True, 0.12), "virus": region(False, 0.0), "covid": region(None),
        "normal": {"n": 0, "has_region": False, "relies_on_region": None, "split": "test",
                   "note": "no image of this class has an annotated region"}}))
    assert v["bacteria"]["reliance"] == RELIES and "0.12 [0.07, 0.17] (road)" in v["bacteria"]["reliance_why"]
    assert v["virus"]["reliance"] == DOES_NOT_RELY and v["virus"]["reliance_source"] == "region_reliance"
    assert v["covid"]["reliance"] == NOT_MEASURABLE, "a region with no room for random placements decides nothing"
    assert v["normal"]["reliance"] == NOT_MEASURABLE and "annotated region" in v["normal"]["reliance_why"]


def test_without_twins_or_regions_reliance_is_not_measurable_and_says_why():
    v = verdicts(metrics(not_measured={"reliance": "the dataset cannot make counterfactual twins"}))
    assert {c: x["reliance"] for c, x in v.items()} == {c: NOT_MEASURABLE for c in CLASSES}
    assert "no counterfactual twins and no annotated regions" in v["covid"]["reliance_why"]
    assert "cannot make counterfactual twins" in v["covid"]["reliance_why"]
    lesionless = verdicts(metrics(reliance={"normal": {"n": 40, "has_lesion": False, "relies_on_lesion": False}}))
    assert lesionless["normal"]["reliance_why"] == "no lesion annotation for this class"


def test_an_explainer_counts_only_when_its_skill_is_surely_above_every_uninformed_map():
    per_image = {"gradcam": {"covid": skill(0.10, 0.02, 0.18), "virus": skill(0.20, -0.01, 0.40)},
                 "layercam": {"covid": skill(0.25, 0.05, 0.45), "virus": skill(-0.3, -0.5, -0.1)},
                 "scorecam": {"covid": skill(0.30, -0.02, 0.60)}}
    v = verdicts(metrics(reliance={"covid": twins(True, 0.6), "virus": twins(True, 0.6)}, per_image=per_image))
    covid = v["covid"]["explainers"]
    assert covid["beating"] == ["layercam", "gradcam"] and covid["best"] == "layercam", \
        "ranked by the lower bound: scorecam's larger value with an interval over 0 does not count"
    virus = v["virus"]["explainers"]
    assert virus["best"] is None and virus["beating"] == []
    assert "closest: gradcam" in virus["why"] and "class_prior" in virus["why"]
    assert v["normal"]["explainers"]["figure"] is None, "no skill for a class without lesion masks"


def test_the_energy_lift_is_read_where_there_is_no_pointing_game():
    lift = {"skill": {"energy_lift": est(1.5, 0.4, 2.6, baseline="lungs")}}
    v = verdicts(metrics(per_image={"gradcam": {"bacteria": lift}}))
    assert v["bacteria"]["explainers"]["figure"] == "energy_lift"
    assert v["bacteria"]["explainers"]["best"] == "gradcam"


def test_where_the_model_does_not_rely_localisation_does_not_test_the_explainer():
    v = verdicts(metrics(reliance={"virus": twins(False, 0.01)},
                         per_image={"gradcam": {"virus": skill(0.3, 0.1, 0.5)}}))
    explainers = v["virus"]["explainers"]
    assert explainers["best"] == "gradcam" and not explainers["tests_explainer"]
    assert "does not test the explainer" in explainers["why"]


def test_the_shortcut_probe_flags_a_class_directly_or_through_a_binary_task():
    flagged = [{"target": "binary:covid-vs-rest", "feature": "corner_mean", "auc": 0.97, "ci95": [0.95, 0.99]},
               {"target": "binary:covid-vs-rest", "feature": "mode", "auc": 0.99, "ci95": [0.98, 1.0]},
               {"target": "class:covid", "feature": "mode", "auc": 0.99, "ci95": [0.98, 1.0]},
               {"target": "class:bacteria", "feature": "width", "auc": 0.85, "ci95": [0.8, 0.9]}]
    v = verdicts(metrics(probe={"flag": 0.8, "targets": {"class:covid": {}}, "flagged": flagged}))
    assert v["covid"]["shortcut"]["flagged"]
    assert [(h["target"], h["feature"]) for h in v["covid"]["shortcut"]["hits"]] == [("class:covid", "mode")], \
        "a class and its one-vs-rest task are one finding, each target's strongest feature only"
    assert v["bacteria"]["shortcut"]["flagged"] and not v["virus"]["shortcut"]["flagged"]
    assert verdicts(metrics())["covid"]["shortcut"]["flagged"] is None, "no probe: not run, not 'not flagged'"
    task = verdicts(metrics(probe={"flag": 0.8, "targets": {}, "flagged": [
        {"target": "binary:abnormal-vs-normal", "feature": "aspect", "auc": 0.9, "ci95": [0.85, 0.95]}]}))
    assert [c for c in CLASSES if task[c]["shortcut"]["flagged"]] == ["bacteria", "virus", "covid"]


def test_run_verdict_gives_the_probe_then_one_line_per_class():
    lines = run_verdict(metrics(
        reliance={"covid": twins(True, 0.6)},
        per_image={"gradcam": {"covid": skill(0.2, 0.1, 0.3)}},
        sanity={"gradcam": {"passes": False, "summary": "fails: ..."}},
        probe={"flag": 0.8, "targets": {}, "flagged": [
            {"target": "class:covid", "feature": "mode", "auc": 0.99, "ci95": [0.98, 1.0]}]}))
    assert len(lines) == 1 + len(CLASSES)
    assert lines[0].startswith("shortcut probe flags: class:covid (mode AUC 0.99")
    covid = lines[1 + CLASSES.index("covid")]
    assert "relies on the lesion" in covid and "best explainer: gradcam (fails the randomisation test)" in covid


def test_a_table_leaves_out_columns_with_nothing_in_them_but_keeps_the_first():
    page = html.table(["class", "n", "pointing game", "note"],
                      [[None, 3, None, None], ["covid", 5, est(None, None, None), "x"]])
    assert re.findall(r"<th>(.*?)</th>", page) == ["class", "n", "note"]
    assert page.count("<td>") == 6
    assert html.table(["class", "n"], []) == "", "a table without rows is left out"


def test_examples_are_picked_per_class_correct_then_wrong():
    labels = np.repeat(np.arange(4), 10)
    predictions = labels.copy()
    predictions[[0, 1, 2]] = 1  # normal: 3 wrong of 10
    predictions[10:19] = 0  # bacteria: 1 correct, 9 wrong
    predictions[38] = 1  # covid: 1 wrong
    rows = _example_rows(SimpleNamespace(labels=labels, predictions=predictions), CLASSES)
    right = [[bool(labels[r] == predictions[r]) for r in picks] for picks in rows]
    assert all(len(picks) == EXAMPLES_PER_CLASS for picks in rows)
    assert all(labels[r] == k for k, picks in enumerate(rows) for r in picks)
    assert right[0] == [True, True, False, False] and right[1] == [True, False, False, False]
    assert right[2] == [True] * 4 and right[3] == [True, True, True, False]


@pytest.fixture(scope="module")
def report(shared_runs):
    return (shared_runs.run(FULL) / "report" / "index.html").read_text()


def test_the_report_opens_with_the_verdict(report):
    verdict = report.index("<h2>Verdict</h2>")
    assert verdict < report.index("<h2>Classification</h2>")
    panel = report[verdict:report.index("</table>", verdict)]
    assert re.findall(r"<tr><td>(\w+)</td>", panel) == CLASSES
    assert "randomisation test" in panel and "shortcut probe" in panel


def test_the_probe_table_has_one_row_per_problem(report):
    start = report.index("<h2>Shortcut probe")
    rows = re.findall(r"<tr><td>([^<]+)</td>", report[start:report.index("</table>", start)])
    targets = [t for row in rows for t in row.split(" = ")]
    assert len(targets) == len(set(targets)) and "binary:covid-vs-rest" in targets
    assert "class:covid = binary:covid-vs-rest" in rows, "a class and its one-vs-rest task are one problem"
