"""Closed-ended VQA experiments (MILE-style variants) as one Python API: train, evaluate with baselines, ask.

``run_vqa_experiment`` reads a question table (``data.questions``), caches image tokens (frozen image tower) and
question/answer tokens in the store, tunes the towers the config names through ``retune.tuning``'s registered
tuners, trains the answer head with the one training loop (early stopping on validation accuracy), writes a run
directory through ``run_folder.finish_run`` (``checkpoint.safetensors`` with trainable tensors only, ``config.json``,
``metrics.json``, ``RUN_CARD.md``, MLflow) and, for a question set built from labels, a RE-tune classifier on the same
training patients (``classifier/``), the classifier-as-answerer baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from retune.backbones.base import Backbone
from retune.backbones.registry import create_backbone
from retune.config import DataConfig, ExperimentConfig, OptimConfig, SplitConfig, TrainConfig, parse_config
from retune.data.images import load_image
from retune.data.pixels import pixel_inputs
from retune.data.questions import (
    CANDIDATE_SEPARATOR,
    MAX_QUESTION_CHARS,
    NO,
    PHRASINGS,
    YES,
    YES_NO,
    QuestionSetConfig,
    build_questions,
    question_facts,
    question_findings,
    read_questions,
    surface_forms,
    write_questions,
)
from retune.data.readers import read_table
from retune.data.table import PATH_COLUMN, PATIENT_COLUMN, ImageTable
from retune.errors import ConfigError, DataError, RetuneError, StoreError
from retune.evaluation.vqa import (
    classifier_answers,
    classifier_thresholds,
    majority_answers,
    random_answers,
    score_answers,
)
from retune.experiments.adaptor import image_tokens
from retune.experiments.kinds import SavedRun, register_run_kind
from retune.experiments.prepare import GENERAL_DOMAIN_NOTE, checked_backbone, read_data
from retune.experiments.run_folder import METRICS, finish_run
from retune.io_utils import read_json
from retune.methods.checkpoint import CheckpointFacts, load_checkpoint
from retune.profiling import peak_memory, timed
from retune.progress import progress_bar
from retune.store import EmbeddingStore, embed_table
from retune.store.embed import text_token_embeddings
from retune.training.loop import FitResult, fit
from retune.tuning.adapters import apply_tuning
from retune.tuning.model import parameter_report, trainable_encoder_parameters
from retune.vqa import AnswerHead, ImageTokens, QuestionBatch, TextTokens, VqaNetwork

KIND = "vqa"
CLASSIFIER_DIR = "classifier"


class VqaExperimentConfig(ExperimentConfig):
    """A VQA run: the question table, which towers are tuned and how (MILE variants), the answer head, training."""

    questions: Path | None = Field(None, description="Question table (qa.parquet from 'retune vqa build').")
    method: Literal["none", "lora", "ia3", "prefix", "prompt"] = Field(
        "none", description="none (frozen towers: fusion + head only), lora, ia3, prefix (text) or prompt (image).")
    tower: Literal["image", "text", "both"] | None = Field(
        None, description="Tower(s) tuned; default: image for prompt, text for the other methods.")
    rank: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator.")
    num_virtual_tokens: int = Field(8, ge=1, description="Prefix tokens per layer, or visual prompt tokens.")
    freeze_blocks: float = Field(0, ge=0, description="lora/ia3: keep the first k blocks of the tuned tower(s).")
    width: int = Field(64, ge=4, description="Fusion transformer width (divisible by heads).")
    layers: int = Field(1, ge=1, description="Self-attention layers per modality before fusion.")
    fusion_layers: int = Field(1, ge=1, description="Bi-directional cross-attention layers.")
    heads: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_text_tokens: int = Field(32, ge=4, description="Question and answer tokens kept (and cached) per text.")
    optim: OptimConfig = OptimConfig(lr=1e-3, weight_decay=0.01, epochs=8, batch_size=32, patience=3, min_epochs=2,
                                     precision="fp32")
    classifier: bool = Field(True, description="Also train the classifier-as-answerer (question sets from labels).")
    n_bootstrap: int = Field(1000, ge=0)

    @property
    def towers(self) -> list[str]:
        if self.method == "none":
            return []
        tower = self.tower or ("image" if self.method == "prompt" else "text")
        return ["image", "text"] if tower == "both" else [tower]

    @property
    def variant(self) -> str:
        """``frozen`` or ``<method>-<tower>``, as the variant table names runs."""
        return "frozen" if self.method == "none" else f"{self.method}-{self.tower or self.towers[0]}"


class VqaRunFacts(CheckpointFacts):
    """``config.json`` of a VQA run directory."""

    kind: Literal["vqa"]
    backbone: dict
    train_config: dict
    texts: list[str]
    token_dims: dict[str, int]


# ---------------------------------------------------------------- preparing inputs


def _unique_images(frame: pd.DataFrame, where: str) -> ImageTable:
    """The distinct images of a question table (one row each); a missing image file is one error naming the row."""
    present: dict[str, bool] = {}
    for position, (qid, path) in enumerate(frame[["question_id", "image_path"]].itertuples(index=False)):
        if path not in present:
            present[path] = Path(path).is_file()
        if not present[path]:
            raise DataError(f"{where}: row {position} ({qid}): image {path} not found")
    images = frame.drop_duplicates("image_path")[["image_path", "patient_id"]].reset_index(drop=True)
    return ImageTable(images.rename(columns={"image_path": PATH_COLUMN, "patient_id": PATIENT_COLUMN}), [])


def all_texts(frame: pd.DataFrame) -> list[str]:
    """Every question and candidate answer of a question table, once each (sorted)."""
    answers = {answer for value in frame["candidates"] for answer in str(value).split(CANDIDATE_SEPARATOR)}
    return sorted(set(frame["question"]) | answers)


def question_batch(frame: pd.DataFrame, image_row: dict[str, int], text_id: dict[str, int]) -> QuestionBatch:
    """A question table as indices into the image rows and the text list."""
    candidates = [str(value).split(CANDIDATE_SEPARATOR) for value in frame["candidates"]]
    width = max((len(options) for options in candidates), default=1)
    matrix = torch.full((len(frame), width), -1, dtype=torch.long)
    for row, options in enumerate(candidates):
        matrix[row, : len(options)] = torch.tensor([text_id[option] for option in options])
    target = [options.index(answer) for options, answer in zip(candidates, frame["answer"])]
    return QuestionBatch(
        torch.tensor([image_row[path] for path in frame["image_path"]], dtype=torch.long),
        torch.tensor([text_id[question] for question in frame["question"]], dtype=torch.long),
        matrix,
        torch.tensor(target, dtype=torch.long),
    )


@dataclass
class Prepared:
    """A backbone tuned as the config says, the token sources over a question table's images and texts."""

    backbone: Backbone
    images: ImageTokens
    texts: TextTokens
    image_row: dict[str, int]  # image path -> row of the token source
    text_id: dict[str, int]
    unreadable: list[str]


def _tune(config: VqaExperimentConfig, backbone: Backbone) -> None:
    """Apply the config's tuner to its towers, in place (seeded adapter initialisation); frozen runs: nothing."""
    if config.towers:
        torch.manual_seed(config.seed)
        apply_tuning(backbone, config.towers, config.method, config.freeze_blocks, config.rank, config.alpha,
                     num_virtual_tokens=config.num_virtual_tokens)


def prepare(config: VqaExperimentConfig, frame: pd.DataFrame, texts: list[str], store: EmbeddingStore, where: str,
            show_progress: bool = False, backbone: Backbone | None = None) -> Prepared:
    """Frozen tokens cached in the store first (images, when the image tower stays frozen; texts always, for their
    token counts), then the tuning applied and the token sources built."""
    backbone = backbone or create_backbone(config.backbone, device=config.device)
    table = _unique_images(frame, where)
    tokens, mask = text_token_embeddings(texts, backbone, store, config.max_text_tokens)
    towers = config.towers
    _tune(config, backbone)
    if "image" in towers:
        pixels, rows = pixel_inputs(table.paths, backbone, memory_budget=0)  # decoded per batch: memory stays small
        images = ImageTokens(pixels=pixels, backbone=backbone)
    else:
        summary = embed_table(table, backbone, store, tokens=True, show_progress=show_progress)
        failed = set(summary.errors["path"]) if len(summary.errors) else set()
        rows = np.array([row for row, path in enumerate(table.paths) if path not in failed], dtype=int)
        if not len(rows):
            raise DataError(f"{where}: none of its {len(table)} images could be read")
        images = ImageTokens(cached=torch.from_numpy(np.ascontiguousarray(
            image_tokens(table.subset(rows), backbone, store))))
    readable = [table.paths[row] for row in rows]
    texts_source = TextTokens(texts, tokens, mask, backbone if "text" in towers else None)
    return Prepared(backbone, images, texts_source, {path: i for i, path in enumerate(readable)},
                    {text: i for i, text in enumerate(texts)}, sorted(set(table.paths) - set(readable)))


def _answerable(frame: pd.DataFrame, prepared: Prepared) -> pd.DataFrame:
    return frame[frame["image_path"].isin(prepared.image_row.keys())].reset_index(drop=True)


def token_dims(prepared: Prepared) -> dict[str, int]:
    """Widths of the image and text tokens the sources give (recorded in config.json)."""
    with torch.no_grad():
        return {"image": int(prepared.images(torch.tensor([0])).shape[-1]),
                "text": int(prepared.texts(torch.tensor([0]))[0].shape[-1])}


def _build_network(config: VqaExperimentConfig, prepared: Prepared, dims: dict[str, int]) -> VqaNetwork:
    torch.manual_seed(config.seed)
    head = AnswerHead(dims["image"], dims["text"], config.width, config.layers, config.heads, config.fusion_layers,
                      config.dropout).to(prepared.backbone.device)
    return VqaNetwork(head, prepared.images, prepared.texts, trainable_encoder_parameters(prepared.backbone))


def predicted_answers(network: VqaNetwork, frame: pd.DataFrame, prepared: Prepared) -> tuple[list[str], np.ndarray]:
    """The network's answer to every question of ``frame`` and its probability of "yes" (NaN for other types)."""
    if not len(frame):
        return [], np.zeros(0)
    batch = question_batch(frame, prepared.image_row, prepared.text_id)
    probabilities = network.probabilities(batch)
    best = probabilities.argmax(axis=1)
    options = [str(value).split(CANDIDATE_SEPARATOR) for value in frame["candidates"]]
    answers = [opts[int(b)] for opts, b in zip(options, best)]
    p_yes = np.array([p[opts.index(YES)] if kind == YES_NO else np.nan
                      for p, opts, kind in zip(probabilities, options, frame["type"])])
    return answers, p_yes


# ---------------------------------------------------------------- building a question set


def build_question_file(data: DataConfig, out: str | Path, config: QuestionSetConfig | None = None) -> pd.DataFrame:
    """Questions from a labelled table (``data.questions.build_questions``) written to ``out`` (Parquet) with how
    they were built (the labels' data config, findings, held-out parts, split) in the file's metadata."""
    config = config or QuestionSetConfig()
    table = read_data(data)
    frame = build_questions(table, config)
    facts = {
        "data": data.model_copy(update={"csv": Path(data.csv).resolve()}).model_dump(mode="json"),
        "findings": question_findings(list(table.classes)),
        "held_out_findings": frame.attrs["held_out_findings"],
        "held_out_phrasings": [PHRASINGS[i] for i in config.held_out_phrasings],
        "phrasings": list(PHRASINGS),
        "split": config.split.model_dump(mode="json"),
        "config": config.model_dump(mode="json"),
    }
    write_questions(frame, out, facts)
    return frame


# ---------------------------------------------------------------- training


def _train_facts(frame: pd.DataFrame) -> dict:
    """What the run trained on, and the questions of every split by type (for the run card)."""
    train = frame[frame["split"] == "train"]
    counts = frame.groupby(["split", "type"]).size()
    return {"n_questions": int(len(train)), "n_images": int(train["image_path"].nunique()),
            "findings": sorted({f for f in train.loc[train["type"] == YES_NO, "finding"]}),
            "counts": {split: {kind: int(n) for kind, n in counts[split].items()}
                       for split in ("train", "val", "test") if split in counts.index.get_level_values(0)}}


def run_vqa_experiment(config: VqaExperimentConfig, out_dir: str | Path, show_progress: bool = False) -> dict:
    """Train a VQA variant on the question table's training split, score its test split with the baselines, write
    the run directory. Returns metrics.json's content."""
    started = time.perf_counter()
    if config.questions is None:
        raise ConfigError("no questions: pass --questions qa.parquet or set questions in the config")
    out_dir = Path(out_dir)
    frame = read_questions(config.questions)
    train_part = frame[frame["split"] == "train"]
    if not len(train_part):
        raise DataError(f"{config.questions}: no training questions (split == 'train')")
    texts = all_texts(frame)
    store = EmbeddingStore(config.store)
    prepared = prepare(config, frame, texts, store, str(config.questions), show_progress)
    frame = _answerable(frame, prepared)
    dims = token_dims(prepared)
    network = _build_network(config, prepared, dims)
    with peak_memory(prepared.backbone.device) as memory:
        train_clock = timed()
        result, epoch_seconds = fit_answer_head(network, frame, prepared, config.optim, config.seed,
                                                f"training vqa {config.variant}", show_progress)
        train_seconds = train_clock()
    parameters = parameter_report(prepared.backbone, network)
    tensors = {key: value.detach().float().cpu().numpy() for key, value in network.state_dict().items()}
    question_file = question_facts(config.questions)
    facts = {
        "backbone": prepared.backbone.describe(),
        "train_config": config.model_dump(mode="json"),
        "texts": texts,
        "token_dims": dims,
        "questions": {"path": str(config.questions), **_train_facts(frame), "built": question_file},
        "training": {config.variant: result.facts()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    classifier = None
    if config.classifier and question_file.get("data"):
        classifier = train_classifier(config, question_file, out_dir / CLASSIFIER_DIR, show_progress)
    metrics = {
        "variant": config.variant,
        "tuning": {"method": config.method, "towers": config.towers},
        **parameters,
        **memory,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "seconds_per_epoch": round(float(np.mean(epoch_seconds)), 3) if epoch_seconds else None,
        "train_seconds": round(train_seconds, 3),
        "training": {**result.facts(), "train_loss": result.train_loss},
        "unreadable_images": prepared.unreadable,
        "note": GENERAL_DOMAIN_NOTE if config.backbone == "default" else "",
        "classifier_run": None if classifier is None else CLASSIFIER_DIR,
    }
    evaluation = evaluate_answers(network, prepared, frame, out_dir, "test", config.n_bootstrap, config.seed,
                                  config.min_positives)
    metrics.update({"test": evaluation, "seconds": round(time.perf_counter() - started, 2)})
    finish_run(out_dir, KIND, {config.variant: (tensors, {"variant": config.variant})}, facts, metrics, {},
               facts["training"], config.tracking_uri,
               extra_metrics={f"test_{k}": v for k, v in evaluation["scores"]["vqa"].items() if isinstance(v, float)})
    return metrics


def fit_answer_head(network: VqaNetwork, frame: pd.DataFrame, prepared: Prepared, optim: OptimConfig, seed: int,
                    label: str = "training vqa", show_progress: bool = False) -> tuple[FitResult, list[float]]:
    """Train ``network`` on the training questions of ``frame`` with the one training loop, batching by image (each
    image's questions together), keeping the epoch with the best accuracy on the validation questions of seen
    findings and phrasings. Returns the fit and the seconds of each epoch."""
    train, val = frame[frame["split"] == "train"], frame[frame["split"] == "val"]
    val_seen = val[~val["unseen_phrasing"] & ~val["unseen_finding"]].reset_index(drop=True)
    train_batch = question_batch(train.reset_index(drop=True), prepared.image_row, prepared.text_id)
    questions_of = pd.Series(np.arange(len(train_batch))).groupby(train_batch.image.numpy()).apply(np.asarray)
    images = torch.tensor(sorted(questions_of.index), dtype=torch.long)
    per_image = {int(image): torch.tensor(rows, dtype=torch.long) for image, rows in questions_of.items()}

    def loss_fn(batch_images: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        rows = torch.cat([per_image[int(image)] for image in batch_images])
        return network.loss(train_batch.subset(rows))

    def val_score() -> float | None:
        if not len(val_seen):
            return None
        answers, _ = predicted_answers(network, val_seen, prepared)
        return float(np.mean([a == b for a, b in zip(answers, val_seen["answer"])]))

    epoch_seconds: list[float] = []
    clock = [timed()]

    def on_epoch(epoch: int, loss: float, score: float | None) -> None:
        epoch_seconds.append(round(clock[0](), 3))
        clock[0] = timed()

    with progress_bar(label, total=optim.epochs * len(images), enabled=show_progress, unit="images") as advance:
        result = fit(network, network.parameters(), loss_fn, images, images, optim, val_score, seed,
                     progress=advance, on_epoch=on_epoch)
    return result, epoch_seconds


def train_classifier(config: VqaExperimentConfig, question_file: dict, out_dir: Path, show_progress: bool) -> dict:
    """The classifier-as-answerer: ``retune train`` (RE-tune, no baselines) on the labels the questions came from,
    the same patient split, and the findings asked in training only."""
    from retune.experiments.train import train_run

    data = DataConfig.model_validate(question_file["data"])
    findings = [name for name in question_file["findings"] if name not in question_file["held_out_findings"]]
    train_config = TrainConfig(backbone=config.backbone, store=config.store, data=data.model_copy(
        update={"classes": findings}), split=SplitConfig.model_validate(question_file["split"]), seed=config.seed,
        device=config.device, baselines=[], n_bootstrap=0, tracking_uri=config.tracking_uri)
    return train_run(train_config, out_dir, show_progress=show_progress)


# ---------------------------------------------------------------- evaluation


def evaluate_answers(network: VqaNetwork, prepared: Prepared, frame: pd.DataFrame, run_dir: Path, split: str,
                     n_bootstrap: int, seed: int, min_positives: int) -> dict:
    """Scores of the run and of the random, majority and classifier answerers on the same questions (``split``
    rows, or all), each with patient-bootstrap CIs."""
    if split not in ("test", "val", "all"):
        raise ConfigError(f"unknown split '{split}'; valid: test, val, all")
    scored = (frame if split == "all" else frame[frame["split"] == split]).reset_index(drop=True)
    if not len(scored):
        raise DataError(f"no questions in split '{split}' to score")
    answers, p_yes = predicted_answers(network, scored, prepared)
    train = frame[frame["split"] == "train"]
    answerers = {"vqa": answers, "random": random_answers(scored, seed),
                 "majority": majority_answers(train if len(train) else scored, scored)}
    classifier_dir = run_dir / CLASSIFIER_DIR
    if (classifier_dir / METRICS).is_file():
        answerers["classifier"] = classifier_as_answerer(classifier_dir, frame, scored, prepared.backbone)
    return {
        "split": split,
        "n_questions": len(scored),
        "scores": {name: score_answers(scored, predicted, n_bootstrap, seed, min_positives)
                   for name, predicted in answerers.items()},
    }


def classifier_as_answerer(classifier_dir: Path, frame: pd.DataFrame, scored: pd.DataFrame,
                           backbone: Backbone) -> list[str | None]:
    """Answers of the saved classifier run: thresholds chosen on the validation images of ``frame``, applied to the
    images of ``scored``."""
    from retune.experiments.inference import open_run

    saved = open_run(classifier_dir, device=str(backbone.device))
    data = DataConfig.model_validate(saved.config["data"])
    table = read_table(data.csv, data.format, image_root=data.image_root, uncertainty=data.uncertainty,
                       classes=saved.classes, allow_outside_root=data.allow_outside_root)
    wanted = set(frame.loc[frame["split"] == "val", "image_path"]) | set(scored["image_path"])
    rows = [row for row, path in enumerate(table.paths) if path in wanted]
    scores, kept, _ = saved.score(table.subset(rows))
    probabilities = scores[saved.main]
    paths = [table.paths[rows[k]] for k in kept]
    index = {path: i for i, path in enumerate(paths)}
    val_paths = set(frame.loc[frame["split"] == "val", "image_path"])
    val_rows = [i for i, path in enumerate(paths) if path in val_paths]
    labels = table.subset([rows[k] for k in kept]).labels(saved.classes)
    thresholds = classifier_thresholds(probabilities[val_rows], labels[val_rows], saved.classes)
    column = {name: c for c, name in enumerate(saved.classes)}

    def probability(image: str, finding: str) -> float:
        return float(probabilities[index[image], column[finding]]) if image in index else float("nan")

    return classifier_answers(scored, probability, thresholds)


# ---------------------------------------------------------------- loading a run back


@dataclass
class VqaRun:
    """A saved VQA run rebuilt for answering: the tuned backbone, the network and its store."""

    path: Path
    config: VqaExperimentConfig
    facts: dict
    network: VqaNetwork
    prepared: Prepared
    store: EmbeddingStore


def load_vqa_run(run_dir: str | Path, frame: pd.DataFrame | None = None, store_dir: str | Path | None = None,
                 device: str | None = None) -> VqaRun:
    """Rebuild a run over the images and texts of ``frame`` (default: no image): same backbone (fingerprint checked),
    same tuning, saved tensors loaded; new texts are encoded by the run's text tower."""
    run_dir = Path(run_dir)
    tensors, facts = load_checkpoint(run_dir, VqaRunFacts)
    if facts.get("kind") != KIND:
        raise ConfigError(f"{run_dir}: not a VQA run (kind '{facts.get('kind')}')")
    config = parse_config(facts["train_config"], VqaExperimentConfig, f"{run_dir}/config.json: train_config")
    if device:
        config = config.model_copy(update={"device": device})
    store = EmbeddingStore(store_dir or config.store)
    frame = frame if frame is not None else pd.DataFrame(columns=["image_path", "patient_id", "question_id"])
    texts = sorted(set(facts["texts"]) | (set(all_texts(frame)) if len(frame) else set()))
    backbone = checked_backbone(run_dir, facts, config.device)
    prepared = (prepare(config, frame, texts, store, str(run_dir), backbone=backbone) if len(frame)
                else _texts_only(config, texts, store, backbone))
    network = _build_network(config, prepared, facts["token_dims"])
    saved = {key: torch.as_tensor(value) for key, value in tensors.get(config.variant, {}).items()}
    try:
        missing, unexpected = network.load_state_dict(saved, strict=False)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:300]
        raise StoreError(f"{run_dir}: tensors do not fit the VQA model ({reason})") from None
    if missing or unexpected:
        raise StoreError(f"{run_dir}: checkpoint does not match the VQA model ({len(missing)} tensors missing, "
                         f"{len(unexpected)} unexpected; e.g. {(missing + unexpected)[0]})")
    return VqaRun(run_dir, config, facts, network.eval(), prepared, store)


def _texts_only(config: VqaExperimentConfig, texts: list[str], store: EmbeddingStore, backbone: Backbone) -> Prepared:
    """Token sources for asking about images held in memory: texts as in ``prepare``; images come later."""
    tokens, mask = text_token_embeddings(texts, backbone, store, config.max_text_tokens)
    _tune(config, backbone)
    no_images = torch.zeros(0, 1, 1)
    return Prepared(backbone, ImageTokens(cached=no_images), TextTokens(texts, tokens, mask,
                    backbone if "text" in config.towers else None), {}, {t: i for i, t in enumerate(texts)}, [])


def evaluate_vqa_run(run_dir: str | Path, questions: str | Path, split: str = "auto", n_bootstrap: int = 1000,
                     store_dir: str | Path | None = None, device: str | None = None) -> dict:
    """Score a run on a question table with the baselines (``auto``: its test split when the run trained on this
    table, else every question); questions on images the run trained on are counted in ``training_overlap``."""
    frame = read_questions(questions)
    facts = load_checkpoint(run_dir, VqaRunFacts)[1]
    same = Path(questions).resolve() == Path(facts["questions"]["path"]).resolve()
    split = ("test" if same else "all") if split == "auto" else split
    run = load_vqa_run(run_dir, frame, store_dir, device)
    frame = _answerable(frame, run.prepared)
    config = run.config
    result = evaluate_answers(run.network, run.prepared, frame, Path(run_dir), split, n_bootstrap, config.seed,
                              config.min_positives)
    if not same:
        trained = read_questions(facts["questions"]["path"]) if Path(facts["questions"]["path"]).is_file() else None
        seen = set() if trained is None else set(trained.loc[trained["split"] != "test", "image_path"])
        scored = frame if split == "all" else frame[frame["split"] == split]
        result["training_overlap"] = int(scored["image_path"].isin(seen).sum())
    result["variant"] = config.variant
    result["note"] = GENERAL_DOMAIN_NOTE if config.backbone == "default" else ""
    return result


def ask(run_dir: str | Path, image: str | Path, question: str, store_dir: str | Path | None = None,
        device: str | None = None) -> dict:
    """Answer one yes/no question about one image: {"answer", "p_yes"}; bad input is one RetuneError line."""
    question = " ".join(str(question).split())
    if not question:
        raise DataError("empty question")
    if len(question) > MAX_QUESTION_CHARS:
        raise DataError(f"question of {len(question)} characters (max {MAX_QUESTION_CHARS})")
    pixels = load_image(image)  # one DataError line for a missing or non-image file
    run = load_vqa_run(run_dir, store_dir=store_dir, device=device)
    add_texts(run, [question])
    return {"question": question, **answer_pixels(run, run.prepared.backbone.preprocess(pixels)[None], [question])[0]}


def add_texts(run: VqaRun, texts: list[str]) -> None:
    """Make new ``texts`` (questions) answerable by a loaded run: their tokens from its text tower, kept in memory
    (a tuned tower re-encodes them on every call; only their token count is kept)."""
    new = [text for text in dict.fromkeys(texts) if text not in run.prepared.text_id]
    if not new:
        return
    source = run.prepared.texts
    width = source.max_tokens
    with torch.no_grad():
        hidden = [run.prepared.backbone.encode_texts([text], tokens=True).tokens[0, :width].float().cpu()
                  for text in new]
    tokens = torch.zeros(len(new), width, hidden[0].shape[1])
    mask = torch.zeros(len(new), width, dtype=torch.bool)
    for row, vectors in enumerate(hidden):
        tokens[row, : len(vectors)], mask[row, : len(vectors)] = vectors, True
    old_tokens = source.tokens if source.tokens is not None else torch.zeros(len(source.texts), *tokens.shape[1:])
    run.prepared.texts = TextTokens(source.texts + new, torch.cat([old_tokens, tokens]).numpy(),
                                    torch.cat([source.mask, mask]).numpy(), source.backbone)
    run.prepared.text_id = {text: i for i, text in enumerate(run.prepared.texts.texts)}
    run.network.texts = run.prepared.texts


def answer_pixels(run: VqaRun, pixels: torch.Tensor, questions: list[str]) -> list[dict]:
    """The run's yes/no answers to ``questions`` (texts it knows: see ``add_texts``) about one preprocessed image
    (1 x C x H x W) held in memory: {"answer", "p_yes"} each."""
    backbone = run.prepared.backbone
    with torch.no_grad():
        tokens = backbone.encode_images(pixels.to(backbone.device), tokens=True).tokens.float()
    run.network.images = ImageTokens(cached=tokens)
    frame = pd.DataFrame({"image_path": "", "question": questions, "type": YES_NO, "answer": YES,
                          "candidates": f"{YES}{CANDIDATE_SEPARATOR}{NO}"})
    answers, p_yes = predicted_answers(run.network, frame, Prepared(backbone, run.network.images, run.prepared.texts,
                                       {"": 0}, run.prepared.text_id, []))
    return [{"answer": answer, "p_yes": round(float(p), 4)} for answer, p in zip(answers, p_yes)]


@register_run_kind(KIND)
def open_vqa_run(run_dir: Path, checkpoint: tuple[dict, dict], store_dir: str | Path | None, device: str | None,
                 show_progress: bool, cache: bool = False) -> SavedRun:
    """A VQA run as a classifier: each finding it was trained on, scored as P(yes) to "Is there {finding}?"."""
    asked = checkpoint[1].get("questions", {})
    findings = question_findings(asked.get("findings", [])) if asked.get("built", {}).get("data") else []
    if not findings:
        raise ConfigError(f"{run_dir}: this VQA run was not trained on label-derived findings; use 'retune vqa ask'")
    questions = [PHRASINGS[0].format(finding=surface_forms(finding)[0]) for finding in findings]
    run = load_vqa_run(run_dir, store_dir=store_dir, device=device)
    add_texts(run, questions)

    def score(table: ImageTable) -> tuple[dict[str, np.ndarray], np.ndarray, pd.DataFrame]:
        rows, scores, failed = [], [], []
        for row, path in enumerate(table.paths):
            try:
                pixels = run.prepared.backbone.preprocess(load_image(path))[None]
            except RetuneError as error:
                failed.append((path, str(error)))
                continue
            rows.append(row)
            scores.append([answer["p_yes"] for answer in answer_pixels(run, pixels, questions)])
        matrix = np.asarray(scores, dtype=np.float32).reshape(len(rows), len(findings))
        return {KIND: matrix}, np.asarray(rows, dtype=int), pd.DataFrame(failed, columns=["path", "reason"])

    facts = {**run.facts, "classes": findings}
    return SavedRun(facts, run.facts["train_config"], run.prepared.backbone, findings, KIND, score)


def read_metrics(run_dir: str | Path) -> dict:
    """A VQA run's metrics.json."""
    return read_json(Path(run_dir) / METRICS)
