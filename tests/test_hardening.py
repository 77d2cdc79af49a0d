"""Hostile but realistic use of every command (issue 14 part B): variant names that escape
``--out``, file names that are not UTF-8, corrupted outputs, two processes on one run directory,
an interrupted explain, failed runs, bad training values, broken model files, ``detect`` edge
cases, and the error path of every command."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xaicxr.cli import app

runner = CliRunner()

TINY = """
[dataset]
name = "phantom"
n_per_class = 8
size = 32
seed = 5
difficulty = "easy"
[split]
test = 0.25
val = 0.25
[backbone]
name = "vgg19"
weights = "none"
width = 0.125
batchnorm = true
input_size = 32
dense = [8]
[train]
epochs = 1
batch_size = 16
[[explain]]
name = "gradcam"
layer = "block4_conv4"
batch_size = 4
[[aggregate]]
name = "mean"
[quality]
faithfulness = false
randomisation = false
reliance = false
"""


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(result, code: int = 2) -> str:
    """The error of a failed command: exit ``code``, one line on stderr, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny finished run (explain in batches of 4), copied by the tests that change it."""
    root = tmp_path_factory.mktemp("hardening")
    config = root / "tiny.toml"
    config.write_text(TINY)
    out = root / "run"
    result = _invoke("run", config, "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    return config, out


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


# --------------------------------------------------------------------------- 1. study names


@pytest.mark.parametrize("name", ["../escaped", "/tmp/absolute", "a/b", "javascript:alert(1)", "..", ".hidden",
                                  "a\\b", ""])
def test_study_variant_names_must_be_plain(tmp_path, name):
    study = tmp_path / "study.toml"
    study.write_text(f'[[variants]]\nname = {json.dumps(name)}\nset = {{ "train.epochs" = 1 }}\n')
    result = _invoke("study", study, "--out", tmp_path / "out", "--json")
    assert "is not a plain name" in _one_line_error(result)
    assert json.loads(result.stdout)["error"]["type"] == "ConfigError"
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped").exists()
