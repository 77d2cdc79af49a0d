"""The ``xaicxr`` command line: commands only. Results go to stdout (one JSON object with
``--json``); progress, tables and errors go to stderr.

Every command returns its result as a dict and is wrapped by :func:`command`: a user error
(:class:`~xaicxr.errors.XaicxrError`) becomes one line on stderr and exit code 2; otherwise the
result is printed as JSON (``--json``) or shown by the command's own printer.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable, Optional

import typer
import typer.core
from rich.markup import escape
from rich.table import Table

from . import __version__, plugins, tflog
from .analysis.intervals import describe
from .config import load_config
from .errors import ConfigError, XaicxrError
from .interrupts import Terminated, interrupts_at_safe_points
from .io.imaging import DEFAULT_MAX_PIXELS
from .io.runlock import RunLock
from .plugins.options import check_options
from .progress import console, progress_bar
from .rundir import RunDir, Shard

class OneLineUsageErrors(typer.core.TyperGroup):
    """The documented failure contract for what the argument parser refuses too (a missing
    argument, an unknown option, a value out of range): one ``error:`` line on stderr, exit 2,
    and with ``--json`` one JSON object on stdout, instead of the parser's multi-line box."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        usage_error = typer.core._click.exceptions.ClickException
        try:
            value = super().main(args=argv, prog_name=prog_name, complete_var=complete_var,
                                 standalone_mode=False, **extra)
        except usage_error as exc:
            if not standalone_mode:
                raise
            line = " ".join(exc.format_message().split())
            hint = f" ({exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) is not None else ""
            console.print(f"[bold red]error:[/] {escape(line)}{hint}", highlight=False, soft_wrap=True)
            if "--json" in argv:
                _print_json({"error": {"type": "UsageError", "message": line}})
            sys.exit(2 if exc.exit_code in (1, 2) else exc.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            console.print("[bold red]error:[/] aborted", highlight=False)
            sys.exit(1)
        if not standalone_mode:
            return value
        sys.exit(value if isinstance(value, int) else 0)


app = typer.Typer(name="xaicxr", no_args_is_help=True, add_completion=False, cls=OneLineUsageErrors,
                  help="Explainability for chest X-ray classifiers: heatmaps and per-class heatmap templates.")
data_app = typer.Typer(no_args_is_help=True, help="Generate and inspect datasets.")
app.add_typer(data_app, name="data")

JsonOpt = typer.Option(False, "--json", help="Print exactly one JSON object on stdout.")
ConfigOpt = typer.Option(None, "--config", "-c", help="Configuration for a new run directory (default: its config.toml).")
UnsafeOpt = typer.Option(False, "--unsafe-load", help="Load model.keras with Keras safe_mode off (only for models you trust).")
RetrainOpt = typer.Option(False, "--retrain", help="Train the model first if the run directory has none (or an outdated one); without it that is an error.")
VerboseOpt = typer.Option(False, "--verbose", help="Show TensorFlow's own logs, and the traceback of an unexpected error.")


def command(show: Callable[[dict[str, Any]], None] | None = None) -> Callable:
    """Run a command that returns a dict: errors, ``--json``, ``--verbose`` and the human printer
    in one place.

    Every command gains ``--verbose`` (TensorFlow's own logs, and the traceback of an unexpected
    error). Every failure is one line on stderr and exit code 2 (130 when interrupted); with
    ``--json`` stdout then holds one object ``{"error": {"type": ..., "message": ...}}``."""
    def wrap(fn: Callable[..., dict[str, Any]]) -> Callable[..., None]:
        @functools.wraps(fn)
        def run(**kwargs: Any) -> None:
            verbose = kwargs.pop("verbose", False)
            tflog.configure(verbose)
            as_json = kwargs.get("as_json", False)
            try:
                with interrupts_at_safe_points():
                    result = fn(**kwargs)
            except (typer.Exit, typer.Abort):
                raise
            except XaicxrError as exc:
                _fail(type(exc).__name__, str(exc), as_json)
            except Terminated:
                _fail("Terminated", "terminated (SIGTERM); what was written is kept: run the command again "
                      "to resume", as_json, code=143)
            except KeyboardInterrupt:
                _fail("Interrupted", "interrupted; run the command again to resume", as_json, code=130)
            except Exception as exc:  # noqa: BLE001  (a bug: still one line, the traceback on request)
                if _no_space(exc):
                    _fail("NoSpaceError", f"no space left on {_no_space(exc)}; free some and run the command "
                          "again (files are written whole or not at all)", as_json)
                if isinstance(exc, OSError):
                    _fail(type(exc).__name__, _os_error(exc), as_json, trace=verbose)
                _fail("InternalError", f"internal error ({type(exc).__name__}: {exc}); rerun with "
                      "--verbose for the traceback and please report it", as_json, trace=verbose)
            if as_json:
                _print_json(result)
            elif show is not None:
                show(result)
        params = list(inspect.signature(fn).parameters.values())
        run.__signature__ = inspect.Signature(params + [inspect.Parameter(  # type: ignore[attr-defined]
            "verbose", inspect.Parameter.KEYWORD_ONLY, default=VerboseOpt, annotation=bool)])
        run.__annotations__ = {**fn.__annotations__, "verbose": bool}
        return run
    return wrap


def _print_json(obj: Any) -> None:
    from .io.atomic import finite_json

    sys.stdout.write(json.dumps(finite_json(obj), indent=2, ensure_ascii=False, default=str,
                                allow_nan=False) + "\n")
    sys.stdout.flush()


def _fail(kind: str, message: str, as_json: bool, *, code: int = 2, trace: bool = False) -> None:
    if trace:
        console.print_exception()
    line = " ".join(message.split())
    console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if as_json:
        _print_json({"error": {"type": kind, "message": line}})
    raise typer.Exit(code)


def _no_space(exc: BaseException) -> str | None:
    """Where a write ran out of disk (ENOSPC: an ``OSError``, or HDF5's RuntimeError that only
    says ``errno = 28``), or None."""
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return str(exc.filename or "the device")
    text = str(exc)
    if "errno = 28" in text or "No space left on device" in text:
        found = re.search(r"name = '([^']+)'", text)
        return found.group(1) if found else "the device"
    return None


def _os_error(exc: OSError) -> str:
    """An ``OSError`` as one line: what failed on which file."""
    where = f" {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{':' if where else ''}{where}"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"xaicxr {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    """xaicxr: what does my X-ray model look at, and is it the disease?"""


# --------------------------------------------------------------------------- plugins


def _show_plugins(result: dict[str, Any]) -> None:
    table = Table(title="xaicxr plugins")
    for col in ("kind", "name", "options (default)", "distribution", "version"):
        table.add_column(col, overflow="fold")
    for r in result["plugins"]:
        options = ", ".join(f"{k}={v}" for k, v in r["options"].items())
        table.add_row(r["kind"], r["name"], escape(options), escape(f"{r['distribution']} ({r['module']})"),
                      r["version"])
    console.print(table)
    for (kind, name), infos in plugins.registry().conflicts().items():
        console.print(f"[yellow]conflict:[/] {kind} {name!r} registered by "
                      + " and ".join(i.distribution for i in infos))
    for r in result["failed"]:
        console.print(f"[red]failed to load[/] {escape(r['module'])} ({escape(r['distribution'])}): "
                      f"{escape(r['error'])}", soft_wrap=True)


@app.command("plugins")
@command(_show_plugins)
def plugins_cmd(as_json: bool = JsonOpt) -> dict[str, Any]:
    """List loaded plugins (kind, name, options with defaults, distribution, module) and plugin modules that failed."""
    rows = plugins.available()
    return {"plugins": [r for r in rows if "kind" in r], "failed": [r for r in rows if "error" in r]}


# --------------------------------------------------------------------------- data


@data_app.command("phantom")
@command(lambda r: console.print(f"wrote {r['images']} phantoms to {r['out']}"))
def data_phantom(out: Path = typer.Argument(..., help="Folder to write the phantom set to."),
                 n_per_class: int = typer.Option(250, "--n-per-class", min=1),
                 size: int = typer.Option(128, "--size", min=16),
                 seed: int = typer.Option(0, "--seed"),
                 difficulty: str = typer.Option("standard", "--difficulty", help="easy, standard or subtle."),
                 as_json: bool = JsonOpt) -> dict[str, Any]:
    """Generate synthetic chest radiographs with lesion and lung masks."""
    phantom = plugins.get("dataset", "phantom")
    options = {"path": str(out), "n_per_class": n_per_class, "size": size, "seed": seed,
               "difficulty": difficulty}
    check_options(phantom, options, "xaicxr data phantom")
    with progress_bar("generating phantoms", 4 * n_per_class) as advance:
        scan = phantom(**options).scan(None, progress=advance)
    return {"out": str(out), "images": len(scan.records), "classes": scan.classes,
            "size": size, "seed": seed, "difficulty": difficulty}


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError as exc:
            if value.strip()[:1] in ("'", '"', "[", "{"):
                raise ConfigError(f"--option {pair!r}: not a valid TOML value ({exc})") from None
            out[key.strip()] = value
    return out


def _show_inventory(s: dict[str, Any]) -> None:
    table = Table(title=f"{s['dataset']}: {s['path']}")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("patients", justify="right")
    for c in s["classes"]:
        table.add_row(c, str(s["counts"][c]), str(s["patients"][c]) if s["patients"] else "-")
    console.print(table)
    if s["sizes"]:
        w, h = s["sizes"]["width"], s["sizes"]["height"]
        console.print(f"sizes: width {w['min']}..{w['max']} (median {w['median']}), "
                      f"height {h['min']}..{h['max']} (median {h['median']}), {s['sizes']['distinct']} distinct")
    console.print(f"modes: {s['modes']}  formats: {s['formats']}")
    console.print(f"decoded {s['decoded']} files in {s['seconds']} s ({s['images_per_s']} images/s)")
    console.print(f"skipped: {len(s['skipped'])}")
    for item in s["skipped"]:
        console.print(f"  {item['path']}: {item['reason']}", highlight=False, markup=False)


@data_app.command("inspect")
@command(_show_inventory)
def data_inspect(path: Path = typer.Argument(..., help="Dataset root folder."),
                 dataset: str = typer.Option("folder", "--dataset", "-d", help="Dataset plugin name."),
                 option: list[str] = typer.Option([], "--option", "-o", help="Extra plugin option KEY=VALUE (TOML value)."),
                 workers: Optional[int] = typer.Option(None, "--workers", min=1),
                 max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1),
                 as_json: bool = JsonOpt) -> dict[str, Any]:
    """Count images per class, sizes, modes and patients; list every skipped file with its reason."""
    from .stages.dataset import take_inventory

    cls = plugins.get("dataset", dataset)
    options = {"path": str(path), **_parse_options(option)}
    check_options(cls, options, f"options of dataset {dataset!r}")
    with progress_bar("scanning", None) as advance:
        scan = cls(**options).scan(None, progress=advance)
    with progress_bar("decoding", len(scan.records)) as advance:
        inv = take_inventory(scan, workers=workers, max_pixels=max_pixels, progress=advance)
    return {"dataset": dataset, "path": str(path), **inv.summary()}


def _show_probe(r: dict[str, Any]) -> None:
    table = Table(title=f"shortcut probe: {r['source']} ({r['n_images']} images, "
                        f"{'patient-grouped' if r['grouped'] else 'ungrouped'} cross-validation)")
    for col in ("target", "best single feature", "AUC [95 % CI]", "all (logistic)", "all (forest)", "input (forest)"):
        table.add_column(col)
    for target, t in r["targets"].items():
        if "features" not in t:
            table.add_row(target, t.get("note", "-"), "", "", "", "")
            continue
        best = max(t["features"], key=lambda f: t["features"][f]["value"] or 0.0)
        table.add_row(target, best, describe(t["features"][best]), describe(t["all"]["logistic"]),
                      describe(t["all"]["forest"]), describe(t.get("input", {}).get("forest")))
    console.print(table)
    flagged = r["flagged"]
    console.print(f"flagged (AUC >= {r['flag']}): " + (", ".join(
        f"{f['target']} by {f['feature']} {f['auc']:.2f}" for f in flagged) if flagged else "none"), highlight=False)
    console.print(f"features of {r['n_images']} images in {r['decode_seconds']} s, probe in {r['seconds']} s")


@data_app.command("probe")
@command(_show_probe)
def data_probe(source: Path = typer.Argument(..., help="A configuration file, or a run directory."),
               folds: Optional[int] = typer.Option(None, "--folds", min=2, help="Cross-validation folds (default: [probe] folds)."),
               workers: Optional[int] = typer.Option(None, "--workers", min=1),
               as_json: bool = JsonOpt) -> dict[str, Any]:
    """Shortcut probe: how well image size, format, mode, borders, intensity and corner marks
    alone predict each class and binary task (cross-validated AUC, flagged at >= 0.8)."""
    import time

    from .analysis.metrics import default_binary_tasks
    from .analysis.probe import probe
    from .config import build_plugin
    from .stages import probe as probe_stage
    from .stages.dataset import inventory_of

    start = time.perf_counter()
    if source.is_dir():
        rundir = RunDir(source)
        cfg = rundir.load_config()
        if not rundir.dataset_index.exists():
            raise ConfigError(f"{source} has no dataset.json yet; run `xaicxr run --until dataset --out {source}` first")
        classes, records = probe_stage.probed_records(rundir)
        features = probe_stage.file_features_of(rundir, records)
        probe_stage.add_input_features(rundir, features)
    else:
        cfg = load_config(source)
        table = cfg["dataset"]
        inv = inventory_of(build_plugin("dataset", table), None, workers or table.get("workers"),
                           table["max_pixels"], "dataset")
        classes, records, features = inv.classes, inv.records, inv.features
    decoded = time.perf_counter() - start
    kept = [r for r in records if r.id in features]
    result = probe([features[r.id] for r in kept], [r.label for r in kept], [r.patient for r in kept], classes,
                   cfg["binary"] or default_binary_tasks(classes), folds=folds or cfg["probe"]["folds"],
                   seed=cfg["split"]["seed"], flag=cfg["probe"]["flag"])
    return {"source": str(source), "decode_seconds": round(decoded, 3), **result}


# --------------------------------------------------------------------------- the pipeline


def _show_evaluation(rundir: RunDir) -> None:
    m = rundir.read_metrics()
    table = Table(title=f"test set ({m['test_set']}, n = {m['n_test']}): accuracy {m['accuracy']:.3f}, "
                        f"macro F1 {m['macro_f1']:.3f}")
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="right")
    for c, v in m["per_class"].items():
        table.add_row(c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"]))
    console.print(table)
    for task, b in m["binary"].items():
        lo, hi = b["ci95"]["auc"]
        console.print(f"{task}: AUC {b['auc']:.3f} [{lo:.3f}, {hi:.3f}], sensitivity {b['sensitivity']:.3f}, "
                      f"specificity {b['specificity']:.3f} at threshold {b['threshold']:.3f} ({b['threshold_from']})")


def _show_quality(rundir: RunDir) -> None:
    """Per explainer and lesion class: pointing game and lift next to the best uninformed map."""
    m = rundir.read_metrics()
    baselines = m.get("baselines", {})
    for explainer, per_class in m.get("per_image", {}).items():
        table = Table(title=f"{explainer}: per-image localisation (95 % intervals)")
        for col in ("class", "n", "pointing game", "best baseline", "skill", "energy lift", "lung energy"):
            table.add_column(col, justify="right")
        for cls, q in per_class.items():
            skill = q.get("skill", {}).get("pointing_game", {})
            best = skill.get("baseline")
            base = baselines.get(cls, {}).get(best, {}).get("pointing_game") if best else None
            table.add_row(cls, str(q["n"]), describe(q.get("pointing_game")),
                          f"{best}: {describe(base)}" if best else "-", describe(skill) if skill else "-",
                          describe(q.get("energy_lift")), describe(q.get("lung_energy")))
        console.print(table)
        sanity = m.get("sanity", {}).get(explainer)
        if sanity:
            console.print(f"randomisation: {sanity['summary']}", highlight=False)
    for cls, r in m.get("reliance", {}).items():
        if r["has_lesion"]:
            console.print(f"reliance {cls}: accuracy {describe(r['accuracy'])} -> {describe(r['accuracy_lesion_removed'])} "
                          f"without the lesion; relies on it: {'yes' if r['relies_on_lesion'] else 'no'}",
                          highlight=False)


def _show_run(summary: dict[str, Any]) -> None:
    rundir = RunDir(summary["run_dir"])
    console.print(f"[green]done[/] {rundir.root}: ran {', '.join(summary['stages_run']) or 'nothing'}"
                  f"; up to date: {', '.join(summary['stages_skipped']) or 'nothing'}")
    if rundir.config.exists() and rundir.load_config()["backbone"].get("weights") == "none":
        console.print("[yellow]note:[/] the backbone was trained from scratch (weights = \"none\"); "
                      "this is not the paper's ImageNet transfer setting (examples/paper.toml).")
    ds = summary.get("dataset", {})
    if ds:
        console.print(f"images: {ds['images']} {ds['counts']}; skipped files: {ds['skipped']} (skipped.json)")
    if rundir.metrics.exists() and "evaluate" in summary:
        _show_evaluation(rundir)
        _show_quality(rundir)
    if rundir.metrics.exists():
        from .analysis.verdict import run_verdict

        metrics = rundir.read_metrics()
        if any(metrics.get(key) for key in ("reliance", "region_reliance", "per_image", "probe")):
            console.print("[bold]verdict[/]")
            for line in run_verdict(metrics):
                console.print(f"  {line}", markup=False, highlight=False)
    report = summary.get("report", {}).get("report")
    if report:
        console.print(f"report: [bold]{report}[/]")


@app.command("run")
@command(_show_run)
def run_cmd(config: Optional[Path] = typer.Argument(None, help="Run configuration (TOML); default: the embedded phantom demo."),
            out: Path = typer.Option(..., "--out", "-o", help="Run directory."),
            until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage."),
            as_json: bool = JsonOpt) -> dict[str, Any]:
    """Run the pipeline (resuming from what the run directory already holds)."""
    from .pipeline import STAGE_NAMES, run_pipeline

    cfg = load_config(config)
    if config is None:
        console.print("[yellow]Embedded default:[/] synthetic phantom radiographs, not real patients.")
    if until is not None and until not in STAGE_NAMES:
        raise ConfigError(f"--until {until!r}: stages are {', '.join(STAGE_NAMES)}")
    return run_pipeline(cfg, out, until=until)


def _run_stage(stage: str, run_dir: Path, config: Optional[Path] = None,
               unsafe_load: bool = False, retrain: bool = True) -> dict[str, Any]:
    """One stage of a run directory (and whatever it needs first), forced to run; refused when
    that would train the model, unless ``retrain``."""
    from .pipeline import run_pipeline

    rundir = RunDir(run_dir)
    cfg = load_config(config) if config is not None else rundir.load_config()
    return run_pipeline(cfg, run_dir, until=stage, force=stage, unsafe_load=unsafe_load, retrain=retrain)


@app.command("train")
@command(lambda s: console.print(
    f"trained {s['train']['epochs_run']} epochs, best epoch {s['train']['best_epoch']} "
    f"(val loss {s['train']['best_val_loss']}): {RunDir(s['run_dir']).model}"))
def train_cmd(run_dir: Path = typer.Argument(..., help="Run directory."), config: Optional[Path] = ConfigOpt,
              as_json: bool = JsonOpt) -> dict[str, Any]:
    """(Re)train the model of a run directory (running the data stages first if needed)."""
    return _run_stage("train", run_dir, config)


@app.command("evaluate")
@command(lambda s: _show_evaluation(RunDir(s["run_dir"])))
def evaluate_cmd(run_dir: Path = typer.Argument(..., help="Run directory."), as_json: bool = JsonOpt,
                 unsafe_load: bool = UnsafeOpt, retrain: bool = RetrainOpt) -> dict[str, Any]:
    """Evaluate the trained model on the test set: accuracy, per class figures, binary tasks."""
    return _run_stage("evaluate", run_dir, unsafe_load=unsafe_load, retrain=retrain)


@app.command("explain")
@command(lambda r: console.print(f"heatmaps written to {r['store']}"))
def explain_cmd(run_dir: Path = typer.Argument(..., help="Run directory with a trained model."),
                explainer: str = typer.Option(..., "--explainer", "-e", help="Explainer plugin name."),
                layer: Optional[str] = typer.Option(None, "--layer", help="Target layer (default: the backbone's)."),
                split: str = typer.Option("test", "--split", help="test, val, train or all."),
                targets: str = typer.Option("true", "--targets", help="true, predicted or all (every class)."),
                target: Optional[str] = typer.Option(None, "--target", help="Score explained: logit, probability or binary:<task> (default: the explainer's own)."),
                batch_size: int = typer.Option(16, "--batch-size", min=1),
                shard: Optional[str] = typer.Option(None, "--shard", help="K/N: explain only the K-th of N parts "
                                                     "(default in a SLURM job array: its task's part)."),
                overwrite: bool = typer.Option(False, "--overwrite", help="Replace a store made with another model."),
                as_json: bool = JsonOpt, unsafe_load: bool = UnsafeOpt) -> dict[str, Any]:
    """Write heatmaps/<explainer>.h5 (<explainer>.<target>.h5 with --target) for a split of a run
    (resumes an interrupted one)."""
    from .config import check_target, resolve_entry
    from .executors import make_executor
    from .io.modelfile import load_model, model_sha256
    from .stages.explain import ExplainJob, explain_split

    rundir = RunDir(run_dir)
    cfg = rundir.load_config()
    spec = resolve_entry("explain", {"name": explainer, "split": split, "targets": targets,
                                     "batch_size": batch_size, **({"layer": layer} if layer else {}),
                                     **({"target": target} if target else {})},
                         "the command line")
    check_target(spec, cfg, "the command line")
    part = Shard.parse(shard) if shard is not None else Shard.from_slurm(os.environ)
    if shard is None and part is not None:
        console.print(f"shard {part.k}/{part.n} from the SLURM job array (SLURM_ARRAY_TASK_ID="
                      f"{os.environ['SLURM_ARRAY_TASK_ID']}, SLURM_ARRAY_TASK_COUNT={part.n}); "
                      "--shard K/N overrides it", highlight=False)
    model = load_model(rundir.model, unsafe=unsafe_load)
    from .stages import Run

    cache = Run(rundir, cfg).image_cache()  # decoded again if it went missing
    job = ExplainJob.from_spec(spec, rundir)
    lock = rundir.lock if part is None else rundir.heatmap_shard(job.store, part).with_suffix(".h5.lock")
    with RunLock(lock):  # shards run side by side, each shard once at a time
        with make_executor(cfg["run"]) as executor:
            path = explain_split(rundir, job, model,
                                 model_sha256(rundir.model), cache, overwrite=overwrite, shard=part,
                                 executor=executor, unsafe_load=unsafe_load)
    return {"store": str(path), "explainer": explainer, "split": split, "targets": targets,
            **({"target": target} if target else {}),
            **({"shard": f"{part.k}/{part.n}"} if part is not None else {})}


@app.command("merge-heatmaps")
@command(lambda r: console.print(f"merged {len(r['shards'])} shards into {r['store']}"))
def merge_heatmaps_cmd(run_dir: Path = typer.Argument(..., help="Run directory with shard stores."),
                       explainer: str = typer.Option(..., "--explainer", "-e"),
                       as_json: bool = JsonOpt) -> dict[str, Any]:
    """Combine shards/<explainer>.shard-K-of-N.h5 (from explain --shard) into heatmaps/<explainer>.h5
    (``-e`` is the store's name: ``gradcam.binary-covid-vs-rest`` for a store of a --target)."""
    from .io.heatmap_store import merge_stores

    rundir = RunDir(run_dir)
    parts = rundir.heatmap_shards(explainer)
    with RunLock(rundir.lock):
        path = merge_stores(parts, rundir.heatmaps(explainer))
    return {"store": str(path), "shards": [str(p) for p in parts]}


def _show_templates(result: dict[str, Any]) -> None:
    if "states" in result:
        console.print("aggregator states saved: " + ", ".join(result["states"]))
    elif "stages_run" in result:
        console.print("templates: " + ", ".join(result["templates"]["templates"]))
    else:
        console.print("templates merged from shards: " + ", ".join(p for ps in result["templates"].values() for p in ps))


@app.command("template")
@command(_show_templates)
def template_cmd(run_dir: Path = typer.Argument(..., help="Run directory with heatmaps."),
                 shard: Optional[str] = typer.Option(None, "--shard", help="K/N: only save the aggregator states of the K-th of N parts."),
                 merge_shards: bool = typer.Option(False, "--merge-shards", help="Merge saved shard states into the template files."),
                 as_json: bool = JsonOpt, unsafe_load: bool = UnsafeOpt,
                 retrain: bool = RetrainOpt) -> dict[str, Any]:
    """(Re)build the per-class templates; or, with --shard / --merge-shards, the templates of a
    run split over several processes or hosts."""
    from .stages.templates import build_shard_states, merge_shard_states

    rundir = RunDir(run_dir)
    if shard is not None:
        part = Shard.parse(shard)
        with RunLock(rundir.root / "shards" / f"templates.states-{part.tag}.lock"):  # each shard once at a time
            return {"states": [str(p) for p in build_shard_states(rundir, rundir.load_config(), part)]}
    if merge_shards:
        with RunLock(rundir.lock):
            return {"templates": merge_shard_states(rundir, rundir.load_config())}
    return _run_stage("templates", run_dir, unsafe_load=unsafe_load, retrain=retrain)


@app.command("quality")
@command(lambda s: _show_quality(RunDir(s["run_dir"])))
def quality_cmd(run_dir: Path = typer.Argument(..., help="Run directory with templates."), as_json: bool = JsonOpt,
                unsafe_load: bool = UnsafeOpt, retrain: bool = RetrainOpt) -> dict[str, Any]:
    """(Re)compute the quality figures: localisation against baselines, template figures,
    faithfulness, the randomisation test and the model's reliance on the lesion."""
    return _run_stage("quality", run_dir, unsafe_load=unsafe_load, retrain=retrain)


@app.command("report")
@command(lambda s: console.print(f"report: {s['report']['report']}"))
def report_cmd(run_dir: Path = typer.Argument(..., help="Run directory."), as_json: bool = JsonOpt,
               retrain: bool = RetrainOpt) -> dict[str, Any]:
    """(Re)write report/index.html."""
    return _run_stage("report", run_dir, retrain=retrain)


# --------------------------------------------------------------------------- beyond one run


def _show_detect(result: dict[str, Any]) -> None:
    for r in result["results"]:
        if "error" in r:
            console.print(f"[red]{escape(r['path'])}[/]: skipped: {escape(r['error'])}")
            continue
        lung = r["lung_energy"] if r["lung_energy"] is None else round(r["lung_energy"], 3)
        console.print(f"[bold]{escape(r['path'])}[/]: {r['prediction']} "
                      f"({r['probabilities'][r['prediction']]:.3f}); best template {r['best_template']}; "
                      f"lung energy {lung}; overlay {escape(r['overlay'])}")
        for task, b in r["binary"].items():
            for store, e in b.get("explained", {}).items():
                console.print(f"  {task} score {b['score']:.3f} ({'positive' if b['positive'] else 'negative'}): "
                              f"{store} best side template {e['best_template']}; overlay {escape(e['overlay'])}")


@app.command("detect")
@command(_show_detect)
def detect_cmd(run_dir: Path = typer.Argument(..., help="Run directory with a model and templates."),
               images: list[Path] = typer.Argument(..., help="PNG, JPEG, DICOM ... of any size."),
               explainer: Optional[str] = typer.Option(None, "--explainer", "-e"),
               out: Optional[Path] = typer.Option(None, "--out", help="Folder for overlay PNGs (default RUN_DIR/detect)."),
               as_json: bool = JsonOpt, unsafe_load: bool = UnsafeOpt) -> dict[str, Any]:
    """Classify and explain images, and match each heatmap against the class templates."""
    from .detect import detect

    return detect(run_dir, list(images), explainer=explainer, out=out, unsafe_load=unsafe_load)


def _show_compare(result: dict[str, Any]) -> None:
    from .compare import comparison_rows

    table = Table(title="templates across runs", caption="r: Pearson; self: each run's split halves (mean over "
                  "partitions, r stepped up to full size); in band: r within the self partition spread")
    for col in ("template", "class", "pair", "r", "SSIM", "self r", "self SSIM", "in band"):
        table.add_column(col, overflow="fold", justify="left" if col in ("template", "class", "pair") else "right")
    num = lambda v: "-" if v is None or v != v else f"{v:.3f}"  # noqa: E731
    for r in comparison_rows(result):
        within = {True: "yes", False: "[red]no[/]", None: "-"}[r["within_self_spread"]]
        table.add_row(r["template"], r["class"], escape(f"{r['a']} vs {r['b']}"), num(r["pearson"]), num(r["ssim"]),
                      f"{num(r['self_pearson_a'])} / {num(r['self_pearson_b'])}",
                      f"{num(r['self_ssim_a'])} / {num(r['self_ssim_b'])}", within)
    console.print(table)
    for key, entry in result["templates"].items():
        for name, shape in entry["resampled_from"].items():
            console.print(f"{key}: {escape(name)}'s templates ({shape[0]}x{shape[1]}) resampled to "
                          f"{entry['shape'][0]}x{entry['shape'][1]}", highlight=False)
        for cls, having in entry["not_compared"].items():
            console.print(f"{key}: class {cls} only in {escape(', '.join(having))}; not compared", highlight=False)
    for key, having in result["not_compared"].items():
        console.print(f"{key}: only in {escape(', '.join(having))}; not compared", highlight=False)
    for key, reason in result["skipped"].items():
        console.print(f"{key}: skipped: {reason}", highlight=False)
    console.print(f"compare.json and figures: [bold]{escape(result['out'])}[/]")


@app.command("compare")
@command(_show_compare)
def compare_cmd(runs: list[Path] = typer.Argument(..., help="Two or more run directories with templates."),
                out: Path = typer.Option(Path("compare"), "--out", "-o", help="Folder for compare.json and the figures."),
                partitions: int = typer.Option(10, "--partitions", min=1, help="Random split-half partitions per run for the self band."),
                seed: int = typer.Option(0, "--seed", help="Seed of the random partitions."),
                as_json: bool = JsonOpt) -> dict[str, Any]:
    """Compare the per-class templates of several runs (Pearson r, SSIM), next to each run's
    split-half band; write compare.json and one figure per template and class."""
    from .compare import compare_runs

    return compare_runs(runs, out, partitions=partitions, seed=seed)


def _show_study(table: dict[str, Any]) -> None:
    out = Path(table["out"])
    console.print((out / "summary.md").read_text(), markup=False, highlight=False)
    console.print(f"summary: {out / 'index.html'}")


@app.command("study")
@command(_show_study)
def study_cmd(study: Path = typer.Argument(..., help="Study file (TOML): a base config plus \\[matrix] or \\[\\[variants]]."),
              out: Path = typer.Option(..., "--out", "-o", help="Folder for the variants' run directories."),
              as_json: bool = JsonOpt) -> dict[str, Any]:
    """Run every variant of a study and write summary.csv/.json/.md and index.html."""
    from .study import run_study

    return run_study(study, out)


if __name__ == "__main__":
    app()
