"""Train RE-tune and its baselines on cached embeddings as one Python API (``retune train`` calls it).

A run directory (format: ``retune.experiments.run_folder``) holds the checkpoint, config.json, metrics.json, the
report, the run card and plots; ``retune.experiments.inference`` applies it to new data.
RE-tune and its baselines (linear probe; zero-shot on aligned backbones) are trained and
evaluated in the same call on the same patient-level split.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from retune.backbones.base import Backbone
from retune.backbones.registry import create_backbone
from retune.config import TrainConfig, absolute_paths, parse_config
from retune.data.image_stats import image_summary
from retune.data.splits import patient_split
from retune.data.table import ImageTable
from retune.errors import RetuneError, StoreError, unknown_name
from retune.evaluation.operating_point import decision_thresholds
from retune.experiments.kinds import SavedRun, register_run_kind
from retune.experiments.prepare import (
    GENERAL_DOMAIN_NOTE,
    checked_backbone,
    data_facts,
    embed_and_load,
    method_context,
    metrics_and_report,
    metrics_record,
    prompt_bank,
    read_data,
    record_training_digests,
    split_facts,
    split_positives,
    table_warnings,
)
from retune.experiments.run_folder import CHECKPOINT, CONFIG, TRAIN, finish_run
from retune.methods.base import Method, PromptBank, TaskData
from retune.methods.checkpoint import RunFacts, check_facts, load_checkpoint
from retune.methods.registry import available_methods, create_method
from retune.methods.retune import ReTuneModel
from retune.progress import epoch_bar
from retune.store import EmbeddingStore, embed_table, image_embeddings
from retune.store.memory import MemoryOverlay

MAIN_METHOD = "retune"


def methods_to_run(baselines: list[str], aligned: bool) -> tuple[list[str], list[str]]:
    """RE-tune plus the requested baselines; zero-shot is skipped (and reported) on unaligned backbones."""
    valid = available_methods()
    run, skipped = [MAIN_METHOD], []
    for name in baselines:
        if name not in valid:
            raise unknown_name("method", name, list(valid))
        if valid[name].requires_aligned and not aligned:
            skipped.append(name)
        elif name not in run:
            run.append(name)
    return run, skipped


def train_run(config: TrainConfig, out_dir: str | Path, show_progress: bool = False) -> dict:
    """Read, embed (once), split by patient, train RE-tune and baselines, evaluate on test, save everything.
    Paths are recorded absolute, with the CSV's SHA-256, so the run folder means the same from any folder."""
    config = absolute_paths(config, Path.cwd())
    out_dir = Path(out_dir)
    started = time.perf_counter()
    table = read_data(config.data)
    backbone = create_backbone(config.backbone, device=config.device)
    store = EmbeddingStore(config.store)
    embedded = embed_and_load(table, backbone, store, show_progress)
    table, images = embedded.table, embedded.images
    classes = list(table.classes)
    splits = patient_split(table.patients, config.split.fractions, config.split.seed)
    bank, prompts = prompt_bank(classes, config.retune.prompts, backbone, store)
    context = method_context(backbone, bank, config.seed)
    names, skipped = methods_to_run(config.baselines, backbone.aligned)

    def task_for(rows_train: np.ndarray, rows_val: np.ndarray) -> TaskData:
        return TaskData(
            tuple(classes), images[rows_train], table.labels()[rows_train], images[rows_val], table.labels()[rows_val]
        )

    test = table.subset(splits["test"])
    trained: dict[str, Method] = {}
    training_facts: dict[str, dict] = {}
    per_method: dict[str, dict] = {}
    test_scores: dict[str, np.ndarray] = {}
    for name in names:
        with epoch_bar(f"training {name}", config.retune.optim.epochs, enabled=show_progress) as on_epoch:
            method = create_method(name, replace(context, on_epoch=on_epoch), config.retune)
            training_facts[name] = method.learn(task_for(splits["train"], splits["val"]))
        trained[name] = method
        test_scores[name] = method.predict(images[splits["test"]])
        per_method[name] = metrics_record(
            name, backbone, classes, test_scores[name], test, "test", config.n_bootstrap, config.seed,
            config.min_positives,
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    val_scores = trained[MAIN_METHOD].predict(images[splits["val"]])
    decision = decision_thresholds(val_scores, table.labels()[splits["val"]], classes)
    facts = {
        "backbone": backbone.describe(),
        "classes": classes,
        "prompts": prompts,
        "tau": training_facts[MAIN_METHOD].get("tau"),
        "train_config": config.model_dump(mode="json"),
        "split": split_facts(config.split, splits),
        "training": training_facts,
        "data": {
            **data_facts(config.data),
            "n_images": len(table),
            "n_failed_images": embedded.n_failed,
            "patient_column_missing": bool(table.extra.get("patient_column_missing")),
            "image_summary": image_summary([table.paths[row] for row in splits["train"]], config.seed),
        },
        "positives": split_positives(table, splits),
        "thresholds": decision["thresholds"],
        "threshold_rule": decision["rule"],
    }
    record_training_digests(out_dir, table, splits, store)
    metrics = {
        **per_method[MAIN_METHOD],
        "baselines": {name: record for name, record in per_method.items() if name != MAIN_METHOD},
        "skipped_baselines": {name: "needs an aligned image-text backbone" for name in skipped},
        "seed": config.seed,
        "split_seed": config.split.seed,
        "note": GENERAL_DOMAIN_NOTE if config.backbone == "default" else "",
        "seconds": round(time.perf_counter() - started, 2),
        "warnings": table_warnings(table, splits["train"]),
    }
    report_html = metrics_and_report(
        out_dir, metrics, test_scores, test.labels(classes), val_scores, table.labels()[splits["val"]]
    )
    finish_run(
        out_dir,
        TRAIN,
        {name: method.state() for name, method in trained.items()},
        facts,
        metrics,
        {"": per_method[MAIN_METHOD], **{f"{name}.": record for name, record in metrics["baselines"].items()}},
        training_facts,
        config.tracking_uri,
        report_html=report_html,
    )
    return metrics


def scoring_store(path: str | Path, cache: bool) -> EmbeddingStore | MemoryOverlay:
    """The store new images are scored through: the store itself with ``cache`` (new embeddings are kept), else an
    in-memory overlay that reads what the store already has and keeps everything new in memory."""
    if cache:
        return EmbeddingStore(path)
    return MemoryOverlay(EmbeddingStore(path, create=False) if Path(path).exists() else None)


def load_run(
    run_dir: str | Path,
    store_dir: str | Path | None = None,
    device: str | None = None,
    checkpoint: tuple[dict, dict] | None = None,
    cache: bool = False,
) -> tuple[dict[str, Method], dict, Backbone, EmbeddingStore | MemoryOverlay]:
    """Rebuild a ``retune train`` run's methods (adaptors over cached embeddings) and its backbone; ``checkpoint``:
    the run's ``load_checkpoint`` result when the caller has already read it; ``cache``: see ``scoring_store``."""
    tensors, facts = checkpoint or load_checkpoint(run_dir, RunFacts)
    check_facts(Path(run_dir) / CONFIG, facts, RunFacts)
    train_config = parse_config(facts["train_config"], TrainConfig, f"{Path(run_dir) / CONFIG}: train_config")
    backbone = checked_backbone(run_dir, facts, device)
    store = scoring_store(store_dir or train_config.store, cache)
    context = method_context(backbone, PromptBank(), train_config.seed)
    methods = {}
    for name, method_facts in facts["methods"].items():
        method = create_method(name, context, train_config.retune)
        checked_load(
            Path(run_dir),
            name,
            facts["classes"],
            backbone.image_dim,
            partial(method.load_state, tensors.get(name, {}), method_facts),
            method.predict,
        )
        methods[name] = method
    return methods, facts, backbone, store


def checked_load(
    run_dir: Path,
    name: str,
    classes: list[str],
    image_dim: int,
    load: Callable[[], None],
    predict: Callable[[np.ndarray], np.ndarray],
) -> None:
    """Load a method's saved tensors and prove them on a probe batch: tensors that do not fit the model (wrong shapes,
    a class count unlike config.json's) are a one-line StoreError naming the checkpoint, not a traceback later."""
    where = run_dir / CHECKPOINT
    try:
        load()
        probe = predict(np.zeros((2, image_dim), dtype=np.float32))
    except RetuneError as error:
        raise StoreError(f"{where}: method '{name}': {error}") from error
    except Exception as error:  # torch/numpy shape errors from tensors that do not match the model
        reason = " ".join(str(error).split())[:300]
        raise StoreError(f"{where}: method '{name}' does not fit its saved tensors ({reason})") from error
    if np.shape(probe) != (2, len(classes)):
        raise StoreError(
            f"{where}: method '{name}' predicts {np.shape(probe)[-1]} classes, but {CONFIG} lists {len(classes)}"
        )


def score_embedded(
    methods: dict[str, Method],
    backbone: Backbone,
    store: EmbeddingStore,
    table: ImageTable,
    show_progress: bool = False,
) -> tuple[dict[str, np.ndarray], np.ndarray, pd.DataFrame]:
    """Every method's probabilities for the table's images (embedded through the store): (scores, rows kept,
    unreadable images)."""
    summary = embed_table(table, backbone, store, show_progress=show_progress)
    try:
        images, rows = image_embeddings(table, backbone.fingerprint, store)
    except StoreError:
        images, rows = np.zeros((0, backbone.image_dim), dtype=np.float32), np.zeros(0, dtype=int)
    scores = {
        name: method.predict(images) if len(rows) else np.zeros((0, len(method.classes)))
        for name, method in methods.items()
    }
    return scores, rows, summary.errors


@register_run_kind(TRAIN)
def open_train_run(
    run_dir: Path,
    checkpoint: tuple[dict, dict],
    store_dir: str | Path | None,
    device: str | None,
    show_progress: bool,
    cache: bool = False,
) -> SavedRun:
    """A ``retune train`` run: its methods score images through the store (new images in memory unless cache)."""
    methods, facts, backbone, store = load_run(run_dir, store_dir, device, checkpoint, cache=cache)
    main = methods[MAIN_METHOD]
    head = main.model.eval() if isinstance(getattr(main, "model", None), ReTuneModel) else main
    return SavedRun(
        facts,
        facts["train_config"],
        backbone,
        list(facts["classes"]),
        MAIN_METHOD,
        lambda table: score_embedded(methods, backbone, store, table, show_progress),
        head,
    )
