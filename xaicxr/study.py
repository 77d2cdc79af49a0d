"""``xaicxr study STUDY.toml``: one base configuration, many variants, one comparison table.

A study file holds the base configuration (inline tables under ``[base]``, or
``base = "other.toml"`` relative to the study file) and either a ``[matrix]`` of dotted keys
to lists of values (the variants are their product) or explicit ``[[variants]]`` with a
``name`` and a ``set`` table of dotted keys. A dotted key names a config key
(``"train.seed"``) or a whole table (``"explain"``). A matrix key given one value, not a list,
sets it in every variant and is left out of the variant names (a base file with a change)::

    [matrix]
    "train.seed" = [0, 1]
    "explain" = [[{ name = "gradcam", layer = "block5_conv4" }],
                 [{ name = "layercam", layer = "block3_conv4" }]]

Each variant is a run directory under the study's output folder. Variants that differ only in
explain/template options share one trained model: the first run's data, split, model and
predictions are linked into the others, whose pipelines then skip those stages. Variants with
the same ``[run]`` table share one executor: a Dask cluster is started once for the study.

After the variants ran, every variant's templates are compared with every other variant's
(``xaicxr compare``, all pairs: a study over seeds or sites asks how far any two runs drift,
not how far each is from an arbitrary first one), into ``compare/`` of the study's folder.

``seeds = N`` (top level of the study file) trains every variant N times, with ``train.seed``
the variant's own plus 0, 1, ..., N - 1 (variants ``<name>__seed=<s>``), and adds a table over
the seeds (``summary.json`` ``seeds``, ``seeds.csv``, ``index.html``): per variant, store and
class, each figure's mean over the N models and its between-seed 95 % interval (Student's t
over the N per-model values: what another training run would give, which no interval of one
run contains), and for a verdict how many of the N models it holds for.
"""

from __future__ import annotations

import copy
import csv
import html
import io
import itertools
import os
import re
import shutil
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from .compare import compare_runs, comparison_rows
from .config import absolute_paths, chosen_metrics, make_metric, resolve, store_name
from .errors import ConfigError
from .executors import shared_executors
from .io import atomic
from .pipeline import run_pipeline, stage_hashes
from .progress import console
from .rundir import RunDir

SHARED_STAGES = ("dataset", "split", "train", "evaluate")


def _shared_files(rundir: RunDir) -> list[Path]:
    """What the shared stages wrote: linked into a variant that reuses them."""
    return [rundir.dataset_index, rundir.skipped, rundir.split, rundir.model, rundir.train_info,
            rundir.predictions, rundir.metrics, rundir / "cache", rundir.data_dir]


def load_study(path: Path) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """(base config, [(variant name, raw config)])."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read study {path}: {exc}") from None
    unknown = sorted(set(raw) - {"base", "matrix", "variants", "name", "seeds"})
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {path}; a study has base, matrix, variants, name, seeds")
    spec = raw.get("base", {})
    if isinstance(spec, str):
        base_path = (path.parent / spec).resolve()
        try:
            base = tomllib.loads(base_path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read base config {base_path}: {exc}") from None
        base = absolute_paths(base, base_path.parent)
    else:
        base = absolute_paths(spec, path.parent)
    variants: list[tuple[str, dict[str, Any]]] = []
    if "matrix" in raw:
        axes = list(raw["matrix"].items())
        for values in itertools.product(*[v if isinstance(v, list) else [v] for _, v in axes]):
            cfg = copy.deepcopy(base)
            parts = []
            for (key, given), value in zip(axes, values):
                _set(cfg, key, value, path)
                if isinstance(given, list):
                    parts.append(_label(key, value))
            variants.append(("__".join(parts) or "base", cfg))
    for entry in raw.get("variants", []):
        if "name" not in entry:
            raise ConfigError(f"[[variants]] in {path} needs a name")
        cfg = copy.deepcopy(base)
        for key, value in entry.get("set", {}).items():
            _set(cfg, key, value, path)
        variants.append((entry["name"], cfg))
    if not variants:
        raise ConfigError(f"{path} defines no variants: add [matrix] or [[variants]]")
    variants = _over_seeds(variants, raw.get("seeds", 1), path)
    variants = [(name, absolute_paths(cfg, path.parent)) for name, cfg in variants]
    for name, _ in variants:
        _check_name(name, path)
    names = [n for n, _ in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: two variants share a name")
    return base, variants


SEED_SUFFIX = re.compile(r"__seed=(-?\d+)$")


def _over_seeds(variants: list[tuple[str, dict[str, Any]]], seeds: Any, path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Each variant ``seeds`` times, ``train.seed`` its own (default 0) plus 0 .. seeds - 1."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"'seeds' in {path} must be a whole number of trained models, at least 1; got {seeds!r}")
    if seeds == 1:
        return variants
    out = []
    for name, cfg in variants:
        first = cfg.get("train", {}).get("seed", 0)
        if isinstance(first, bool) or not isinstance(first, int):
            raise ConfigError(f"{path}: variant {name!r} has train.seed {first!r}; 'seeds' needs a whole number")
        for k in range(seeds):
            seeded = copy.deepcopy(cfg)
            _set(seeded, "train.seed", first + k, path)
            out.append((f"{name}__seed={first + k}", seeded))
    return out


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]{0,254}")
"""A variant's name is a folder under the study's ``--out`` and a link in its index.html: a
letter or digit, then letters, digits and ``_ . + = -`` (no separator, no ``..``, no scheme)."""


def _check_name(name: Any, source: Path) -> None:
    if not (isinstance(name, str) and PLAIN_NAME.fullmatch(name) and ".." not in name):
        raise ConfigError(f"{source}: variant name {name!r} is not a plain name: use letters, digits "
                          "and _ . + = - (starting with a letter or digit, no '..', at most 255 "
                          "characters); it names a folder under --out")


def _set(cfg: dict[str, Any], dotted: str, value: Any, source: Path) -> None:
    keys = dotted.split(".")
    target = cfg
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{source}: {dotted!r} does not name a table key")
    target[keys[-1]] = copy.deepcopy(value)


def _label(key: str, value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        text = "+".join("-".join(str(v) for k, v in entry.items() if k in ("name", "layer")) for entry in value)
    elif isinstance(value, dict):
        text = "-".join(str(v) for v in value.values())
    else:
        text = str(value)
    safe = "".join(c if c.isalnum() or c in "-+_." else "-" for c in text)
    return f"{key.split('.')[-1]}={safe}"


def _shared_digest(cfg: dict[str, Any]) -> str:
    """Equal for two variants exactly when they can share the trained model."""
    return stage_hashes(cfg)[SHARED_STAGES[-1]]


def _link_trained(source: RunDir, target: RunDir) -> None:
    """Reuse ``source``'s data, split, model and predictions in ``target`` (hard links, or copies)."""
    target.root.mkdir(parents=True, exist_ok=True)
    for src, dst in zip(_shared_files(source), _shared_files(target)):
        if not src.exists() or dst.exists():
            continue
        if src.is_dir():
            shutil.copytree(src, dst, copy_function=_link_or_copy)
        else:
            _link_or_copy(src, dst)
    state = atomic.read_json(source.stages)
    atomic.write_json(target.stages, {k: v for k, v in state.items() if k in SHARED_STAGES})


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run_study(path: Path, out: Path) -> dict[str, Any]:
    _, variants = load_study(path)
    resolved = [(name, resolve(raw, f"{path} (variant {name})")) for name, raw in variants]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trained: dict[str, RunDir] = {}
    rows = []
    with shared_executors():  # one cluster for every variant, not one each
        for name, cfg in resolved:
            run_dir = RunDir(out / name)
            digest = _shared_digest(cfg)
            if digest in trained and not run_dir.model.exists():
                _link_trained(trained[digest], run_dir)
                console.print(f"[cyan]variant[/] {name}: reusing the model of {trained[digest].root.name}")
            else:
                console.print(f"[cyan]variant[/] {name}")
            start = time.perf_counter()
            summary = run_pipeline(cfg, run_dir.root)
            trained.setdefault(digest, run_dir)
            rows.extend(_rows(name, run_dir, cfg, summary, time.perf_counter() - start))
    table = {"study": str(path), "out": str(out), "variants": rows}
    over_seeds = seed_table(rows)
    if over_seeds:
        table["seeds"] = over_seeds
    comparison = _compare_variants(out, [name for name, _ in resolved])
    if comparison is not None:
        table["compare"] = comparison
    _write_tables(out, rows, comparison, over_seeds)
    atomic.write_json(out / "summary.json", table)
    return table


SEED_KEYS = ("variant", "run_dir", "seconds", "stages_run", "test_set", "explainer", "store", "layer", "class")


def seed_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of variants trained over several seeds (``<name>__seed=<s>``), one per variant, store
    and class: each numeric figure's ``mean``, ``sd`` and between-seed 95 % interval (``lo``,
    ``hi``: Student's t over the per-model values), each verdict's count of models it holds for
    (``<figure>_true``) out of ``n_models``. Empty when no variant has seeds."""
    from .analysis.intervals import t_interval

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        match = SEED_SUFFIX.search(row["variant"])
        if match:
            key = (row["variant"][:match.start()], row.get("store"), row.get("class"))
            groups.setdefault(key, []).append(row)
    out = []
    for (variant, store, cls), members in groups.items():
        entry: dict[str, Any] = {"variant": variant, "store": store, "class": cls, "n_models": len(members),
                                 "seeds": [int(SEED_SUFFIX.search(m["variant"]).group(1)) for m in members]}
        names = [k for k in members[0] if k not in SEED_KEYS and not k.endswith(("_lo", "_hi"))]
        for name in names:
            values = [m.get(name) for m in members]
            if all(isinstance(v, bool) for v in values if v is not None) and any(v is not None for v in values):
                entry[f"{name}_true"] = sum(1 for v in values if v)
                continue
            numbers = np.array([v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)], float)
            numbers = numbers[np.isfinite(numbers)]
            if len(numbers) == 0:
                continue
            between = t_interval(numbers)
            entry[name] = {"mean": between["value"], "sd": between["sd"], "ci95": between["ci95"], "n": between["n"]}
        out.append(entry)
    return out


def _compare_variants(out: Path, names: list[str]) -> dict[str, Any] | None:
    """Every pair of variants with templates compared into ``out/compare``; None with fewer
    than two such variants."""
    having = [name for name in names if RunDir(out / name).template_files()]
    if len(having) < 2:
        return None
    console.print(f"[cyan]comparing templates[/] of {len(having)} variants")
    result = compare_runs([out / name for name in having], out / "compare", labels=having)
    return {"compare_json": "compare/compare.json", "rows": comparison_rows(result),
            "not_compared": result["not_compared"], "skipped": result["skipped"]}


def _rows(name: str, run_dir: RunDir, cfg: dict[str, Any], summary: dict[str, Any],
          seconds: float) -> list[dict[str, Any]]:
    """One row per explainer store and class of the variant (long format): classification
    figures, then each chosen metric's columns for that store and class
    (:meth:`xaicxr.plugins.Metric.row`: localisation next to the best uninformed baseline, lung
    energy, reliability, deletion/insertion AUCs, whether the model relies on the class's lesion,
    whether the explainer passes the cascading randomisation test)."""
    metrics = run_dir.read_metrics()
    common: dict[str, Any] = {"variant": name, "run_dir": str(run_dir.root), "seconds": round(seconds, 1),
                              "stages_run": summary["stages_run"], "test_set": metrics.get("test_set"),
                              "n_test": metrics.get("n_test"), "accuracy": metrics.get("accuracy")}
    for task, b in metrics.get("binary", {}).items():
        common[f"auc:{task}"] = b["auc"]
    chosen = [make_metric(m, cfg["quality"]) for m in chosen_metrics(cfg["quality"])]
    rows = []
    for spec in cfg["explain"]:
        store = store_name(spec)
        sanity = metrics.get("sanity", {}).get(store, {})
        for cls, q in metrics.get("per_image", {}).get(store, {}).items():
            row = {**common, "explainer": spec["name"], "store": store,
                   "layer": sanity.get("layer") or spec.get("layer"), "class": cls, "n": q.get("n")}
            for metric in chosen:
                figures = metrics.get(metric.key, {})
                row.update(metric.row(figures if metric.scope == "run" else figures.get(store), cls))
            rows.append(row)
    return rows


def _write_tables(out: Path, rows: list[dict[str, Any]], comparison: dict[str, Any] | None = None,
                  over_seeds: list[dict[str, Any]] | None = None) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and k not in ("run_dir", "stages_run")]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(out / "summary.csv", buf.getvalue())
    fmt = lambda v: "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    md += _seeds_markdown(over_seeds or [])
    md += _comparison_markdown(comparison, fmt)
    atomic.write_text(out / "summary.md", "\n".join(md) + "\n")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(
            f'<td><a href="{html.escape(quote(r["variant"], safe="=+"))}/report/index.html">{html.escape(r["variant"])}</a></td>'
            if c == "variant" else f"<td>{html.escape(fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
        for r in rows)
    atomic.write_text(out / "index.html", f"""<!doctype html><html><head><meta charset="utf-8">
<title>xaicxr study</title><style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.25em .5em;text-align:right}}td:first-child{{text-align:left}}</style></head>
<body><h1>xaicxr study</h1><p>Each variant links to its report. One row per explainer and class; _lo and _hi are
95 % intervals; pointing_skill is the pointing game minus the best map that knows nothing about the lesion
(pointing_baseline); randomisation_passes is the cascading randomisation test.</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{_seeds_html(over_seeds or [])}{_comparison_html(comparison, fmt)}</body></html>
""")
    if over_seeds:
        atomic.write_text(out / "seeds.csv", _seeds_csv(over_seeds))


def _seed_cells(entry: dict[str, Any]) -> dict[str, str]:
    """A row of the over-seeds table as text: ``mean [lo, hi]`` and ``k/N`` for verdicts."""
    cells = {"variant": entry["variant"], "store": str(entry["store"]), "class": str(entry["class"]),
             "n_models": str(entry["n_models"])}
    for name, value in entry.items():
        if isinstance(value, dict) and "mean" in value:
            lo, hi = value["ci95"]
            cells[name] = f"{value['mean']:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")
        elif name.endswith("_true"):
            cells[name] = f"{value}/{entry['n_models']}"
    return cells


def _seeds_csv(over_seeds: list[dict[str, Any]]) -> str:
    rows = []
    for entry in over_seeds:
        row = {k: entry[k] for k in ("variant", "store", "class", "n_models")}
        for name, value in entry.items():
            if isinstance(value, dict) and "mean" in value:
                row.update({f"{name}_mean": value["mean"], f"{name}_sd": value["sd"],
                            f"{name}_lo": value["ci95"][0], f"{name}_hi": value["ci95"][1]})
            elif name.endswith("_true"):
                row[name] = value
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _seeds_markdown(over_seeds: list[dict[str, Any]]) -> list[str]:
    if not over_seeds:
        return []
    cells = [_seed_cells(e) for e in over_seeds]
    columns = list(dict.fromkeys(k for c in cells for k in c))
    return ["", "Over the training seeds (mean [between-seed 95 % interval]; a verdict: the models it holds for):", "",
            "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *["| " + " | ".join(c.get(k, "") for k in columns) + " |" for c in cells]]


def _seeds_html(over_seeds: list[dict[str, Any]]) -> str:
    if not over_seeds:
        return ""
    cells = [_seed_cells(e) for e in over_seeds]
    columns = list(dict.fromkeys(k for c in cells for k in c))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.get(k, ''))}</td>" for k in columns) + "</tr>" for c in cells)
    return (f"<h2>Over the training seeds</h2><p>Each figure's mean over the models trained with different seeds and "
            f"its between-seed 95 % interval (Student's t over the per-model values: what another training run would "
            f"give); a verdict as the number of models it holds for (seeds.csv).</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


COMPARISON_COLUMNS = ("template", "class", "a", "b", "pearson", "ssim", "self_pearson_a", "self_pearson_b",
                      "self_ssim_a", "self_ssim_b", "within_self_spread")


def _comparison_markdown(comparison: dict[str, Any] | None, fmt: Any) -> list[str]:
    if not comparison:
        return []
    if not comparison["rows"]:
        return ["", "Templates across variants: no template is shared by two variants (compare/compare.json)."]
    md = ["", "Templates across variants (compare/compare.json):", "",
          "| " + " | ".join(COMPARISON_COLUMNS) + " |", "|" + "---|" * len(COMPARISON_COLUMNS)]
    return md + ["| " + " | ".join(fmt(r.get(c)) for c in COMPARISON_COLUMNS) + " |" for r in comparison["rows"]]


def _comparison_html(comparison: dict[str, Any] | None, fmt: Any) -> str:
    """The template comparison of every pair of variants, each row linking to its figure."""
    if not comparison:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COMPARISON_COLUMNS)
    body = "".join(
        "<tr>" + "".join(
            f'<td><a href="compare/{html.escape(r["figure"])}">{html.escape(r["class"])}</a></td>'
            if c == "class" else f"<td>{html.escape(fmt(r.get(c)))}</td>" for c in COMPARISON_COLUMNS) + "</tr>"
        for r in comparison["rows"])
    notes = "".join(f"<p>{html.escape(key)}: only in {html.escape(', '.join(v))}; not compared</p>"
                    for key, v in comparison["not_compared"].items())
    if not comparison["rows"]:
        return f"<h2>Templates across variants</h2><p>No template is shared by two variants.</p>{notes}"
    return f"""<h2>Templates across variants</h2><p>Every pair of variants (<a href="compare/compare.json">compare.json</a>):
Pearson r and SSIM (data range 1) of the two templates; self_*: each variant's own split halves, the mean over random
partitions (Pearson stepped up to full size by Spearman-Brown); within_self_spread: r reaches the lower end of the
less stable variant's partition spread. Each class links to its figure (templates side by side, differences).</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"""
