"""The run directory: the path of every file a run writes, shard naming and discovery, and the
JSON files a stage reads back. No other module builds a run-directory path by hand.

    RUN_DIR/config.toml  dataset.json  skipped.json  split.json  model.keras  train.json
            predictions.h5  metrics.json  quality.h5  probe.json  stages.json  xaicxr.lock
            heatmaps/<explainer>.h5            templates/<explainer>-<aggregator>.h5
            shards/<explainer>.shard-K-of-N.h5  shards/<explainer>.states-K-of-N.h5
            cache/images-<size>.h5  cache/features-<key>.h5  data/  report/index.html
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, DataError, StoreError
from .io import atomic
from .plugins.dataset import Record


@dataclass(frozen=True)
class Shard:
    """The ``k``-th of ``n`` contiguous, near-equal parts of a list of rows (0 <= k < n)."""

    k: int
    n: int

    def __post_init__(self) -> None:
        if not (self.n >= 1 and 0 <= self.k < self.n):
            raise ConfigError(f"shard must be K/N with 0 <= K < N, got {self.k}/{self.n}")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        k, sep, n = text.partition("/")
        if not (sep and k.isdigit() and n.isdigit()):
            raise ConfigError(f"--shard {text!r}: expected K/N with 0 <= K < N")
        return cls(int(k), int(n))

    @classmethod
    def from_slurm(cls, env: Mapping[str, str]) -> "Shard | None":
        """This task's part of a SLURM job array (``sbatch --array=0-3``): K is the task's
        position (``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP``), N
        is ``SLURM_ARRAY_TASK_COUNT``; None outside an array job."""
        if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
            return None
        names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
                 "SLURM_ARRAY_TASK_STEP")
        defaults = {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "1"}
        try:
            task, count, first, step = (int(env.get(name, defaults.get(name, ""))) for name in names)
        except ValueError:
            raise ConfigError("the SLURM_ARRAY_TASK_* variables are not integers: "
                              + ", ".join(f"{n}={env.get(n)!r}" for n in names if n in env)) from None
        k, off = divmod(task - first, step) if step > 0 else (-1, 0)
        if off or not 0 <= k < count:
            raise ConfigError(f"SLURM array task {task} (min {first}, step {step}, count {count}) is not "
                              "one of N evenly spaced tasks; use --array=0-(N-1) or pass --shard K/N")
        return cls(k, count)

    def bounds(self, total: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of this shard out of ``total``."""
        return self.k * total // self.n, (self.k + 1) * total // self.n

    @property
    def tag(self) -> str:
        return f"{self.k}-of-{self.n}"


RUN_RELATIVE = "run-relative"
"""``dataset.json["paths"]``: relative record paths are relative to the run directory (older runs
kept them relative to the folder the run was started from)."""


class RunDir:
    """Paths and JSON files of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # ---- the files of the stages, in order
    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def dataset_index(self) -> Path:
        return self.root / "dataset.json"

    @property
    def skipped(self) -> Path:
        return self.root / "skipped.json"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def model(self) -> Path:
        return self.root / "model.keras"

    @property
    def train_info(self) -> Path:
        return self.root / "train.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.h5"

    @property
    def probe(self) -> Path:
        return self.root / "probe.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def quality(self) -> Path:
        """Per-image quality scores and deletion/insertion curves (the quality stage)."""
        return self.root / "quality.h5"

    @property
    def stages(self) -> Path:
        return self.root / "stages.json"

    @property
    def lock(self) -> Path:
        """Held by the process working in the run directory (:mod:`xaicxr.io.runlock`)."""
        return self.root / "xaicxr.lock"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report(self) -> Path:
        return self.report_dir / "index.html"

    @property
    def data_dir(self) -> Path:
        """Where a dataset plugin may generate or cache files (phantoms)."""
        return self.root / "data"

    def image_cache(self, size: int) -> Path:
        return self.root / "cache" / f"images-{size}.h5"

    def feature_cache(self, key: str) -> Path:
        return self.root / "cache" / f"features-{key}.h5"

    def heatmaps(self, explainer: str) -> Path:
        return self.root / "heatmaps" / f"{explainer}.h5"

    def template(self, explainer: str, aggregator: str) -> Path:
        return self.root / "templates" / f"{explainer}-{aggregator}.h5"

    def template_files(self) -> list[Path]:
        """Every finished ``templates/*.h5`` of the run, sorted by name."""
        return sorted((self.root / "templates").glob("*.h5"))

    # ---- shards (explain --shard, template --shard)
    def heatmap_shard(self, explainer: str, shard: Shard) -> Path:
        return self.root / "shards" / f"{explainer}.shard-{shard.tag}.h5"

    def template_states(self, explainer: str, shard: Shard) -> Path:
        return self.root / "shards" / f"{explainer}.states-{shard.tag}.h5"

    def heatmap_shards(self, explainer: str) -> list[Path]:
        """Every heatmap shard of ``explainer``, in order; an error if one is missing."""
        return self._all_shards(explainer, "shard", f"xaicxr explain RUN_DIR -e {explainer} --shard K/N")

    def template_state_shards(self, explainer: str) -> list[Path]:
        """Every template-state shard of ``explainer``, in order; an error if one is missing."""
        return self._all_shards(explainer, "states", "xaicxr template RUN_DIR --shard K/N")

    def _all_shards(self, explainer: str, kind: str, command: str) -> list[Path]:
        pattern = re.compile(rf"{re.escape(explainer)}\.{kind}-(\d+)-of-(\d+)\.h5")
        found = {}
        for path in sorted((self.root / "shards").glob(f"{explainer}.{kind}-*-of-*.h5")):
            match = pattern.fullmatch(path.name)
            if match:
                found[Shard(int(match.group(1)), int(match.group(2)))] = path
        if not found:
            raise StoreError(f"no shards/{explainer}.{kind}-K-of-N.h5 in {self.root}; run `{command}` first")
        counts = sorted({s.n for s in found})
        if len(counts) != 1:
            raise StoreError(f"the {kind} files of {explainer} disagree on the number of shards: {counts}")
        n = counts[0]
        missing = [k for k in range(n) if Shard(k, n) not in found]
        if missing:
            raise StoreError(f"{kind} {missing[0]}/{n} of {explainer} is missing "
                             f"({command.replace('K/N', f'{missing[0]}/{n}')})")
        return [found[Shard(k, n)] for k in range(n)]

    # ---- JSON files read back by later stages
    def load_config(self) -> dict[str, Any]:
        """The resolved configuration this run directory was made with."""
        from .config import load_config

        if not self.config.is_file():
            raise DataError(f"{self.root} is not a run directory (no config.toml); start one with "
                            f"`xaicxr run [CONFIG] --out {self.root}`")
        return load_config(self.config, relative_to=Path.cwd())  # runs before absolute paths: as then

    def records(self) -> tuple[list[str], list[Record], list[Record]]:
        """``(classes, records, external test records)`` of ``dataset.json``; files inside the
        run directory (generated phantoms) are found from wherever it now is."""
        raw = atomic.read_json(self.dataset_index)
        inside = raw.get("paths") == RUN_RELATIVE

        def record(d: dict[str, Any]) -> Record:
            if inside:
                d = {**d, **{k: str(self.root / d[k]) for k in Record._PATHS
                             if d.get(k) and not Path(d[k]).is_absolute()}}
            return Record.from_json(d)

        return raw["classes"], [record(r) for r in raw["records"]], [record(r) for r in raw["external_test"]]

    def portable(self, record: Record) -> dict[str, Any]:
        """``record`` as ``dataset.json`` keeps it: a file inside the run directory by its path
        relative to the run (``dataset.json`` then says ``"paths": "run-relative"``), so a run
        used from another folder, or copied, reads its own files; any other file absolute."""
        out = record.to_json()
        root = self.root.resolve()
        for key in Record._PATHS:
            if out.get(key):
                path = Path(out[key]).resolve()
                out[key] = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        return out

    def read_split(self) -> dict[str, Any]:
        return atomic.read_json(self.split)

    def read_train_info(self) -> dict[str, Any]:
        return atomic.read_json(self.train_info)

    def read_metrics(self) -> dict[str, Any]:
        return atomic.read_json(self.metrics)

    def update_metrics(self, values: dict[str, Any]) -> dict[str, Any]:
        """Merge ``values`` into ``metrics.json``: each stage owns its own keys."""
        return atomic.update_json(self.metrics, values)
