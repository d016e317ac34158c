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

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from retune.config import TrainConfig, absolute_paths, load_yaml_config, parse_config
from retune.errors import ConfigError
from retune.evaluation.metrics import DEFAULT_MIN_POSITIVES
from retune.io_utils import removed_on_failure

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
        self, path: str | Path, store: str | Path | None = None, device: str | None = None, cache: bool = False,
        verify: bool = True,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ConfigError(f"{self.path}: run directory does not exist")
        self.store, self.device, self.cache, self.verify = store, device, cache, verify
        self._opened = None

    @property
    def metrics(self) -> dict:
        """The run's ``metrics.json`` (test split, with CIs)."""
        from retune.experiments.run_folder import read_run_metrics

        return read_run_metrics(self.path)

    @property
    def facts(self) -> dict:
        """The run's ``config.json``: backbone, classes, prompts, split and training config."""
        from retune.experiments.run_folder import read_run_facts

        return read_run_facts(self.path)

    @property
    def classes(self) -> list[str]:
        return list(self.facts["classes"])

    def _saved(self, show_progress: bool = False):
        from retune.experiments.inference import open_run

        if self._opened is None:
            self._opened = open_run(
                self.path, self.store, self.device, show_progress=show_progress, cache=self.cache, verify=self.verify
            )
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
        A CSV may label some of the run's classes (blank cells: not labelled): those are scored, and
        ``unlabelled_classes`` / ``unlearned_classes`` list the others; ``per_site`` breaks results down by a
        site column; ``site_shift`` compares the images with the training images (docs/sites.md).
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


def load_run(
    path: str | Path, store: str | Path | None = None, device: str | None = None, cache: bool = False,
    verify: bool = True,
) -> Run:
    """Open a run directory; ``store`` overrides the run's store, ``cache=True`` adds new images' embeddings to it;
    ``verify=False`` loads a run whose config.json records no weights hash (its weights cannot be checked)."""
    return Run(path, store, device, cache, verify)


def train(config: ConfigLike, out: str | Path, show_progress: bool = False) -> Run:
    """Train RE-tune and its baselines (``TrainConfig``) on a patient split, evaluate on test, write the run to out.

    ``out`` gets checkpoint.safetensors, config.json, metrics.json, RUN_CARD.md, report.html and plots.
    """
    from retune.experiments.train import train_run

    with removed_on_failure(out):
        train_run(as_config(config, TrainConfig), out, show_progress=show_progress)
    return Run(out)


def run_scenario(
    config: ConfigLike,
    out: str | Path,
    show_progress: bool = False,
    progress: Callable[[str], None] | None = None,
    track: bool = True,
    restart: bool = False,
    engine: str | Callable | None = None,
    address: str | None = None,
) -> dict[str, dict]:
    """Run an exemplar-free incremental scenario (``ScenarioConfig``) with every method; resumes finished tasks
    (``restart`` starts over). ``progress(message)`` hears about each finished task; ``engine`` runs the jobs
    (``"local"``, the default: in this process; ``"ray"``: Ray tasks on a local instance or the cluster at
    ``address``; or a sweep engine such as ``retune.distributed.ray_sweep.ray_sweep()``).

    Returns {method: results} and writes OUT/<method>/results.json, OUT/report.html and (``track``) MLflow runs.
    """
    from retune.experiments.run_folder import track_scenario
    from retune.scenarios.runner import run_scenario as run
    from retune.scenarios.spec import ScenarioConfig

    settings = absolute_paths(as_config(config, ScenarioConfig), Path.cwd())  # scenario.json means the same anywhere
    out = Path(out)
    if engine == "ray":
        from retune.distributed.ray_sweep import ray_sweep

        engine = ray_sweep(address)
    elif engine == "local":
        engine = None
    with removed_on_failure(out):
        results = run(
            settings,
            out,
            show_progress=show_progress,
            progress=progress or (lambda message: None),
            restart=restart,
            engine=engine,
        )
    if track:
        track_scenario(results, out, settings.tracking_uri)
    return results


def methods() -> dict[str, type]:
    """Every registered method by name (``exemplar_free``, ``scenario_kinds`` and ``description`` on each class)."""
    from retune.methods.registry import available_methods

    return available_methods()


def backbones() -> list[tuple[str, Any]]:
    """Every backbone family and alias you can pass as a backbone spec, with its info (aligned towers, example)."""
    from retune.backbones.registry import list_backbones

    return list_backbones()


def embed(
    csv: str | Path,
    store: str | Path = "retune-store",
    backbone: str = "default",
    *,
    data_format: str = "auto",
    image_root: str | Path | None = None,
    metadata_csv: str | Path | None = None,
    allow_outside_root: bool = False,
    batch_size: int = 32,
    workers: int | None = None,
    tokens: bool = False,
    limits: Any = None,
    device: str | None = None,
    engine: str = "local",
    address: str | None = None,
    show_progress: bool = False,
    announce: Callable[[Path], None] | None = None,
) -> tuple[Any, Any]:
    """Embed every image of a CSV into ``store`` once per backbone (reruns compute only what is missing).

    ``engine="ray"`` encodes in Ray actors (``workers`` of them; ``address`` joins a cluster). Returns the backbone
    and the ``EmbedSummary`` (``summary.errors`` lists unreadable images and why; they are also in STORE/errors/).
    ``announce(store)`` is called once the CSV and backbone are ready, just before the store is opened.
    """
    from retune.backbones.registry import create_backbone, resolve_spec
    from retune.data.images import DEFAULT_LIMITS
    from retune.data.readers import read_table
    from retune.store import EmbeddingStore, embed_table

    resolve_spec(backbone)  # an unknown name fails before the CSV is read
    encoder = None
    if engine == "ray":
        from retune.distributed.ray_embed import ray_encoder

        encoder, device = ray_encoder(address, workers), device or "cpu"  # the driver only hashes and writes
    table = read_table(
        csv, data_format, image_root=image_root, metadata_csv=metadata_csv, allow_outside_root=allow_outside_root
    )
    model = create_backbone(backbone, device=device)
    if announce is not None:
        announce(Path(store))
    summary = embed_table(
        table,
        model,
        EmbeddingStore(store),
        batch_size=batch_size,
        workers=workers,
        tokens=tokens,
        show_progress=show_progress,
        limits=limits or DEFAULT_LIMITS,
        encoder=encoder,
    )
    return model, summary


def store_info(store: str | Path) -> dict:
    """What a store holds: backbones by fingerprint, rows per kind, bytes on disk (it is patient-derived data)."""
    from retune.store import EmbeddingStore

    return EmbeddingStore(store, create=False).summary()


def purge_store(store: str | Path) -> int:
    """Delete an embedding store and everything in it; returns the bytes freed."""
    from retune.store import purge_store as purge

    return purge(store)


def run_metrics(runs: list[str | Path]) -> list[tuple[Path, str, dict]]:
    """(run, label, metrics record) for every metrics record of each run (train, adaptor and peft runs alike)."""
    from retune.experiments.run_folder import metric_records, read_run_metrics

    records = [(Path(run), read_run_metrics(Path(run))) for run in runs]  # every run checked before any is shown
    return [(run, label, record) for run, metrics in records for label, record in metric_records(metrics)]


def compare_runs(
    run_a: str | Path, run_b: str | Path, csv: str | Path, split: str = "auto", n_bootstrap: int = 1000,
    show_progress: bool = False, min_positives: int = DEFAULT_MIN_POSITIVES,
) -> dict:
    """Is run A better than run B? Both main methods scored on the same images of ``csv`` (images either trained
    on left out): per-class and mean AUROC difference A - B with paired patient-bootstrap CIs; the mean covers the
    classes with ``min_positives`` positives, as every other mean."""
    from retune.experiments.inference import paired_comparison

    return paired_comparison(
        run_a, run_b, csv, split=split, n_bootstrap=n_bootstrap, show_progress=show_progress,
        min_positives=min_positives,
    )


def export_predictions(frame: pd.DataFrame, output: str | Path) -> None:
    """Write ``Run.predict``'s probabilities to a .csv, .json or .parquet file (the extension decides), atomically."""
    from retune.experiments.inference import write_predictions

    write_predictions(frame, Path(output))


def evaluate_scenario(results: str | Path, csv: str | Path, **options: Any) -> dict:
    """Score every method's final model of a finished scenario on another CSV, with CIs (written to
    RESULTS/external-<csv>.json); options as ``retune.scenarios.external.evaluate_scenario``."""
    from retune.scenarios.external import evaluate_scenario as evaluate

    return evaluate(results, csv, **options)


def run_adaptor(config: ConfigLike, out: str | Path, show_progress: bool = False) -> dict:
    """Pre-train the cross-attention Adaptor (``AdaptorExperimentConfig``) on cached tokens; retrieval R@K and
    probes at each label fraction, written to OUT/metrics.json and returned."""
    from retune.config import AdaptorExperimentConfig
    from retune.experiments.adaptor import run_adaptor_experiment

    return run_adaptor_experiment(as_config(config, AdaptorExperimentConfig), out, show_progress=show_progress)


def run_peft(config: ConfigLike, out: str | Path, show_progress: bool = False) -> dict:
    """Tune the encoders (``PeftExperimentConfig``: LoRA, IA3, prefix, visual prompts or freeze-k) under the RE-tune
    head and evaluate like ``train``; returns the metrics (empty on DDP ranks other than 0)."""
    from retune.config import PeftExperimentConfig
    from retune.experiments.peft import run_peft_experiment

    with removed_on_failure(out):
        return run_peft_experiment(as_config(config, PeftExperimentConfig), out, show_progress=show_progress)


def tune(config: ConfigLike, out: str | Path, address: str | None = None, show_progress: bool = False) -> dict:
    """Search RE-tune's settings with Ray Tune on the validation split; writes OUT/best.yaml, trials.csv."""
    from retune.distributed.ray_tune import TuneConfig, tune_run

    return tune_run(as_config(config, TuneConfig), out, address=address, show_progress=show_progress)


def serve(
    folders: list[str | Path], config: Any = None, store: str | Path | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve run and scenario folders over HTTP (``ServeConfig``; 127.0.0.1 unless a token is set) until stopped."""
    from retune.server import ServeConfig
    from retune.server.app import serve as serve_folders

    serve_folders(folders, as_config(config or ServeConfig(), ServeConfig), store, announce=announce)


def mlflow_ui(
    folder: str | Path, host: str = "127.0.0.1", port: int = 5000, announce: Callable[[str], None] = print
) -> int:
    """Run the MLflow UI over a run's or scenario's ``mlruns`` until it stops; returns its exit code."""
    from retune.experiments.run_folder import mlflow_store
    from retune.report.tracking import mlflow_ui as run_ui

    return run_ui(mlflow_store(Path(folder)), host, port, announce)


def adaptor_bench(config: ConfigLike, out: str | Path, show_progress: bool = False) -> dict:
    """Pre-train the Adaptor with each objective mix and seed of an ``ObjectivesBenchConfig`` on cached tokens and
    evaluate every run alike (zero-shot, probes, retrieval; mean ± sd, first-seed CIs); writes and returns
    OUT/bench.json."""
    from retune.experiments.adaptor_bench import run_objectives_bench
    from retune.objectives import ObjectivesBenchConfig

    return run_objectives_bench(as_config(config, ObjectivesBenchConfig), out, show_progress=show_progress)


def caption(run: str | Path, images: list[str | Path], device: str | None = None) -> list[str]:
    """A generated sentence for each image file, from a bench run folder whose mix has a caption objective."""
    from retune.experiments.adaptor_bench import caption_images

    return caption_images(run, images, device=device)


def export_split(folder: str | Path, split: str, out: str | Path) -> dict:
    """Write a run's or a scenario's ``split`` (train, val or test) to the CSV ``out``, rebuilt exactly as training
    built it (same CSV content, store rows, fractions and seed); returns what was written."""
    from retune.scenarios.split_export import export_split as export

    return export(folder, split, out)


# ---------------------------------------------------------------- closed-ended VQA


def vqa_build(data: str | Path | dict, out: str | Path, config: ConfigLike | None = None) -> pd.DataFrame:
    """Closed-ended questions from a labelled CSV (its path, or a ``DataConfig`` dict) written to ``out`` (Parquet):
    yes/no per image and finding from several phrasings, balanced, each "yes" paired with an adversarial "no";
    multiple choice; patient split; held-out phrasings and findings (``QuestionSetConfig``, dict or YAML)."""
    from retune.config import DataConfig
    from retune.data.questions import QuestionSetConfig
    from retune.experiments.vqa import build_question_file

    data_config = as_config({"csv": data} if isinstance(data, (str, Path)) else data, DataConfig)
    settings = QuestionSetConfig() if config is None else as_config(config, QuestionSetConfig)
    return build_question_file(data_config, out, settings)


def vqa_import(path: str | Path, out: str | Path, format: str = "vqa-rad", image_folder: str | Path | None = None,
               include_open: bool = True) -> pd.DataFrame:
    """A VQA-RAD JSON or one SLAKE split file (``format``: vqa-rad, slake) as a question table written to ``out``."""
    from retune.data.questions import write_questions
    from retune.data.vqa_sets import read_slake, read_vqa_rad

    readers = {"vqa-rad": read_vqa_rad, "slake": read_slake}
    if format not in readers:
        raise ConfigError(f"unknown VQA format '{format}'; valid: {', '.join(readers)}")
    frame = readers[format](path, image_folder, include_open)
    write_questions(frame, out, {"source": format, "path": str(Path(path).resolve())})
    return frame


def vqa_train(config: ConfigLike, out: str | Path, show_progress: bool = False) -> dict:
    """Train a VQA variant (``VqaExperimentConfig``: frozen towers, or LoRA / IA3 / prefix / visual prompts on a
    tower) on a question table's training split; writes the run to ``out`` and returns its metrics (test split,
    with the random, majority and classifier-as-answerer baselines)."""
    from retune.experiments.vqa import VqaExperimentConfig, run_vqa_experiment

    return run_vqa_experiment(as_config(config, VqaExperimentConfig), out, show_progress=show_progress)


def vqa_evaluate(run: str | Path, questions: str | Path, split: str = "auto", n_bootstrap: int = 1000,
                 store: str | Path | None = None, device: str | None = None) -> dict:
    """Score a VQA run and the baselines on a question table (``auto``: its test split when the run trained on it,
    else every question), with patient-bootstrap CIs."""
    from retune.experiments.vqa import evaluate_vqa_run

    return evaluate_vqa_run(run, questions, split, n_bootstrap, store, device)


def vqa_ask(run: str | Path, image: str | Path, question: str, store: str | Path | None = None,
            device: str | None = None) -> dict:
    """A VQA run's yes/no answer to ``question`` about one image: {"question", "answer", "p_yes"}."""
    from retune.experiments.vqa import ask

    return ask(run, image, question, store, device)


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
