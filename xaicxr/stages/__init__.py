"""The stages of a run, one module each, all of the same shape::

    NAME = "train"                          # ``xaicxr run --until train``
    TABLES = ("dataset", "split", ...)      # config tables its result depends on
    def outputs(cfg, rundir) -> list[Path]  # the files that make it done
    def run(run: Run) -> dict               # do the work, write the files, return a summary

:mod:`xaicxr.pipeline` chains them in the order dataset, split, train, evaluate, explain,
templates, quality, probe, report; :class:`Run` is what each one is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..rundir import RunDir


@dataclass
class Run:
    """A run directory, its resolved configuration, and what is shared between its stages: the
    trained model is loaded once, however many stages use it."""

    dir: RunDir
    cfg: dict[str, Any]
    unsafe_load: bool = False
    results: dict[str, Any] = field(default_factory=dict)
    _model: Any = None
    _model_sha256: str | None = None
    _executor: Any = None
    _jobs: list[Any] | None = None
    _image_cache: Any = None

    def model(self) -> Any:
        if self._model is None:
            from ..io.modelfile import load_model

            self._model = load_model(self.dir.model, unsafe=self.unsafe_load)
        return self._model

    def model_sha256(self) -> str:
        if self._model_sha256 is None:
            from ..io.modelfile import model_sha256

            self._model_sha256 = model_sha256(self.dir.model)
        return self._model_sha256

    def executor(self) -> Any:
        """Where the explain and templates stages, and the quality stage's model passes, compute
        (``[run] executor``), started on first use and kept for the rest of the run; :meth:`close`
        stops it."""
        if self._executor is None:
            from ..executors import make_executor

            self._executor = make_executor(self.cfg.get("run"))
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def forget_model(self, replaced_by: Any = None) -> None:
        """After training wrote a new ``model.keras``: the stages after it use ``replaced_by``
        (the model just saved, still in memory) or load the file."""
        self._model_sha256 = self._jobs = self._image_cache = None
        self._model = replaced_by

    def jobs(self) -> list[Any]:
        """The ``[[explain]]`` entries, each resolved once into an
        :class:`~xaicxr.stages.explain.ExplainJob` for this run's classes, binary tasks (with
        their thresholds: made after the evaluate stage) and default layer."""
        if self._jobs is None:
            from .explain import ExplainJob

            self._jobs = [ExplainJob.from_spec(spec, self.dir) for spec in self.cfg["explain"]]
        return self._jobs

    def image_cache(self) -> Any:
        """The decoded images at the model's input size, resize policy and mode (``train.json``).
        A cache that is missing or was made for another split is decoded again (it is derived
        from the split and the files alone), rather than failing the stage that needs it."""
        from ..progress import console

        info = self.dir.read_train_info()
        size = int(info["input_size"])
        path = self.dir.image_cache(size)
        if self._image_cache is not None and self._image_cache.path == path and path.is_file():
            return self._image_cache  # checked once per run: every later stage reads the same file
        if not path.is_file():
            console.print(f"note: {path.relative_to(self.dir.root)} is missing; decoding the images again")
        self._image_cache, _ = self.decode_images(size, info.get("resize", "pad"), info.get("mode"))
        return self._image_cache

    def decode_images(self, size: int, resize: str, mode: str | None) -> tuple[Any, list[Any]]:
        """Every split image decoded at ``size`` by the ``resize`` policy and ``mode`` into the
        image cache (an existing one made the same way is reused): ``(cache, files that no
        longer decode)``."""
        from ..io.imagecache import build_image_cache

        classes, records, external = self.dir.records()
        dataset = self.cfg["dataset"]
        return build_image_cache(self.dir.image_cache(size), self.dir.read_split(), records + external, classes,
                                 size, workers=dataset.get("workers"), max_pixels=dataset["max_pixels"],
                                 resize=resize, mode=mode)
