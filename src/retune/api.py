"""The documented Python API; the ``retune`` command is a thin layer over these functions.

>>> import retune
>>> run = retune.train({"data": {"csv": "labels.csv"}, "store": "stores/nih"}, out="runs/nih")
>>> run.metrics["mean_auroc"], run.metrics["mean_auroc_ci"]          # test split, patient-bootstrap CI
>>> run = retune.load_run("runs/nih")
>>> run.predict(["new.png"])                                         # DataFrame: image + one column per class
>>> run.evaluate("other_site.csv")["overlap"]                         # leakage guard: images seen in training
>>> results = retune.run_scenario("configs/nih-class-incremental.yaml", out="results/nih-class")

Configs may be given as the pydantic model, a dict of its fields or a YAML file; every value is validated
(one ``ConfigError`` line naming the field). New images are embedded in memory unless ``cache=True``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from retune.config import TrainConfig, load_yaml_config, parse_config
from retune.errors import ConfigError
from retune.evaluation.metrics import DEFAULT_MIN_POSITIVES

ConfigLike = Any  # a pydantic config, a dict of its fields, or the path of a YAML file


def as_config(config: ConfigLike, model: type) -> Any:
    """``config`` validated into ``model``: a model instance as it is, a dict or a YAML path parsed."""
    if isinstance(config, model):
        return config
    if isinstance(config, (str, Path)):
        return load_yaml_config(config, model)
    if isinstance(config, dict):
        return parse_config(config, model, "config")
    raise ConfigError(f"config must be a {model.__name__}, a dict or a YAML path, not {type(config).__name__}")


class Run:
    """A trained run directory (``retune train`` or ``retune peft run``): its metrics, and scoring of new images."""

    def __init__(
        self, path: str | Path, store: str | Path | None = None, device: str | None = None, cache: bool = False
    ) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ConfigError(f"{self.path}: run directory does not exist")
        self.store, self.device, self.cache = store, device, cache
        self._opened = None

    @property
    def metrics(self) -> dict:
        """The run's ``metrics.json`` (test split, with CIs)."""
        return json.loads((self.path / "metrics.json").read_text())

    @property
    def facts(self) -> dict:
        """The run's ``config.json``: backbone, classes, prompts, split and training config."""
        return json.loads((self.path / "config.json").read_text())

    @property
    def classes(self) -> list[str]:
        return list(self.facts["classes"])

    def _saved(self, show_progress: bool = False):
        from retune.experiments.inference import open_run

        if self._opened is None:
            self._opened = open_run(self.path, self.store, self.device, show_progress=show_progress, cache=self.cache)
        return self._opened

    def predict(self, images: list[str | Path], method: str | None = None) -> pd.DataFrame:
        """Probabilities per class for each readable image (column ``image`` then one per class).

        Unreadable images are left out and listed in ``frame.attrs["unreadable"]`` as (path, reason) pairs.
        """
        from retune.experiments.inference import predict_images

        frame, errors = predict_images(self._saved(), [str(path) for path in images], method=method)
        frame.attrs["unreadable"] = [(str(path), str(reason)) for path, reason in errors.itertuples(index=False)]
        return frame

    def evaluate(
        self,
        csv: str | Path,
        split: str = "auto",
        n_bootstrap: int = 1000,
        exclude_overlap: bool = False,
        image_root: str | Path | None = None,
        show_progress: bool = False,
        allow_outside_root: bool = False,
        min_positives: int = DEFAULT_MIN_POSITIVES,
    ) -> dict:
        """Per-class AUROC/AUPRC with patient-bootstrap CIs on a labelled CSV (the training CSV: its test split); the
        mean covers classes with at least ``min_positives`` positives.

        ``result["overlap"]`` counts evaluation images the run trained or validated on; ``exclude_overlap`` drops them.
        Image paths must stay inside the image root unless ``allow_outside_root`` (or the run was trained so).
        """
        from retune.experiments.inference import evaluate_run

        return evaluate_run(
            self._saved(show_progress),
            csv,
            split=split,
            image_root=image_root,
            n_bootstrap=n_bootstrap,
            exclude_overlap=exclude_overlap,
            allow_outside_root=allow_outside_root,
            min_positives=min_positives,
        )

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def load_run(path: str | Path, store: str | Path | None = None, device: str | None = None, cache: bool = False) -> Run:
    """Open a run directory; ``store`` overrides the run's store, ``cache=True`` adds new images' embeddings to it."""
    return Run(path, store, device, cache)


def train(config: ConfigLike, out: str | Path, show_progress: bool = False) -> Run:
    """Train RE-tune and its baselines (``TrainConfig``) on a patient split, evaluate on test, write the run to out.

    ``out`` gets checkpoint.safetensors, config.json, metrics.json, RUN_CARD.md, report.html and plots.
    """
    from retune.experiments.train import train_run

    train_run(as_config(config, TrainConfig), out, show_progress=show_progress)
    return Run(out)


def run_scenario(
    config: ConfigLike,
    out: str | Path,
    show_progress: bool = False,
    progress: Callable[[str], None] | None = None,
    track: bool = True,
    restart: bool = False,
    engine: Callable | None = None,
) -> dict[str, dict]:
    """Run an exemplar-free incremental scenario (``ScenarioConfig``) with every method; resumes finished tasks
    (``restart`` starts over). ``progress(message)`` hears about each finished task; ``engine`` runs the jobs
    (default: in this process; ``retune.distributed.ray_sweep.ray_sweep()`` for Ray).

    Returns {method: results} and writes OUT/<method>/results.json, OUT/report.html and (``track``) MLflow runs.
    """
    from retune.report.tracking import log_scenario_results
    from retune.scenarios.runner import run_scenario as run
    from retune.scenarios.spec import ScenarioConfig

    settings = as_config(config, ScenarioConfig)
    out = Path(out)
    results = run(
        settings,
        out,
        show_progress=show_progress,
        progress=progress or (lambda message: None),
        restart=restart,
        engine=engine,
    )
    if track:
        log_scenario_results(results, out, settings.tracking_uri)
    return results


# -- segmentation -------------------------------------------------------------------------------------------------
def seg_train(config: ConfigLike, out: str | Path, show_progress: bool = False) -> dict:
    """Train a segmentation head (``SegmentationConfig``: linear, fpn or text) on the frozen tower's cached dense maps,
    with the predict-nothing and from-scratch U-Net baselines on the same patient split; write the run to ``out``.

    Returns the test metrics: per method and structure, Dice / IoU / HD95 with patient-bootstrap CIs.
    """
    from retune.experiments.segmentation import seg_train_run
    from retune.segmentation.config import SegmentationConfig

    return seg_train_run(as_config(config, SegmentationConfig), out, show_progress=show_progress)


def seg_evaluate(run: str | Path, data: str | Path, format: str = "auto", image_root: str | Path | None = None,
                 store: str | Path | None = None, n_bootstrap: int | None = None, show_progress: bool = False) -> dict:
    """Score a segmentation run and the predict-nothing baseline on every image of a mask table (``data``)."""
    from retune.experiments.segmentation import seg_evaluate_run
    from retune.segmentation.config import SegDataConfig

    settings = parse_config({"csv": data, "format": format, "image_root": image_root}, SegDataConfig, "data")
    return seg_evaluate_run(run, settings, store, n_bootstrap, show_progress)


def seg_predict(run: str | Path, images: list[str | Path], out: str | Path, structures: list[str] | None = None
                ) -> list[dict]:
    """Segment images with a run: per image a 0/255 mask PNG per structure and an overlay, at the image's size."""
    from retune.experiments.segmentation import seg_predict_images

    return seg_predict_images(run, images, out, structures)
