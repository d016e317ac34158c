"""The VQA and Dice tasks of ``retune adaptor bench``: each pre-trained adaptor as the fusion module of a closed-ended
VQA answerer, and its image tower's token states under a linear segmentation head; each task also runs once without
pre-training (the baseline row), on the same questions, masks, patients and budget."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from retune.backbones.base import Backbone
from retune.config import SplitConfig
from retune.data.images import load_image
from retune.data.masks import MaskTable, read_masks
from retune.data.questions import QuestionSetConfig, build_questions
from retune.data.splits import patient_split
from retune.data.table import ImageTable
from retune.errors import ConfigError, DataError
from retune.evaluation.segmentation import score_mask, summarize
from retune.evaluation.vqa import majority_answers, score_answers
from retune.experiments.adaptor import image_tokens
from retune.experiments.vqa import Prepared, all_texts, fit_answer_head, predicted_answers
from retune.methods.xattn_adaptor import CrossAttentionAdaptor, batched
from retune.objectives.config import BenchSegmentationTask, BenchVqaTask
from retune.segmentation.training import fit as fit_segmentation
from retune.segmentation.training import predict_probabilities
from retune.store import EmbeddingStore, embed_table
from retune.store.embed import text_token_embeddings
from retune.vqa import AnswerHead, ImageTokens, TextTokens, VqaNetwork

SEG_METHOD = "linear head"


def adaptor_shape(adaptor: CrossAttentionAdaptor) -> dict:
    """The widths an answer head needs to take this adaptor's towers."""
    return {"width": adaptor.image_head.in_features, "embed_dim": adaptor.image_head.out_features,
            "layers": len(adaptor.image_tower.blocks), "heads": adaptor.image_tower.pool.attn.num_heads}


class VqaTask:
    """Closed questions (yes/no and multiple choice) built from the bench table's labels on the bench's patient split,
    with cached image tokens (as the adaptors see them) and question/answer tokens."""

    def __init__(self, task: BenchVqaTask, table: ImageTable, tokens: torch.Tensor, split: SplitConfig,
                 backbone: Backbone, store: EmbeddingStore, max_text_tokens: int, seed: int) -> None:
        """``max_text_tokens``: the bench's, which the store pads every cached text of this backbone to."""
        self.task = task
        questions = QuestionSetConfig(held_out_phrasings=[], held_out_findings=[],
                                      choice_fraction=task.choice_fraction, split=split, seed=seed)
        self.frame = build_questions(table, questions)
        texts = all_texts(self.frame)
        text_tokens, text_mask = text_token_embeddings(texts, backbone, store, max_text_tokens)
        self.prepared = Prepared(backbone, ImageTokens(cached=tokens), TextTokens(texts, text_tokens, text_mask),
                                 {path: row for row, path in enumerate(table.paths)},
                                 {text: i for i, text in enumerate(texts)}, [])
        self.dims = {"image": tokens.shape[-1], "text": text_tokens.shape[-1]}
        self.test = self.frame[self.frame["split"] == "test"].reset_index(drop=True)

    def facts(self) -> dict:
        """The question counts and the majority answerer's accuracy on the same test questions."""
        train = self.frame[self.frame["split"] == "train"]
        majority = score_answers(self.test, majority_answers(train, self.test), 0)
        counts = self.frame["split"].value_counts()
        return {"n_questions": {split: int(counts.get(split, 0)) for split in ("train", "val", "test")},
                "majority_accuracy": majority["accuracy"], "epochs": self.task.epochs}

    def score(self, adaptor: CrossAttentionAdaptor | None, shape: dict, dropout: float, seed: int, n_bootstrap: int,
              min_positives: int) -> dict:
        """Fine-tune an answerer whose fusion towers start from ``adaptor`` (None: from scratch) and score its test
        accuracy (patient-bootstrap CI)."""
        torch.manual_seed(seed)
        head = AnswerHead(self.dims["image"], self.dims["text"], shape["width"], shape["layers"], shape["heads"], 1,
                          dropout, embed_dim=shape["embed_dim"]).to(self.prepared.backbone.device)
        if adaptor is not None:
            loaded = head.fusion.load_state_dict(adaptor.state_dict(), strict=False)
            if loaded.unexpected_keys:
                raise ConfigError(f"the adaptor does not fit the answerer: {loaded.unexpected_keys[:3]}")
        network = VqaNetwork(head, self.prepared.images, self.prepared.texts, {})
        result, epoch_seconds = fit_answer_head(network, self.frame, self.prepared, self.task.optim(), seed)
        answers, _ = predicted_answers(network, self.test, self.prepared)
        scores = score_answers(self.test, answers, n_bootstrap, seed, min_positives)
        return {"accuracy": scores["accuracy"], "accuracy_ci": scores.get("accuracy_ci"),
                "accuracy_yes_no": scores.get("accuracy_yes_no"), "accuracy_choice": scores.get("accuracy_choice"),
                "best_epoch": result.best_epoch, "seconds_per_epoch": float(np.median(epoch_seconds))}


def as_tower_sees(mask: np.ndarray, backbone: Backbone) -> torch.Tensor:
    """Share of each pixel of the backbone's own preprocessed view that a boolean mask covers (S x S in [0, 1]): the
    mask drawn as a black-and-white image goes through ``backbone.preprocess``, whatever its resizing and cropping,
    and the normalisation is undone against an all-black and an all-white image of the same size."""
    height, width = mask.shape
    drawn, black, white = (backbone.preprocess(Image.fromarray(pixels).convert("RGB")) for pixels in (
        np.where(mask, 255, 0).astype(np.uint8), np.zeros((height, width), np.uint8),
        np.full((height, width), 255, np.uint8)))
    return ((drawn - black) / (white - black)).mean(0).clamp(0, 1)


def centre_cropped(mask: np.ndarray, size: int) -> torch.Tensor:
    """A decoded mask under the image tower's geometry (shorter side resized to ``size``, nearest neighbour, then the
    centre ``size`` x ``size``), so each token sits over the pixels it was computed from."""
    height, width = mask.shape
    scale = size / min(height, width)
    resized = F.interpolate(torch.from_numpy(mask)[None, None].float(),
                            size=(max(size, round(height * scale)), max(size, round(width * scale))), mode="nearest")
    top, left = (resized.shape[2] - size) // 2, (resized.shape[3] - size) // 2
    return resized[0, 0, top : top + size, left : left + size].to(torch.int8)


def check_view(mask: np.ndarray, target: torch.Tensor, backbone: Backbone, where: str,
               min_overlap: float = 0.8) -> None:
    """Refuse a backbone whose preprocessing is not "shorter side resized, centre cropped": the masks are cut that
    way, and another geometry would score Dice against masks that do not sit under their tokens. Resampling moves
    only a mask's border, so the two views of one mask must overlap (IoU) by at least ``min_overlap``."""
    seen, cut = as_tower_sees(mask == 1, backbone) >= 0.5, target == 1
    overlap = float((seen & cut).sum()) / max(float((seen | cut).sum()), 1.0)
    if overlap < min_overlap:
        raise ConfigError(
            f"{where}: backbone '{backbone.spec}' does not resize the shorter side and centre-crop its images (the "
            f"mask as it sees it overlaps the centre-cropped one by IoU {overlap:.2f}), so the bench's Dice task "
            "cannot align its masks")


class SegmentationTask:
    """One structure of a mask table, its images' cached tokens (the same store and preprocessing as the bench's
    pairs) and masks in the tokens' centre-cropped view, split by patient."""

    def __init__(self, task: BenchSegmentationTask, backbone: Backbone, store: EmbeddingStore,
                 project: Callable[[torch.Tensor], torch.Tensor], show_progress: bool) -> None:
        self.task = task
        table = read_masks(task.csv)
        if task.structure not in table.structures:
            raise ConfigError(f"segmentation.structure: '{task.structure}' is not in {task.csv} "
                              f"({', '.join(table.structures)})")
        table = table.only([task.structure])
        table = table.subset(np.flatnonzero(table.annotated(task.structure)))
        summary = embed_table(table, backbone, store, tokens=True, show_progress=show_progress)
        if len(summary.errors):
            first = summary.errors.iloc[0]
            raise DataError(f"{task.csv}: image {first['path']} unreadable ({first['error']})")
        tokens = torch.from_numpy(np.ascontiguousarray(image_tokens(table, backbone, store))).to(backbone.device)
        side = int(round(tokens.shape[1] ** 0.5))
        if side * side != tokens.shape[1]:
            raise ConfigError(f"backbone '{backbone.spec}' gives {tokens.shape[1]} image tokens, not a square grid")
        self.table: MaskTable = table
        self.tokens, self.grid = project(tokens), side
        self.size = int(backbone.preprocess(load_image(table.paths[0])).shape[-1])  # the tower's square view
        self.targets = torch.stack([centre_cropped(table.load_mask(row, task.structure), self.size)[None]
                                    for row in range(len(table))])
        check_view(table.load_mask(0, task.structure), self.targets[0, 0], backbone, f"{task.csv} row 0")
        self.splits = patient_split(table.patients, task.split.fractions, task.split.seed)

    def facts(self) -> dict:
        """What the task scored: the mask table, structure, image counts, the token grid and the view's size."""
        return {"csv": str(self.task.csv), "structure": self.task.structure, "n_images": len(self.table),
                "n_test_images": len(self.splits["test"]), "grid": [self.grid, self.grid], "view": self.size,
                "epochs": self.task.epochs}

    def score(self, adaptor: CrossAttentionAdaptor | None, seed: int, n_bootstrap: int) -> dict:
        """Train a 1x1 linear head on the adaptor's image token states (None: on the tokens themselves) and score
        Dice on the test patients' centre-cropped masks (patient-bootstrap CI)."""
        with torch.no_grad():
            states = self.tokens if adaptor is None else batched(
                lambda tokens: adaptor.eval().image_tower(tokens, None)[0], self.tokens)
        # the head is tiny: it trains on the CPU beside the targets, whatever device the adaptor ran on
        maps = states.transpose(1, 2).reshape(len(states), -1, self.grid, self.grid).float().cpu()
        torch.manual_seed(seed)
        head: nn.Module = nn.Conv2d(maps.shape[1], 1, kernel_size=1)

        def inputs(rows: np.ndarray) -> torch.Tensor:
            return maps[torch.as_tensor(np.asarray(rows))]

        facts = fit_segmentation(head, inputs, self.targets, self.splits["train"], self.splits["val"],
                                 self.task.optim(), seed)
        test_rows = self.splits["test"]
        probabilities = predict_probabilities(head, inputs, test_rows, self.size)
        records = []
        for position, row in enumerate(test_rows):
            predicted = (probabilities[position, 0].float() >= 0.5).numpy()
            records.append({"patient_id": self.table.patients[row], "method": SEG_METHOD,
                            "structure": self.task.structure,
                            **score_mask(predicted, self.targets[row, 0].numpy(), with_hd95=False)})
        summary = summarize(pd.DataFrame.from_records(records), n_bootstrap, seed)[self.task.structure]
        return {"dice": summary["dice"], "dice_ci": summary.get("dice_ci"), "best_epoch": facts.get("best_epoch"),
                "seconds_per_epoch": facts["seconds_per_epoch"]}
