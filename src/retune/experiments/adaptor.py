"""Adaptor experiment API: pre-train the cross-attention adaptor on cached tokens, then probe and retrieve.

One call embeds images (with patch tokens) and texts through the store once, pre-trains on the train
split's image-text pairs, and evaluates on the test split: linear probes on adapted vs. raw frozen
features at each label fraction, and image<->text Recall@K. Writes ``metrics.json``,
``checkpoint.safetensors`` and ``config.json`` (no per-image tensors).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from retune.backbones.base import Backbone
from retune.backbones.registry import create_backbone
from retune.config import AdaptorExperimentConfig, ReTuneConfig
from retune.data.reports import label_sentence
from retune.data.splits import patient_split, subset_patients
from retune.data.table import ImageTable
from retune.errors import ConfigError
from retune.evaluation import fast_mean_auroc
from retune.experiments.kinds import SavedRun, register_run_kind
from retune.experiments.prepare import (
    GENERAL_DOMAIN_NOTE,
    embed_and_load,
    metrics_record,
    read_data,
    split_facts,
)
from retune.experiments.run_folder import ADAPTOR, finish_run
from retune.methods.base import MethodContext, PromptBank, TaskData
from retune.methods.linear_probe import LinearProbe
from retune.methods.xattn_adaptor import (
    CrossAttentionAdaptor,
    PairData,
    adaptor_retrieval,
    batched,
    model_state,
    pretrain_adaptor,
    retrieval_metrics,
    trainable_parameters,
)
from retune.progress import progress_bar
from retune.report.tracking import numeric_leaves
from retune.store import EmbeddingStore, embed_table, hash_files, text_embeddings
from retune.store.embed import text_token_embeddings

METHOD = "xattn_adaptor"
REPORT_COLUMN = "report"
EMPTY_LABELS_TEXT = "Chest radiograph."  # label_sentence gives "" when every label is masked


def label_sentences(table: ImageTable) -> list[str]:
    """One report-like sentence per row built from its labels ("Pleural effusion. No cardiomegaly.")."""
    classes = list(table.classes)
    return [label_sentence(dict(zip(classes, row)), classes) or EMPTY_LABELS_TEXT for row in table.labels(classes)]


def pair_texts(table: ImageTable) -> tuple[list[str], str]:
    """The text paired with each image: its report when present, else its label sentence; and which source was used."""
    sentences = label_sentences(table)
    if REPORT_COLUMN not in table.frame:
        return sentences, "label_sentence"
    reports = [str(r).strip() if isinstance(r, str) else "" for r in table.frame[REPORT_COLUMN]]
    return [report or sentence for report, sentence in zip(reports, sentences)], "report"


def image_tokens(table: ImageTable, backbone: Backbone, store: EmbeddingStore) -> np.ndarray:
    """Cached image patch tokens (N x T x D) for every row of ``table`` (all must be embedded with tokens)."""
    hashes, _ = hash_files(table.paths, store)
    keys = [hashes[path] for path in table.paths]
    _, flat = store.read_vectors("tokens", backbone.fingerprint, keys)
    n_tokens = store.read_column("tokens", backbone.fingerprint, "n_tokens", keys)
    if len(set(n_tokens.tolist())) > 1:
        raise ConfigError(
            f"{store.root}: image token counts differ between images ({sorted(set(n_tokens.tolist()))}); the adaptor "
            "needs one count"
        )
    return flat.reshape(len(keys), int(n_tokens[0]), -1)


def fraction_rows(train_rows: np.ndarray, patients: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Row indices of a seeded patient-level subset of the train rows (smaller fractions nested in larger ones)."""
    return train_rows[subset_patients(patients[train_rows], fraction, seed)]


@dataclass
class CachedPairs:
    """A table (failed images dropped), its pooled image vectors, token pairs and the unique texts they index."""

    table: ImageTable
    pooled: np.ndarray
    pairs: PairData
    texts: list[str]
    text_source: str
    n_failed: int


def cached_pairs(
    table: ImageTable, backbone: Backbone, store: EmbeddingStore, max_text_tokens: int, show_progress: bool = False
) -> CachedPairs:
    """Embed images (with tokens) and paired texts through the store once; return everything as cached tensors."""
    embed_table(table, backbone, store, tokens=True, show_progress=show_progress)
    embedded = embed_and_load(table, backbone, store, show_progress=False)  # all cached now; drops failed images
    texts, text_source = pair_texts(embedded.table)
    unique, text_index = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    unique_texts = [str(text) for text in unique]
    text_tokens, text_mask = text_token_embeddings(unique_texts, backbone, store, max_text_tokens)
    device = backbone.device
    pairs = PairData(
        torch.from_numpy(np.ascontiguousarray(image_tokens(embedded.table, backbone, store))).to(device),
        torch.from_numpy(text_tokens).to(device),
        torch.from_numpy(text_mask).to(device),
        torch.as_tensor(text_index.reshape(-1), dtype=torch.long, device=device),
    )
    return CachedPairs(embedded.table, embedded.images, pairs, unique_texts, text_source, embedded.n_failed)


def _probe_context(dim: int, seed: int) -> MethodContext:
    return MethodContext(dim, 0, False, PromptBank(), fast_mean_auroc, seed)


def label_efficiency(
    features: dict[str, np.ndarray],
    table: ImageTable,
    splits: dict[str, np.ndarray],
    config: AdaptorExperimentConfig,
    backbone: Backbone,
) -> tuple[dict, dict]:
    """Linear probes per feature set and label fraction (nested patient-level train subsets); test metrics and probe
    states.

    C is chosen on the whole validation split at every fraction.
    """
    classes = list(table.classes)
    labels = table.labels(classes)
    test = table.subset(splits["test"])
    results: dict[str, dict] = {}
    states: dict[str, tuple] = {}
    method_names = {"adaptor": f"{METHOD}+linear_probe", "frozen": "linear_probe"}
    for fraction in config.label_fractions:
        rows = fraction_rows(splits["train"], table.patients, fraction, config.seed)
        key = str(fraction)
        results[key] = {}
        for name, matrix in features.items():
            probe = LinearProbe(_probe_context(matrix.shape[1], config.seed), ReTuneConfig())
            facts = probe.learn(
                TaskData(tuple(classes), matrix[rows], labels[rows], matrix[splits["val"]], labels[splits["val"]])
            )
            record = metrics_record(
                method_names[name],
                backbone,
                classes,
                probe.predict(matrix[splits["test"]]),
                test,
                "test",
                config.n_bootstrap,
                config.seed,
                config.min_positives,
            )
            record.update(
                n_train_images=int(len(rows)),
                n_train_patients=int(len(np.unique(table.patients[rows]))),
                probe_C=facts["C"],
            )
            results[key][name] = record
            states[f"probe_{name}@{key}"] = probe.state()
    return results, states


def run_adaptor_experiment(
    config: AdaptorExperimentConfig, out_dir: str | Path, show_progress: bool = False, backbone: Backbone | None = None
) -> dict:
    """Embed (tokens, once), pre-train the adaptor, evaluate probes and retrieval on test; write metrics.json +
    checkpoint.

    ``backbone`` overrides building ``config.backbone`` (an already loaded one, or a test double).
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    table = read_data(config.data)
    backbone = backbone or create_backbone(config.backbone, device=config.device)
    store = EmbeddingStore(config.store)
    cached = cached_pairs(table, backbone, store, config.max_text_tokens, show_progress)
    table, pooled, pairs = cached.table, cached.pooled, cached.pairs
    unique_texts, text_source, text_index = cached.texts, cached.text_source, pairs.text_index.cpu().numpy()
    splits = patient_split(table.patients, config.split.fractions, config.split.seed)
    torch.manual_seed(config.seed)
    model = CrossAttentionAdaptor(
        pairs.image_tokens.shape[2],
        pairs.text_tokens.shape[2],
        config.width,
        config.embed_dim,
        config.layers,
        config.heads,
        config.fusion_layers,
        config.dropout,
        config.loss,
    ).to(backbone.device)
    train_pairs = pairs.subset(splits["train"])
    with progress_bar(
        "adaptor pre-training",
        total=config.optim.epochs * len(train_pairs.image_tokens),
        enabled=show_progress,
        unit="pairs",
    ) as advance:
        fitted = pretrain_adaptor(
            model,
            train_pairs,
            pairs.subset(splits["val"]),
            config.optim,
            config.itm_weight,
            config.seed,
            progress=advance,
        )

    test_pairs = pairs.subset(splits["test"])
    retrieval = {"adaptor": adaptor_retrieval(model, test_pairs), "text_source": text_source}
    if backbone.aligned:
        raw_text = text_embeddings(unique_texts, backbone, store)
        retrieval["frozen"] = retrieval_metrics(_l2(pooled[splits["test"]]), _l2(raw_text), text_index[splits["test"]])
    else:
        retrieval["frozen"] = None
        retrieval["frozen_skipped"] = "backbone towers are not aligned; raw image-text retrieval is meaningless"

    adapted = batched(model.image_features, pairs.image_tokens).cpu().numpy()
    fractions, probe_states = label_efficiency({"adaptor": adapted, "frozen": pooled}, table, splits, config, backbone)

    image_shape, text_shape = pairs.image_tokens.shape, pairs.text_tokens.shape
    model_facts = {
        "image_token_dim": image_shape[2],
        "text_token_dim": text_shape[2],
        "n_image_tokens": image_shape[1],
        "max_text_tokens": config.max_text_tokens,
    }
    pretraining = {
        **fitted.facts(),
        "final_train_loss": fitted.train_loss[-1] if fitted.train_loss else None,
        "train_loss": fitted.train_loss,
        "val_mean_recall": fitted.val_score,
        "loss": config.loss,
        "itm_weight": config.itm_weight,
        "trainable_parameters": trainable_parameters(model),
        "n_pairs": int(len(splits["train"])),
        "n_unique_texts": int(len(np.unique(text_index[splits["train"]]))),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = {
        "backbone": backbone.describe(),
        "classes": list(table.classes),
        "adaptor_config": config.model_dump(mode="json"),
        "split": split_facts(config.split, splits),
        "pretraining": {k: v for k, v in pretraining.items() if k not in ("train_loss", "val_mean_recall")},
        "data": {
            "csv": str(config.data.csv),
            "n_images": len(table),
            "n_failed_images": cached.n_failed,
            "text_source": text_source,
        },
    }
    metrics = {
        "method": METHOD,
        "backbone": backbone.spec,
        "backbone_fingerprint": backbone.fingerprint,
        "retrieval": retrieval,
        "label_fractions": fractions,
        "pretraining": pretraining,
        "seed": config.seed,
        "split_seed": config.split.seed,
        "note": GENERAL_DOMAIN_NOTE if backbone.spec == "default" else "",
        "seconds": round(time.perf_counter() - started, 2),
    }
    records = {
        f"labels{fraction}.{name}.": record for fraction, pair in fractions.items() for name, record in pair.items()
    }
    finish_run(
        out_dir,
        ADAPTOR,
        {METHOD: (model_state(model), model_facts), **probe_states},
        facts,
        metrics,
        records,
        {METHOD: fitted.facts()},
        config.tracking_uri,
        numeric_leaves(retrieval, "retrieval."),
    )
    return metrics


def _l2(matrix: np.ndarray) -> np.ndarray:
    return F.normalize(torch.as_tensor(np.asarray(matrix, dtype=np.float32)), dim=-1).numpy()


@register_run_kind(ADAPTOR)
def open_adaptor_run(
    run_dir: Path,
    checkpoint: tuple[dict, dict],
    store_dir: str | Path | None,
    device: str | None,
    show_progress: bool,
    cache: bool = False,
) -> SavedRun:
    """Refused in one line: an Adaptor run holds a pre-trained adaptor and label-fraction probes, evaluated on its
    test split when it ran (metrics.json), not one classifier to apply to new data."""
    raise ConfigError(
        f"{run_dir}: an Adaptor run (kind 'adaptor') is evaluated by `retune adaptor run` itself (its metrics.json); "
        "evaluate and predict apply to `retune train` and `retune peft run` runs"
    )
