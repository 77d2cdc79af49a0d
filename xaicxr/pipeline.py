"""``xaicxr run``: the stage table, the configuration hash of each stage, and resuming.

Every stage (:mod:`xaicxr.stages`) declares the config tables it depends on (``TABLES``: a
table, or one key as ``"table.key"``; ``IGNORED``: keys of those tables that do not change its
result). Its hash chains those with the hash of the stage before it and is kept in
``stages.json``; a stage whose outputs exist and whose hash matches is skipped, and a changed
stage and every stage after it run again.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from .config import dump_config
from .executors import check_available
from .io import atomic
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
                 force: str | None = None, unsafe_load: bool = False) -> dict[str, Any]:
    """Run every stage (or skip it when its outputs are current); return a summary.

    ``until`` stops after that stage; ``force`` reruns that stage (and so everything after it).
    """
    check_available(cfg.get("run"))
    run = Run(RunDir(run_dir), cfg, unsafe_load=unsafe_load)
    run.dir.root.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run.dir.config, dump_config(cfg))
    state = _read_state(run.dir)
    hashes = stage_hashes(cfg)
    try:
        timings, ran, skipped = _run_stages(run, state, hashes, until, force)
    finally:
        run.close()
    if run.dir.metrics.exists():
        run.dir.update_metrics({"timings_s": timings})
    return {"run_dir": str(run.dir.root), "stages_run": ran, "stages_skipped": skipped,
            "timings_s": timings, **run.results}


def _run_stages(run: Run, state: dict[str, Any], hashes: dict[str, str], until: str | None,
                force: str | None) -> tuple[dict[str, float], list[str], list[str]]:
    cfg = run.cfg
    stale = False
    timings, ran, skipped = {}, [], []
    for stage in STAGES:
        done = state.get(stage.NAME, {})
        current = (not stale and stage.NAME != force and done.get("hash") == hashes[stage.NAME]
                   and all(p.exists() for p in stage.outputs(cfg, run.dir)))
        if current:
            skipped.append(stage.NAME)
            run.results[stage.NAME] = done.get("result", {})
            timings[stage.NAME] = done.get("seconds", 0.0)
        else:
            stale = True
            console.print(f"[bold cyan]stage[/] {stage.NAME}")
            start = time.perf_counter()
            result = stage.run(run)
            seconds = round(time.perf_counter() - start, 3)
            state[stage.NAME] = {"hash": hashes[stage.NAME], "seconds": seconds, "result": result}
            atomic.write_json(run.dir.stages, state)
            run.results[stage.NAME] = result
            timings[stage.NAME] = seconds
            ran.append(stage.NAME)
        if stage.NAME == until:
            break
    return timings, ran, skipped


def _read_state(rundir: RunDir) -> dict[str, Any]:
    try:
        state = atomic.read_json(rundir.stages)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}
