"""Segmentation on the frozen image tower (``retune seg train / evaluate / predict``).

The tower's multi-scale maps are computed once per image and size (``retune.store.dense``); a head (linear, FPN or
text-guided) trains on them for every epoch without the encoder. In the same command and on the same patient split:
the predict-nothing baseline and a U-Net with the FPN decoder trained from scratch on the images. Scores are taken at
each image's own size, per structure, with patient-bootstrap CIs (``retune.evaluation.segmentation``).

A run directory holds ``per_image.csv`` and, written by ``run_folder.finish_run``, ``config.json``,
``checkpoint.safetensors`` (the head only), ``metrics.json``, ``report.html`` (with overlays), ``RUN_CARD.md`` and an
MLflow run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from retune.backbones.base import Backbone
from retune.backbones.registry import create_backbone
from retune.config import parse_config
from retune.data.images import load_image
from retune.data.masks import MaskTable, read_masks
from retune.data.splits import patient_split
from retune.errors import ConfigError, DataError, unknown_name
from retune.evaluation.segmentation import PER_IMAGE_COLUMNS, score_mask, summarize
from retune.experiments.adaptor import fraction_rows
from retune.experiments.kinds import register_run_kind
from retune.experiments.prepare import GENERAL_DOMAIN_NOTE, checked_backbone, record_training_digests, split_facts
from retune.experiments.run_folder import METRICS, finish_run
from retune.io_utils import atomic_path, read_json
from retune.methods.checkpoint import CheckpointFacts, load_checkpoint
from retune.progress import epoch_bar
from retune.report.tracking import numeric_leaves
from retune.segmentation.config import SegDataConfig, SegmentationConfig
from retune.segmentation.heads import HeadInputs, ScratchUNet, create_head
from retune.segmentation.report import seg_report_html, seg_run_card
from retune.segmentation.training import IGNORE, fit, predict_probabilities
from retune.store import EmbeddingStore, text_embeddings
from retune.store.dense import dense_features, dense_pixels

KIND = "segmentation"
PREDICT_NOTHING = "predict_nothing"
SCRATCH = "scratch_unet"
HEAD_KEY = "head"  # the checkpoint's one saved model
PER_IMAGE_CSV = "per_image.csv"


class SegRunFacts(CheckpointFacts):
    """``config.json`` of a segmentation run."""

    kind: str
    structures: list[str]
    seg_config: dict
    backbone: dict


def structure_prompts(structure: str) -> tuple[str, str]:
    """The positive and negative prompt of a structure for the text-guided head."""
    words = structure.replace("_", " ")
    return f"the {words} on a chest x-ray", f"a chest x-ray region that is not the {words}"


def read_mask_data(data: SegDataConfig, structures: list[str] | None) -> MaskTable:
    """The mask table a config names, restricted to ``structures`` (all when None)."""
    if data.csv is None:
        raise ConfigError("no mask data given (data.csv / --data)")
    table = read_masks(data.csv, data.format, data.image_root)
    return table.only(structures) if structures else table


def mask_targets(table: MaskTable, rows: np.ndarray, size: int) -> torch.Tensor:
    """int8 targets (rows x structures x size x size): 1 / 0, ``IGNORE`` for ignore pixels and for a structure not
    annotated on that image; masks resized by nearest neighbour."""
    targets = torch.full((len(rows), len(table.structures), size, size), IGNORE, dtype=torch.int8)
    for position, row in enumerate(rows):
        for k, structure in enumerate(table.structures):
            mask = table.load_mask(int(row), structure)
            if mask is not None:
                resized = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=(size, size), mode="nearest")
                targets[position, k] = resized[0, 0].to(torch.int8)
    return targets


def prompt_embeddings(structures: list[str], backbone: Backbone, store: EmbeddingStore) -> torch.Tensor:
    """Each structure's (positive, negative) prompt embedded by the text tower (structures x 2 x text_dim)."""
    texts = [text for structure in structures for text in structure_prompts(structure)]
    return torch.from_numpy(text_embeddings(texts, backbone, store)).view(len(structures), 2, -1)


def build_head(config: SegmentationConfig, channels: tuple[int, ...], structures: list[str],
               prompts: torch.Tensor | None) -> torch.nn.Module:
    """The configured head for these maps and structures."""
    return create_head(config.head, HeadInputs(channels, len(structures), config.width, prompts))


def score_methods(
    table: MaskTable, rows: np.ndarray, probabilities: dict[str, torch.Tensor | None], threshold: float,
    with_hd95: bool = True,
) -> pd.DataFrame:
    """Per-image scores of every method at each image's own size (probabilities upsampled; None = predict nothing).

    Each mask is decoded once for all methods."""
    records = []
    for position, row in enumerate(rows):
        height, width = int(table.frame.at[row, "height"]), int(table.frame.at[row, "width"])
        masks = {method: _full_size(probs[position], (height, width), threshold) if probs is not None else None
                 for method, probs in probabilities.items()}
        for k, structure in enumerate(table.structures):
            truth = table.load_mask(int(row), structure)
            if truth is None:
                continue
            for method, predicted in masks.items():
                mask = predicted[k] if predicted is not None else np.zeros(truth.shape, dtype=bool)
                records.append({
                    "image_path": table.paths[row], "patient_id": table.patients[row], "method": method,
                    "structure": structure, **score_mask(mask, truth, with_hd95),
                })
    return pd.DataFrame.from_records(records, columns=list(PER_IMAGE_COLUMNS))


def _full_size(probabilities: torch.Tensor, size: tuple[int, int], threshold: float) -> np.ndarray:
    """K x S x S probabilities as boolean masks at (height, width)."""
    resized = F.interpolate(probabilities[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return (resized >= threshold).numpy()


def summaries(per_image: pd.DataFrame, n_bootstrap: int, seed: int) -> dict[str, dict]:
    """Per method, the per-structure summary (``evaluation.segmentation.summarize``)."""
    return {method: summarize(rows, n_bootstrap, seed) for method, rows in per_image.groupby("method", sort=False)}


def _train_scratch(
    config: SegmentationConfig, table: MaskTable, targets: torch.Tensor, train: np.ndarray, val: np.ndarray,
    backbone: Backbone, show_progress: bool,
) -> tuple[torch.nn.Module, dict, torch.Tensor]:
    """The from-scratch U-Net on the same images (decoded once, the backbone's normalisation)."""
    pixels = dense_pixels(table.paths, backbone, config.image_size)
    torch.manual_seed(config.seed)
    model = ScratchUNet(len(table.structures), config.width)
    with epoch_bar(f"training {SCRATCH}", config.optim.epochs, enabled=show_progress, score="Dice") as on_epoch:
        facts = fit(model, lambda rows: pixels[torch.as_tensor(rows)], targets, train, val,
                    config.optim.loop_config(), config.seed, on_epoch)
    return model, facts, pixels


def seg_train_run(config: SegmentationConfig, out_dir: str | Path, show_progress: bool = False) -> dict:
    """Read masks, cache dense maps (once), split by patient, train the head and the baselines on the same training
    patients (``label_fraction`` of them), score every method on the test patients, write the run directory."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    table = read_mask_data(config.data, config.structures)
    structures = list(table.structures)
    backbone = create_backbone(config.backbone, device=config.device)
    store = EmbeddingStore(config.store)
    features = dense_features(table.paths, backbone, store, config.image_size, show_progress=show_progress)
    splits = patient_split(table.patients, config.split.fractions, config.split.seed)
    train = fraction_rows(splits["train"], table.patients, config.label_fraction, config.seed)
    val, test = splits["val"], splits["test"]
    targets = mask_targets(table, np.arange(len(table)), config.image_size)
    prompts = prompt_embeddings(structures, backbone, store) if config.head == "text" else None
    torch.manual_seed(config.seed)
    head = build_head(config, tuple(m.shape[1] for m in features.maps), structures, prompts)
    bar = epoch_bar(f"training {config.head} head", config.optim.epochs, enabled=show_progress, score="Dice")
    with bar as on_epoch:
        training = {config.head: fit(head, features.rows, targets, train, val, config.optim.loop_config(),
                                     config.seed, on_epoch)}
    probabilities = {config.head: predict_probabilities(head, features.rows, test, config.image_size)}
    if PREDICT_NOTHING in config.baselines:
        probabilities[PREDICT_NOTHING] = None
    if SCRATCH in config.baselines:
        scratch, training[SCRATCH], pixels = _train_scratch(config, table, targets, train, val, backbone,
                                                            show_progress)
        probabilities[SCRATCH] = predict_probabilities(
            scratch, lambda rows: pixels[torch.as_tensor(rows)], test, config.image_size
        )
    per_image = score_methods(table, test, probabilities, config.threshold, config.hd95)
    by_method = summaries(per_image, config.n_bootstrap, config.seed)

    out_dir.mkdir(parents=True, exist_ok=True)
    facts = {
        "backbone": backbone.describe(),
        "structures": structures,
        "head": config.head,
        "seg_config": config.model_dump(mode="json"),
        "split": {**split_facts(config.split, splits), "train_used": len(train),
                  "label_fraction": config.label_fraction},
        "data": {"csv": str(config.data.csv), "n_images": len(table)},
        "annotated": {name: {split: int(table.annotated(name)[rows].sum()) for split, rows in
                             (("train", train), ("val", val), ("test", test))} for name in structures},
        "dense": {"fingerprint": features.fingerprint, "strides": list(features.strides),
                  "channels": [m.shape[1] for m in features.maps], "n_computed": features.n_computed},
    }
    state = {key: value.detach().cpu().numpy() for key, value in head.state_dict().items()}
    record_training_digests(out_dir, table, {"train": train, "val": val}, store)
    with atomic_path(out_dir / PER_IMAGE_CSV) as temp:
        per_image.to_csv(temp, index=False)
    metrics = {
        "kind": KIND,
        "method": config.head,
        "structures": structures,
        "split": "test",
        "n_images": len(test),
        "n_patients": int(pd.Series(table.patients[test]).nunique()),
        "n_bootstrap": config.n_bootstrap,
        "hd95_computed": config.hd95,
        "per_method": by_method,
        "training": {name: {k: v for k, v in record.items() if k != "history"} for name, record in training.items()},
        "note": GENERAL_DOMAIN_NOTE if config.backbone == "default" else "",
        "seconds": round(time.perf_counter() - started, 2),
    }
    examples = _overlay_examples(table, test, probabilities[config.head], config.threshold)
    finish_run(out_dir, KIND, {HEAD_KEY: (state, training[config.head])}, facts, metrics, {}, training,
               config.tracking_uri, numeric_leaves(by_method), report_html=seg_report_html(metrics, examples),
               card=seg_run_card(facts, metrics))
    return metrics


def _overlay_examples(table: MaskTable, rows: np.ndarray, probabilities: torch.Tensor,
                      threshold: float) -> list[tuple[str, Image.Image, list[np.ndarray]]]:
    """The first few test images with the head's masks at their own size, for report.html."""
    examples = []
    for position in range(min(6, len(rows))):
        row = int(rows[position])
        image = load_image(table.paths[row])
        examples.append((Path(table.paths[row]).name, image,
                         list(_full_size(probabilities[position], (image.height, image.width), threshold))))
    return examples


@dataclass
class SegRun:
    """A trained segmentation run, ready to segment images."""

    path: Path
    facts: dict
    config: SegmentationConfig
    backbone: Backbone
    head: torch.nn.Module
    structures: list[str]
    metrics: dict  # the run's test metrics (metrics.json; empty when absent)

    def segment(self, image: Image.Image) -> list[np.ndarray]:
        """Boolean masks (one per structure, in run order) at the image's own size."""
        pixels = self.backbone.dense_preprocess(image, self.config.image_size)[None]
        maps = self.backbone.dense_features(pixels)
        probabilities = predict_probabilities(self.head, lambda rows: maps, np.arange(1), self.config.image_size)
        return list(_full_size(probabilities[0], (image.height, image.width), self.config.threshold))


def load_seg_run(run_dir: str | Path, device: str | None = None) -> SegRun:
    """Rebuild a segmentation run's head on its (fingerprint-checked) backbone."""
    run_dir = Path(run_dir)
    tensors, facts = load_checkpoint(run_dir, SegRunFacts)
    if facts["kind"] != KIND:
        raise ConfigError(f"{run_dir}: a '{facts['kind']}' run, not a segmentation run")
    config = parse_config(facts["seg_config"], SegmentationConfig, f"{run_dir / 'config.json'}: seg_config")
    backbone = checked_backbone(run_dir, facts, device)
    state = {key: torch.from_numpy(value) for key, value in tensors[HEAD_KEY].items()}
    prompts = state.get("prompts")
    head = build_head(config, tuple(facts["dense"]["channels"]), facts["structures"], prompts)
    head.load_state_dict(state)
    metrics = read_json(run_dir / METRICS) if (run_dir / METRICS).is_file() else {}
    return SegRun(run_dir, facts, config, backbone, head.eval(), list(facts["structures"]), metrics)


def seg_evaluate_run(run_dir: str | Path, data: SegDataConfig, store: str | Path | None = None,
                     n_bootstrap: int | None = None, show_progress: bool = False) -> dict:
    """Score a run (and the predict-nothing baseline) on every image of another mask table, per structure; warns
    when evaluation images were among the run's training or validation images."""
    from retune.experiments.inference import check_overlap  # inference imports this module (its run kind)

    run = load_seg_run(run_dir)
    table = read_masks(data.csv, data.format, data.image_root)
    shared = [name for name in run.structures if name in table.structures]
    if not shared:
        raise DataError(f"{data.csv}: none of the run's structures ({', '.join(run.structures)}) is annotated here")
    table = table.only(shared)
    overlap, warnings = check_overlap(run.path, table, exclude=False)
    store = EmbeddingStore(store or run.config.store)
    features = dense_features(table.paths, run.backbone, store, run.config.image_size, show_progress=show_progress)
    rows = np.arange(len(table))
    probabilities = predict_probabilities(run.head, features.rows, rows, run.config.image_size)
    index = [run.structures.index(name) for name in shared]
    per_image = score_methods(table, rows, {run.config.head: probabilities[:, index], PREDICT_NOTHING: None},
                              run.config.threshold, run.config.hd95)
    bootstrap = run.config.n_bootstrap if n_bootstrap is None else n_bootstrap
    return {
        "run": str(run.path),
        "data": str(data.csv),
        "method": run.config.head,
        "structures": shared,
        "n_images": len(table),
        "n_patients": int(pd.Series(table.patients).nunique()),
        "n_bootstrap": bootstrap,
        "hd95_computed": run.config.hd95,
        "per_method": summaries(per_image, bootstrap, run.config.seed),
        "overlap_with_training": {key: value for key, value in overlap.items() if key != "rows"},
        "warnings": warnings,
        "note": GENERAL_DOMAIN_NOTE if run.backbone.spec == "default" else "",
    }


def seg_predict_images(run_dir: str | Path, paths: list[str | Path], out_dir: str | Path,
                       structures: list[str] | None = None) -> list[dict]:
    """Write, per image, one mask PNG per structure (0/255, the image's own size) and an overlay PNG into
    ``out_dir``; returns what was written."""
    from retune.segmentation.overlay import mask_png, overlay

    run = load_seg_run(run_dir)
    wanted = structures or run.structures
    for name in wanted:
        if name not in run.structures:
            raise unknown_name("structure", name, run.structures)
    out_dir = Path(out_dir)
    written = []
    for path in paths:
        image = load_image(path)
        masks = run.segment(image)
        chosen = {name: masks[run.structures.index(name)] for name in wanted}
        stem = Path(path).stem
        files = {}
        for name, mask in chosen.items():
            target = out_dir / f"{stem}.{name}.png"
            with atomic_path(target) as temp:
                temp.write_bytes(mask_png(mask))
            files[name] = str(target)
        target = out_dir / f"{stem}.overlay.png"
        with atomic_path(target) as temp:
            overlay(image, [masks[run.structures.index(name)] for name in wanted]).save(temp, format="PNG")
        written.append({"image": str(path), "width": image.width, "height": image.height, "masks": files,
                        "overlay": str(target),
                        "pixels": {name: int(mask.sum()) for name, mask in chosen.items()}})
    return written


@register_run_kind(KIND)
def _refuse_as_classifier(run_dir: Path, checkpoint, store_dir, device, show_progress, cache=False):
    """Segmentation runs are not classifiers: ``retune evaluate`` / ``predict`` point to ``retune seg``."""
    raise ConfigError(f"{run_dir}: a segmentation run; use 'retune seg evaluate' or 'retune seg predict'")

