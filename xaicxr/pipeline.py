"""``xaicxr run``: the stage table, the configuration hash of each stage, and resuming.

Every stage (:mod:`xaicxr.stages`) declares the config tables it depends on (``TABLES``: a
table, or one key as ``"table.key"``; ``IGNORED``: keys of those tables that do not change its
result). Its hash chains those with the hash of the stage before it and is kept in
``stages.json``; a stage whose outputs exist and whose hash matches is skipped, and a changed
stage and every stage after it run again. Outputs are verified before a stage is called up to
date: a checksum per file is kept in ``stages.json`` too (see :func:`_plan`).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from .config import dump_config
from .errors import ModelFileError
from .executors import check_available
from .io import atomic, verify
from .io.runlock import RunLock
from .progress import console
from .rundir import RunDir
from .stages import Run, dataset, evaluate, explain, probe, quality, report, split, templates, train

STAGES = (dataset, split, train, evaluate, explain, templates, quality, probe, report)
STAGE_NAMES = tuple(stage.NAME for stage in STAGES)


def config_hash(cfg: dict[str, Any], tables: tuple[str, ...], ignored: tuple[str, ...] = ()) -> str:
    """A digest of the ``tables`` (or ``"table.key"`` entries) of ``cfg`` without the ``ignored``
    ``"table.key"`` entries. A ``"table.key"`` left unset (an optional key without a default) is
    left out, so adding such a key to a stage keeps the hashes of the runs that do not set it."""
    picked: dict[str, Any] = {}
    for name in tables:
        table, _, key = name.partition(".")
        value = cfg.get(table)
        if key:
            if key in (value or {}):
                picked[name] = value[key]
        elif isinstance(value, dict):
            picked[name] = {k: v for k, v in value.items() if f"{table}.{k}" not in ignored}
        else:
            picked[name] = value
    blob = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_hashes(cfg: dict[str, Any]) -> dict[str, str]:
    """The chained hash of every stage for ``cfg``."""
    hashes, digest = {}, ""
    for stage in STAGES:
        digest = hashes[stage.NAME] = config_hash({**cfg, "upstream": digest}, ("upstream", *stage.TABLES),
                                                  getattr(stage, "IGNORED", ()))
    return hashes


def run_pipeline(cfg: dict[str, Any], run_dir: str | Path, *, until: str | None = None,
                 force: str | None = None, unsafe_load: bool = False,
                 retrain: bool = True) -> dict[str, Any]:
    """Run every stage (or skip it when its outputs are current); return a summary.

    ``until`` stops after that stage; ``force`` reruns that stage (and so everything after it).
    ``retrain=False`` refuses (before any work) when the model would have to be trained. The
    run directory is locked for the duration (:mod:`xaicxr.io.runlock`), and ``config.toml``
    is written only once every stage asked for has succeeded, so a failed run leaves the
    configuration that describes the directory's outputs.
    """
    check_available(cfg.get("run"))
    rundir = RunDir(run_dir)
    rundir.root.mkdir(parents=True, exist_ok=True)
    with RunLock(rundir.lock):
        run = Run(rundir, cfg, unsafe_load=unsafe_load)
        try:
            timings, ran, skipped = _run_stages(run, until, force, retrain)
        finally:
            run.close()
        if run.dir.metrics.exists():
            run.dir.update_metrics({"timings_s": timings})
        atomic.write_text(run.dir.config, dump_config(cfg))
    return {"run_dir": str(run.dir.root), "stages_run": ran, "stages_skipped": skipped,
            "timings_s": timings, **run.results}


def _run_stages(run: Run, until: str | None, force: str | None,
                retrain: bool) -> tuple[dict[str, float], list[str], list[str]]:
    cfg = run.cfg
    state = _read_state(run.dir)
    hashes = stage_hashes(cfg)
    stages = STAGES[:STAGE_NAMES.index(until) + 1] if until else STAGES
    plan, refresh = _plan(stages, cfg, run.dir, state, hashes, force)
    if not retrain and "train" in plan:
        why = plan["train"] or ("no model.keras" if not run.dir.model.exists() else
                                "the stages before it must run again")
        raise ModelFileError(f"{run.dir.root} has no usable trained model ({why}); train it "
                             f"first (xaicxr train {run.dir.root}) or pass --retrain")
    timings, ran, skipped = {}, [], []
    for stage in stages:
        done = state.get(stage.NAME, {})
        if stage.NAME not in plan:
            if stage.NAME in refresh:
                done["outputs"] = _digests(stage, cfg, run.dir)
                atomic.write_json(run.dir.stages, state)
            skipped.append(stage.NAME)
            run.results[stage.NAME] = done.get("result", {})
            timings[stage.NAME] = done.get("seconds", 0.0)
            continue
        reason = plan[stage.NAME]
        console.print(f"[bold cyan]stage[/] {stage.NAME}" + (f" ({escape(reason)})" if reason else ""))
        start = time.perf_counter()
        result = stage.run(run)
        seconds = round(time.perf_counter() - start, 3)
        state[stage.NAME] = {"hash": hashes[stage.NAME], "seconds": seconds, "result": result,
                             "outputs": _digests(stage, cfg, run.dir)}
        atomic.write_json(run.dir.stages, state)
        run.results[stage.NAME] = result
        timings[stage.NAME] = seconds
        ran.append(stage.NAME)
    return timings, ran, skipped


def _plan(stages: tuple, cfg: dict[str, Any], rundir: RunDir, state: dict[str, Any],
          hashes: dict[str, str], force: str | None) -> tuple[dict[str, str], set[str]]:
    """``({stage: why it runs}, {stages whose checksums must be recorded again})``.

    The stages that run are the first stale one and every one after it. A stage is current when
    its hash matches and its outputs are usable: a file whose checksum matches the one in
    ``stages.json`` is what the stage wrote; one that differs (or has no checksum yet) is read
    in full (:func:`xaicxr.io.verify.problem`). A corrupt file is removed, so that its stage
    writes it anew; a sound one was changed on purpose (``merge-heatmaps``, ``xaicxr explain
    --overwrite``) and is kept, its new checksum recorded."""
    plan: dict[str, str] = {}
    refresh: set[str] = set()
    upstream_changed = ""
    for stage in stages:
        done = state.get(stage.NAME, {})
        if plan or stage.NAME == force:
            plan[stage.NAME] = ""
        elif upstream_changed:
            plan[stage.NAME] = upstream_changed
        elif done.get("hash") != hashes[stage.NAME]:
            plan[stage.NAME] = _why_changed(stage.NAME, cfg, done)
        else:
            reason, changed = _outputs_problem(stage, cfg, rundir, done.get("outputs"))
            if reason is None and hasattr(stage, "sources_changed"):
                reason = stage.sources_changed(cfg, rundir, done)
            if reason is not None:
                plan[stage.NAME] = reason
            elif changed:
                refresh.add(stage.NAME)
                if getattr(stage, "INVALIDATES_LATER", False):
                    upstream_changed = (f"the {stage.NAME} stage's outputs were replaced (a sound file, kept): "
                                        "what depends on them is made again")
    return plan, refresh


def _why_changed(name: str, cfg: dict[str, Any], done: dict[str, Any]) -> str:
    """Why a stage whose hash changed runs again: the configuration, or the imported model file."""
    if not done:
        return ""
    recorded = done.get("result", {}).get("model_sha256")
    current = cfg.get("model", {}).get("sha256")
    if name == "train" and recorded and current and recorded != current:
        return f"the model file changed (sha256 {recorded[:12]}… -> {current[:12]}…): imported again"
    return "configuration changed"


def _outputs_problem(stage: Any, cfg: dict[str, Any], rundir: RunDir,
                     recorded: dict[str, str] | None) -> tuple[str | None, bool]:
    """(Why ``stage`` must run again or None, whether a sound output differs from its checksum)."""
    changed = False
    for path in stage.outputs(cfg, rundir):
        name = _relative(path, rundir)
        if not path.exists():
            return f"{name} is missing", changed
        shared = path in _shared_files(rundir)
        checksum = None if shared else (recorded or {}).get(name)
        if checksum is not None and checksum == verify.file_digest(path):
            continue
        trouble = verify.problem(path) or (stage.output_problem(path, rundir)
                                           if hasattr(stage, "output_problem") else None)
        if trouble is not None:
            console.print(f"[yellow]warning:[/] {name} is corrupt ({escape(trouble)}); removing it")
            path.unlink()
            return f"{name} was corrupt", changed
        if not shared:
            changed = True
            if checksum is not None:
                console.print(f"note: {name} changed since the {stage.NAME} stage wrote it; it reads "
                              "back in full, so it is kept")
    return None, changed


def _digests(stage: Any, cfg: dict[str, Any], rundir: RunDir) -> dict[str, str]:
    return {_relative(p, rundir): verify.file_digest(p) for p in stage.outputs(cfg, rundir)
            if p.is_file() and p not in _shared_files(rundir)}


def _shared_files(rundir: RunDir) -> tuple[Path, ...]:
    """Outputs that later stages update too (each owns its keys): checked to parse, not by
    checksum."""
    return rundir.metrics, rundir.skipped


def _relative(path: Path, rundir: RunDir) -> str:
    return path.relative_to(rundir.root).as_posix()


def _read_state(rundir: RunDir) -> dict[str, Any]:
    try:
        state = atomic.read_json(rundir.stages)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}
