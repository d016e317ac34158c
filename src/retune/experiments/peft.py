"""Encoder-tuning experiments (MILE-style PEFT, partial freezing) under the RE-tune head, as one Python API.

``run_peft_experiment`` writes ``metrics.json`` in the ``retune train`` format plus trainable parameters,
peak memory and time, and ``checkpoint.safetensors`` with only the trainable tensors (adapters or unfrozen
blocks + head). ``compare_prefix_caching`` trains freeze-k twice, with and without the cached prefix.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from retune.backbones.base import Backbone
from retune.backbones.registry import create_backbone
from retune.config import OptimConfig, PeftExperimentConfig, absolute_paths, parse_config
from retune.data.pixels import PixelsOnAccess, decode_pixels, pixel_inputs
from retune.data.readers import missing_images_hint
from retune.data.splits import patient_split
from retune.data.table import ImageTable
from retune.errors import ConfigError, DataError, StoreError
from retune.evaluation import fast_mean_auroc
from retune.evaluation.operating_point import decision_thresholds
from retune.experiments.kinds import SavedRun, register_run_kind
from retune.experiments.prepare import (
    GENERAL_DOMAIN_NOTE,
    checked_backbone,
    data_facts,
    metrics_and_report,
    metrics_record,
    prompt_bank,
    read_data,
    record_training_digests,
    split_facts,
    split_positives,
    table_warnings,
)
from retune.experiments.run_folder import CHECKPOINT, CONFIG, PEFT, finish_run
from retune.methods.checkpoint import RunFacts, check_facts, load_checkpoint
from retune.methods.retune import ReTuneModel
from retune.profiling import peak_memory, timed
from retune.progress import progress_bar
from retune.prompts import build_prompts
from retune.store import EmbeddingStore
from retune.store.prefix import prefix_activations
from retune.training.loop import FitResult, fit
from retune.training.process_group import Group
from retune.tuning.adapters import apply_tuning
from retune.tuning.model import TunedReTune, parameter_report, trainable_encoder_parameters
from retune.tuning.split import can_cache_prefix, image_features_fn, image_split, prompt_features_fn
from retune.tuning.towers import tower_blocks, tower_of

__all__ = [
    "PeftExperimentConfig",
    "TunedRun",
    "compare_prefix_caching",
    "load_tuned_run",
    "method_name",
    "run_peft_experiment",
]

PREDICT_BATCH = 32


def method_name(config: PeftExperimentConfig) -> str:
    """How the run is named in metrics.json: ``peft-lora``, ``peft-ia3``, ``peft-prefix`` or ``freeze-k``."""
    return "freeze-k" if config.method == "freeze" else f"peft-{config.method}"


def towers_of(config: PeftExperimentConfig) -> list[str]:
    return ["image", "text"] if config.tower == "both" else [config.tower]


@dataclass
class TuningOutcome:
    """A trained tuned model and what was measured while training it."""

    backbone: Backbone
    model: TunedReTune
    table: ImageTable
    splits: dict[str, np.ndarray]
    fit: FitResult
    test_scores: np.ndarray | None  # None on DDP ranks other than 0
    val_scores: np.ndarray | None  # for the decision thresholds; None on DDP ranks other than 0
    frozen_blocks: dict[str, int]
    parameters: dict
    memory: dict
    train_seconds: float
    prefix_cache: dict | None
    prompts: dict


def read_experiment_table(config: PeftExperimentConfig) -> ImageTable:
    """The labelled table the config names."""
    return read_data(config.data)


def _image_inputs(
    backbone: Backbone, table: ImageTable, store: EmbeddingStore, k: int, use_cache: bool
) -> tuple[torch.Tensor | PixelsOnAccess, np.ndarray, dict | None]:
    """Model inputs per readable row: cached first-k-block activations, or preprocessed pixels (in memory, or decoded
    per batch)."""
    if use_cache:
        clock = timed()
        cached = prefix_activations(table, backbone, k, store, image_split(backbone, k).prefix)
        return (
            cached.activations,
            cached.rows,
            {
                "fingerprint": cached.fingerprint,
                "n_computed": cached.n_computed,
                "seconds": round(clock(), 3),
                "activation_shape": list(cached.activations.shape[1:]),
            },
        )
    inputs, rows = pixel_inputs(table.paths, backbone)
    if not len(rows):
        raise DataError(f"{table.source}: no readable image{missing_images_hint(table)}")
    return inputs, rows, None


def _predict(model: TunedReTune, inputs: torch.Tensor | PixelsOnAccess, rows: np.ndarray | None = None) -> np.ndarray:
    """Probabilities for ``inputs[rows]`` (default: every row), PREDICT_BATCH rows at a time."""
    rows = np.arange(len(inputs)) if rows is None else np.asarray(rows)
    if not len(rows):
        return np.zeros((0, len(model.head.positive)), dtype=np.float32)
    model.eval()
    with torch.no_grad():
        return torch.cat(
            [
                torch.sigmoid(model(inputs[rows[s : s + PREDICT_BATCH]])).float().cpu()
                for s in range(0, len(rows), PREDICT_BATCH)
            ]
        ).numpy()


def tune_backbone(
    backbone: Backbone, config: PeftExperimentConfig, cache_prefix: bool | None = None
) -> tuple[dict[str, int], bool]:
    """Apply the config's tuning to the backbone in place: (frozen blocks per tower, whether the image prefix is
    cached)."""
    torch.manual_seed(config.seed)  # adapter initialisation (LoRA A, prefix tokens) depends on the seed only
    frozen = apply_tuning(
        backbone,
        towers_of(config),
        config.method,
        config.freeze_blocks,
        config.rank,
        config.alpha,
        config.dropout,
        config.target_modules,
        config.num_virtual_tokens,
    )
    k_image = frozen.get("image", 0)
    cache_prefix = config.cache_prefix if cache_prefix is None else cache_prefix
    return frozen, k_image > 0 and (can_cache_prefix(backbone, k_image) if cache_prefix is None else cache_prefix)


def tune(
    config: PeftExperimentConfig,
    table: ImageTable,
    store: EmbeddingStore,
    cache_prefix: bool | None = None,
    show_progress: bool = False,
    group: Group | None = None,
) -> TuningOutcome:
    """Load a fresh backbone, make the chosen tower(s) partly trainable, train encoder part + RE-tune head, score the
    test split. With a DDP ``group`` (torchrun), each process trains on its shard of the training rows with gradients
    averaged across processes; rank 0 alone scores validation and test (others get no test scores)."""
    backbone = create_backbone(config.backbone, device=group.device if group else config.device)
    towers = towers_of(config)
    frozen, use_cache = tune_backbone(backbone, config, cache_prefix)
    k_image = frozen.get("image", 0)
    with group.in_turn() if group else nullcontext():  # store writes by one process at a time
        inputs, rows, prefix_cache = _image_inputs(backbone, table, store, k_image, use_cache)
    table = table.subset(rows)
    classes = list(table.classes)
    splits = patient_split(table.patients, config.split.fractions, config.split.seed)
    torch.manual_seed(config.seed)
    head = ReTuneModel(backbone.image_dim, backbone.text_dim, config.retune)
    if "text" in towers:
        prompts = build_prompts(config.retune.prompts, classes)
        prompt_features = prompt_features_fn(backbone, prompts)
        described = {
            name: {"positive": list(p.positive), "negative": list(p.negative), "source": p.source}
            for name, p in prompts.items()
        }
    else:
        with group.in_turn() if group else nullcontext():
            bank, described = prompt_bank(classes, config.retune.prompts, backbone, store)
        head.add_prompts(*bank.matrices(classes))
        prompt_features = None
    head.to(backbone.device)
    features = image_features_fn(backbone, k_image, inputs_are_prefix=prefix_cache is not None)
    model = TunedReTune(head, features, prompt_features, trainable_encoder_parameters(backbone))
    model.freeze_prompts()
    labels = torch.tensor(np.array(table.labels(classes), dtype=np.float32))

    def loss_fn(batch_rows: torch.Tensor, batch_labels: torch.Tensor) -> torch.Tensor:
        return model.loss(inputs[batch_rows], batch_labels, config.retune.objective)

    def val_score() -> float | None:
        val = splits["val"]
        if not len(val):
            return None
        if config.retune.optim.early_stopping == "loss":
            return -float(
                np.mean(
                    [
                        float(loss_fn(torch.as_tensor(val[s : s + PREDICT_BATCH]), labels[val[s : s + PREDICT_BATCH]]))
                        for s in range(0, len(val), PREDICT_BATCH)
                    ]
                )
            )
        return fast_mean_auroc(_predict(model, inputs, val), labels[val].numpy())

    optim = OptimConfig(
        lr=config.learning_rate,
        weight_decay=config.retune.optim.weight_decay,
        epochs=config.epochs,
        batch_size=config.batch_size,
        patience=config.retune.optim.patience,
        min_epochs=config.retune.optim.min_epochs,
        early_stopping=config.retune.optim.early_stopping,
        precision="fp32",  # the encoder's own autocast (CUDA) decides its arithmetic; bf16 was measured on adaptors
    )
    train_rows = torch.as_tensor(splits["train"], dtype=torch.long)
    step_loss, score = loss_fn, val_score
    if group:
        train_rows = group.shard_rows(train_rows, config.seed)
        step_loss, score = group.synchronised_loss(model, loss_fn), group.rank_zero_score(val_score)
    with peak_memory(backbone.device) as memory:
        clock = timed()
        with progress_bar(
            f"training {method_name(config)}",
            total=config.epochs * len(train_rows),
            enabled=show_progress and (group is None or group.is_main),
            unit="images",
        ) as advance:
            result = fit(
                model,
                model.parameters(),
                step_loss,
                train_rows,
                labels[train_rows],
                optim,
                score,
                config.seed,
                progress=advance,
            )
        train_seconds = clock()
        model.freeze_prompts()
        main = group is None or group.is_main
        test_scores = _predict(model, inputs, splits["test"]) if main else None
        val_scores = _predict(model, inputs, splits["val"]) if main else None
    return TuningOutcome(
        backbone,
        model,
        table,
        splits,
        result,
        test_scores,
        val_scores,
        frozen,
        parameter_report(backbone, model),
        memory,
        round(train_seconds, 3),
        prefix_cache,
        described,
    )


def run_peft_experiment(config: PeftExperimentConfig, out_dir: str | Path, show_progress: bool = False) -> dict:
    """Tune, evaluate on the patient-level test split, and write metrics.json + checkpoint.safetensors +
    config.json. Under torchrun every process trains (DDP); rank 0 alone evaluates and writes, the others return {}."""
    started = time.perf_counter()
    config = absolute_paths(config, Path.cwd())  # recorded so that the run folder means the same from any folder
    out_dir = Path(out_dir)
    store = EmbeddingStore(config.store)
    group = Group.from_env()
    try:
        outcome = tune(config, read_experiment_table(config), store, show_progress=show_progress, group=group)
    finally:
        if group:
            group.close()
    if group and not group.is_main:
        return {}
    backbone, table, name = outcome.backbone, outcome.table, method_name(config)
    classes = list(table.classes)
    test = table.subset(outcome.splits["test"])
    record = metrics_record(
        name, backbone, classes, outcome.test_scores, test, "test", config.n_bootstrap, config.seed,
        config.min_positives,
    )
    tau = float(outcome.model.head.log_tau.detach().exp())
    tuning = {
        "tower": config.tower,
        "method": config.method,
        "learning_rate": config.learning_rate,
        "frozen_blocks": outcome.frozen_blocks,
        "blocks": {
            t: len(tower_blocks(tower_of(backbone, t))[1])
            for t in towers_of(config)
            if config.method not in ("prefix", "prompt")
        },
        "trainable_encoder_tensors": len(outcome.model.encoder),
        "prefix_cache": outcome.prefix_cache,
        "processes": group.describe() if group else {"world_size": 1},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().float().cpu().numpy() for key, value in outcome.model.state_dict().items()}
    facts = {
        "backbone": backbone.describe(),
        "classes": classes,
        "prompts": outcome.prompts,
        "tau": tau,
        "train_config": config.model_dump(mode="json"),
        "split": split_facts(config.split, outcome.splits),
        "training": {name: outcome.fit.facts()},
        "tuning": tuning,
        "data": {**data_facts(config.data), "n_images": len(table)},
        "positives": split_positives(table, outcome.splits),
    }
    decision = decision_thresholds(outcome.val_scores, table.labels(classes)[outcome.splits["val"]], classes)
    facts.update(thresholds=decision["thresholds"], threshold_rule=decision["rule"])
    record_training_digests(out_dir, table, outcome.splits, store)
    metrics = {
        **record,
        "baselines": {},
        "skipped_baselines": {},
        "seed": config.seed,
        "split_seed": config.split.seed,
        "note": GENERAL_DOMAIN_NOTE if config.backbone == "default" else "",
        "tuning": tuning,
        "training": {**outcome.fit.facts(), "train_loss": outcome.fit.train_loss},
        **outcome.parameters,
        **outcome.memory,
        "train_seconds": outcome.train_seconds,
        "seconds": round(time.perf_counter() - started, 2),
        "warnings": table_warnings(table, outcome.splits["train"]),
    }
    val_labels = table.labels(classes)[outcome.splits["val"]]
    report_html = metrics_and_report(
        out_dir, metrics, {name: outcome.test_scores}, test.labels(classes), outcome.val_scores, val_labels
    )
    finish_run(
        out_dir,
        PEFT,
        {name: (tensors, {"classes": classes, "tau": tau, "tower": config.tower, "method": config.method})},
        facts,
        metrics,
        {"": record},
        facts["training"],
        config.tracking_uri,
        report_html=report_html,
    )
    return metrics


def compare_prefix_caching(config: PeftExperimentConfig) -> dict:
    """Train the same frozen-k image-tower run with cached prefix activations and re-running the frozen blocks;
    timings + curves."""
    if config.tower == "text" or not config.freeze_blocks or config.method in ("prefix", "prompt"):
        raise ConfigError(
            "prefix caching applies to the image tower with freeze_blocks > 0 (methods freeze, lora, ia3)"
        )
    store = EmbeddingStore(config.store)
    table = read_experiment_table(config)
    cached = tune(config, table, store, cache_prefix=True)
    uncached = tune(config, table, store, cache_prefix=False)
    return {
        "frozen_blocks": cached.frozen_blocks["image"],
        "cached_train_seconds": cached.train_seconds,
        "uncached_train_seconds": uncached.train_seconds,
        "speedup": round(uncached.train_seconds / max(cached.train_seconds, 1e-9), 2),
        "prefix_cache": cached.prefix_cache,
        "cached_train_loss": cached.fit.train_loss,
        "uncached_train_loss": uncached.fit.train_loss,
        "max_test_score_difference": float(np.abs(cached.test_scores - uncached.test_scores).max()),
        "cached_peak_memory_mb": cached.memory["peak_memory_mb"],
        "uncached_peak_memory_mb": uncached.memory["peak_memory_mb"],
        "cached_memory_growth_mb": cached.memory["peak_memory_above_start_mb"],
        "uncached_memory_growth_mb": uncached.memory["peak_memory_above_start_mb"],
    }


# ---------------------------------------------------------------- loading a tuned run back


@dataclass
class TunedRun:
    """A saved encoder-tuning run rebuilt for inference: the backbone tuned the same way, its tensors and head
    loaded."""

    name: str
    model: TunedReTune
    backbone: Backbone
    store: EmbeddingStore
    facts: dict
    image_blocks_frozen: int
    use_prefix_cache: bool

    @property
    def classes(self) -> list[str]:
        return list(self.facts["classes"])

    def score(self, table: ImageTable) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        """Probabilities for the table's readable images through the tuned encoder: (scores, rows kept, unreadable
        images)."""
        if self.use_prefix_cache:
            cached = prefix_activations(
                table,
                self.backbone,
                self.image_blocks_frozen,
                self.store,
                image_split(self.backbone, self.image_blocks_frozen).prefix,
                require_rows=False,
            )
            scores = (
                _predict(self.model, cached.activations)
                if len(cached.rows)
                else np.zeros((0, len(self.classes)), dtype=np.float32)
            )
            return scores, cached.rows, pd.DataFrame(list(cached.failed.items()), columns=["path", "reason"])
        scores, rows, failed = [], [], []
        for start in range(0, len(table), PREDICT_BATCH):
            paths = table.paths[start : start + PREDICT_BATCH]
            pixels = decode_pixels(paths, self.backbone)
            good = [i for i, tensor in enumerate(pixels) if tensor is not None]
            failed.extend((paths[i], "unreadable image") for i, tensor in enumerate(pixels) if tensor is None)
            if good:
                scores.append(_predict(self.model, torch.stack([pixels[i] for i in good])))
                rows.extend(start + i for i in good)
        stacked = np.concatenate(scores) if scores else np.zeros((0, len(self.classes)), dtype=np.float32)
        return stacked, np.asarray(rows, dtype=int), pd.DataFrame(failed, columns=["path", "reason"])


def load_tuned_run(
    run_dir: str | Path,
    store_dir: str | Path | None = None,
    device: str | None = None,
    checkpoint: tuple[dict, dict] | None = None,
) -> TunedRun:
    """Rebuild a ``retune peft run`` checkpoint: same backbone (fingerprint checked), same tuning, saved tensors
    loaded;
    ``checkpoint``: the run's ``load_checkpoint`` result when the caller has already read it."""
    tensors, facts = checkpoint or load_checkpoint(run_dir, RunFacts)
    check_facts(Path(run_dir) / CONFIG, facts, RunFacts)
    config = parse_config(facts["train_config"], PeftExperimentConfig, f"{Path(run_dir) / CONFIG}: train_config")
    name = method_name(config)
    where = Path(run_dir) / CHECKPOINT
    saved = {key: torch.as_tensor(value) for key, value in tensors.get(name, {}).items()}
    for key in ("head.positive", "head.negative"):
        if key not in saved or saved[key].ndim != 2 or len(saved[key]) != len(facts["classes"]):
            shape = tuple(saved[key].shape) if key in saved else "missing"
            raise StoreError(
                f"{where}: tensor '{name}/{key}' ({shape}) does not hold one row per class of {CONFIG} "
                f"({len(facts['classes'])})"
            )
    backbone = checked_backbone(run_dir, facts, device)
    frozen, use_cache = tune_backbone(backbone, config)
    head = ReTuneModel(backbone.image_dim, backbone.text_dim, config.retune)
    head.positive, head.negative = torch.zeros_like(saved["head.positive"]), torch.zeros_like(saved["head.negative"])
    model = TunedReTune(
        head.to(backbone.device),
        image_features_fn(backbone, frozen.get("image", 0), inputs_are_prefix=use_cache),
        None,
        trainable_encoder_parameters(backbone),
    )
    try:
        missing, unexpected = model.load_state_dict(saved, strict=False)
    except RuntimeError as error:  # a tensor of the wrong shape
        reason = " ".join(str(error).split())[:300]
        raise StoreError(f"{where}: tensors do not fit the tuned model ({reason})") from error
    missing = [name for name in missing if name != "head.logit_bias"]  # runs saved before the siglip objective existed
    if missing or unexpected:
        raise StoreError(
            f"{run_dir}: checkpoint does not match the tuned model ({len(missing)} tensors missing, {len(unexpected)} "
            f"unexpected; e.g. {(missing + unexpected)[0]})"
        )
    store = EmbeddingStore(store_dir or config.store)
    return TunedRun(name, model.eval(), backbone, store, facts, frozen.get("image", 0), use_cache)


@register_run_kind(PEFT)
def open_peft_run(
    run_dir: Path,
    checkpoint: tuple[dict, dict],
    store_dir: str | Path | None,
    device: str | None,
    show_progress: bool,
    cache: bool = False,
) -> SavedRun:
    """A ``retune peft run`` run: images go through the rebuilt, tuned encoder (``cache`` does not apply: with the
    frozen-prefix cache, block activations are written to the store)."""
    tuned = load_tuned_run(run_dir, store_dir, device, checkpoint)

    def score(table: ImageTable) -> tuple[dict[str, np.ndarray], np.ndarray, pd.DataFrame]:
        scores, rows, errors = tuned.score(table)
        return {tuned.name: scores}, rows, errors

    return SavedRun(
        tuned.facts,
        tuned.facts["train_config"],
        tuned.backbone,
        tuned.classes,
        tuned.name,
        score,
        tuned.model.head.eval(),
    )
