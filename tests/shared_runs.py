"""Tiny pipeline configurations and the runs built from them, shared by the whole test session.

A tiny run trains a width-reduced VGG19 on 32 px phantoms; most pipeline tests only read what it
wrote, so each distinct (configuration, command) is built once per session and shared by every
test and every xdist worker that asks for it: keyed by a hash of the configuration text and the
command, built in place under a file lock (a run records its own paths, so it is not moved)
and complete once its ``summary.json`` exists. A test that changes a run works
on :func:`copy_run`. Configurations come from :func:`tiny_config`: one set of dataset, split,
backbone and train tables, so tests that differ only in what they explain or measure can start
from one trained model (:meth:`SharedRuns.trained`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import tomli_w

TINY_TABLES: dict[str, Any] = {
    "dataset": {"name": "phantom", "n_per_class": 12, "size": 32, "seed": 5, "difficulty": "easy"},
    "split": {"test": 0.25, "val": 0.25},
    "backbone": {"name": "vgg19", "weights": "none", "width": 0.125, "batchnorm": True, "input_size": 32,
                 "dense": [8], "dropout": 0.0},
    "train": {"epochs": 2, "batch_size": 16},
    "explain": [{"name": "gradcam", "layer": "block4_conv4"}],
    "aggregate": [{"name": "mean"}],
}
"""The shared tiny run: 12 phantoms per class at 32 px, half of them trained on."""


def tiny_config(**tables: Any) -> str:
    """The tiny run's TOML with ``tables`` changed (:func:`with_tables`)."""
    return with_tables(tomli_w.dumps(TINY_TABLES), **tables)


def with_tables(config: str, **tables: Any) -> str:
    """``config`` with ``tables`` changed: a dict updates that table's keys (a key set to None is
    removed), a list replaces an array of tables, None leaves the table out."""
    import tomllib

    parsed = tomllib.loads(config)
    for name, value in tables.items():
        if value is None:
            parsed.pop(name, None)
        elif isinstance(value, dict) and isinstance(parsed.get(name), dict):
            parsed[name] = {k: v for k, v in {**parsed[name], **value}.items() if v is not None}
        else:
            parsed[name] = value
    return tomli_w.dumps(parsed)


def tiny_study(matrix: dict[str, Any] | None = None, **tables: Any) -> str:
    """A study whose ``[base]`` is the tiny run (``tables`` as in :func:`tiny_config`)."""
    import tomllib

    study: dict[str, Any] = {"base": tomllib.loads(tiny_config(**tables))}
    if matrix is not None:
        study["matrix"] = matrix
    return tomli_w.dumps(study)


def copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target, symlinks=True)
    return target


class SharedRuns:
    """Runs and studies under ``root``, one per (configuration, command)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def run(self, config: str, *args: str) -> Path:
        """The run directory of ``xaicxr run CONFIG --out DIR --json *args``; its summary (the
        command's JSON) is ``summary.json`` beside it: :meth:`summary`."""
        return self._build("run", config, args) / "run"

    def study(self, study: str, *args: str) -> Path:
        """The output folder of ``xaicxr study STUDY --out DIR --json *args``."""
        return self._build("study", study, args) / "run"

    def trained(self, config: str) -> Path:
        """``config``'s run up to and including training."""
        return self.run(config, "--until", "train")

    @staticmethod
    def summary(run: Path) -> dict[str, Any]:
        return json.loads((run.parent / "summary.json").read_text())

    @staticmethod
    def config(run: Path) -> Path:
        return run.parent / "config.toml"

    def _build(self, command: str, text: str, args: tuple[str, ...]) -> Path:
        from typer.testing import CliRunner

        from xaicxr.cli import app

        key = hashlib.sha256(json.dumps([command, text, args]).encode()).hexdigest()[:16]
        final = self.root / key
        with open(self.root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (final / "summary.json").exists():
                return final
            shutil.rmtree(final, ignore_errors=True)  # a build that died half-way
            final.mkdir()
            config = final / "config.toml"
            config.write_text(text)
            result = CliRunner().invoke(app, [command, str(config), "--out", str(final / "run"), "--json", *args])
            assert result.exit_code == 0, f"shared {command} failed:\n{result.stderr}\n{result.stdout}"
            (final / "summary.json").write_text(result.stdout)  # written last: the run is complete
            return final


def seed_first_variant(study: Path, run: Path, out: Path) -> Path:
    """Copy ``run`` (of the same dataset, split, backbone and train tables) to where ``study``'s
    first variant runs under ``out``: the study resumes it after training, as it resumes any
    variant it finds."""
    from xaicxr.study import load_study

    _, variants = load_study(study)
    return copy_run(run, out / variants[0][0])


def h5_contents(path: Path) -> dict[str, Any]:
    """Every dataset's bytes (strings as a list), dtype, shape and attributes, every group's
    attributes and the root's: what "the same file" means when two executors wrote it."""
    import h5py

    found: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            data = obj[()]
            content = data.tolist() if data.dtype == object else data.tobytes()
            found[name] = (content, str(obj.dtype), obj.shape, sorted((k, str(v)) for k, v in obj.attrs.items()))
        else:
            found[name] = sorted((k, str(v)) for k, v in obj.attrs.items())

    with h5py.File(path, "r") as h5:
        h5.visititems(visit)
        found["/"] = sorted((k, str(v)) for k, v in h5.attrs.items())
    return found


def session_root(tmp_path_factory: Any) -> Path:
    """A folder every xdist worker of this session sees (and only this session)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / "shared-runs"


LIGHT = tiny_config(explain=[{"name": "gradcam", "layer": "block4_conv4", "split": "all", "batch_size": 4}],
                    aggregate=[{"name": "mean"}, {"name": "median"}, {"name": "std"}],
                    quality={"faithfulness": False, "randomisation": False, "reliance": False, "template_resamples": 100},
                    probe={"enabled": False})
"""Every image explained in batches of 4, three templates, no model-pass quality figures and no
shortcut probe (the FULL run and test_probe.py have it): the run that compare, hardening,
executor and study tests read or copy."""

FULL = tiny_config(
    dataset={"n_per_class": 16, "size": 48}, backbone={"input_size": 48, "dense": [16]},
    explain=[{"name": "gradcam", "layer": "block4_conv4"}, {"name": "layercam", "layer": "block3_conv4"},
             {"name": "gradcam", "layer": "block4_conv4", "target": "binary:covid-vs-rest"}],
    aggregate=[{"name": "mean"}, {"name": "median"}],
    quality={"randomisation_images": 4, "randomisation_draws": 2, "fractions": 4, "faithfulness_images": 3,
             "random_regions": 2, "region_images": 4, "template_resamples": 100})
"""Every stage and every quality figure end to end, on a barely trained model (2 epochs, 32
training phantoms): the checks are of the contract, not of what the figures say."""

STUDY = tiny_study(
    {"explain": [[{"name": "gradcam", "layer": "block4_conv4", "split": "all"}],
                 [{"name": "gradcam", "layer": "block3_conv4", "split": "all"}]]},
    quality={"randomisation_images": 4, "randomisation_draws": 1, "fills": ["blur"], "fractions": 5,
             "faithfulness_images": 4, "region_fills": ["blur"], "random_regions": 2, "region_images": 4,
             "template_resamples": 100},
    probe={"enabled": False})
"""Two variants that share their model and differ in the layer explained."""
