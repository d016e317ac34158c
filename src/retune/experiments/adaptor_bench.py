"""``retune adaptor bench``: pre-train the Adaptor with each objective mix and seed on cached tokens, and evaluate
every run on the same test patients and tasks.

Tasks: prompt-based zero-shot classification through the trained adaptor (per-class AUROC, the mean over classes
with enough positives), linear probes on adapted features at each label fraction, image<->text Recall@K on the
held-out pairs and, when the config has them, VQA accuracy with the adaptor as the answerer's fusion module and Dice
of a linear head on its image token states (``adaptor_bench_tasks``). Mean +- sd over seeds; patient-bootstrap CIs
for the first seed; seconds per training epoch. Writes
``bench.json``, ``bench_config.json`` and one run folder per mix and seed (checkpoint, config.json, metrics.json,
RUN_CARD.md, through ``run_folder.finish_run``), whose MLflow runs share the bench folder's ``mlruns/``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from retune.backbones.base import Backbone
from retune.backbones.registry import create_backbone
from retune.data.images import load_image
from retune.data.splits import patient_split
from retune.errors import ConfigError
from retune.evaluation.metrics import mean_and_sd, patient_resamples
from retune.evaluation.retrieval import recall_at_k
from retune.experiments.adaptor import image_tokens, label_efficiency
from retune.experiments.adaptor_bench_tasks import SegmentationTask, VqaTask, adaptor_shape
from retune.experiments.prepare import (
    GENERAL_DOMAIN_NOTE,
    checked_backbone,
    embed_and_load,
    metrics_record,
    read_data,
    split_facts,
)
from retune.experiments.run_folder import finish_run, tracking_uri
from retune.io_utils import write_json_atomic
from retune.methods.checkpoint import load_checkpoint
from retune.methods.xattn_adaptor import CrossAttentionAdaptor, PairData, adaptor_retrieval, batched, model_state
from retune.objectives import (
    ObjectiveContext,
    ObjectiveMix,
    ObjectivesBenchConfig,
    TokenPairs,
    parse_mix,
    pretrain_mix,
)
from retune.objectives.caption import CaptionObjective
from retune.objectives.pairs import PairTexts, csv_pair_texts, label_pair_texts, read_pair_csv, text_only_texts
from retune.progress import progress_bar
from retune.prompts import build_prompts, prompt_texts
from retune.report.tracking import numeric_leaves
from retune.store import EmbeddingStore, embed_table
from retune.store.embed import text_token_embeddings

KIND = "adaptor-objectives"
ADAPTOR = "adaptor"
TOKEN_PROJECTION = "token_projection"
RECALL_KS = (1, 5, 10)
NOT_CONFIGURED = {
    "vqa_accuracy": "not run: the config has no vqa section (or the data no label columns to ask about)",
    "dice": "not run: the config has no segmentation section",
}
BASELINE_ROW = "no pre-training"  # probes on frozen features, VQA fusion from scratch, Dice head on the input tokens
CAPTION_SAMPLES = 3


def warn_truncated(texts: list[str], mask: np.ndarray, limit: int) -> int:
    """Say once how many texts fill every one of the ``limit`` cached token slots (so are cut there); return it."""
    full = np.flatnonzero(mask[:, -1]) if mask.shape[1] == limit else np.array([], dtype=int)
    if len(full):
        warnings.warn(
            f"{len(full)} text(s) reach the text limit of {limit} tokens and are truncated there (e.g. "
            f"'{texts[full[0]][:60]}...'); raise max_text_tokens to keep more",
            stacklevel=2,
        )
    return int(len(full))


def _tokens(texts: list[str], backbone: Backbone, store: EmbeddingStore, limit: int) -> tuple[torch.Tensor, ...]:
    tokens, mask = text_token_embeddings(texts, backbone, store, limit)
    return torch.from_numpy(tokens).to(backbone.device), torch.from_numpy(mask).to(backbone.device)


def retrieval_with_ci(
    adaptor: CrossAttentionAdaptor, test: PairData, patients: np.ndarray, n_bootstrap: int, seed: int
) -> dict:
    """The adaptor's retrieval metrics on ``test``, plus patient-bootstrap CIs of image->text R@K."""
    metrics = adaptor_retrieval(adaptor, test)
    if not n_bootstrap:
        return metrics
    image = batched(adaptor.encode_image, test.image_tokens).cpu().numpy()
    text = batched(adaptor.encode_text, test.text_tokens, test.text_mask).cpu().numpy()
    text_index = test.text_index.cpu().numpy()
    used = np.unique(text_index)
    similarity, column = image @ text[used].T, np.searchsorted(used, text_index)
    codes = np.unique(patients, return_inverse=True)[1].reshape(-1)
    replicates = [recall_at_k(similarity[rows], RECALL_KS, column[rows]) for rows in
                  patient_resamples(codes, n_bootstrap, seed)]
    metrics["image_to_text_ci"] = {
        key: [float(v) for v in np.quantile([r[key] for r in replicates], [0.025, 0.975])] for key in replicates[0]
    }
    return metrics


def fit_token_projection(tokens: torch.Tensor, dim: int, seed: int, max_rows: int = 20_000) -> dict[str, torch.Tensor]:
    """Mean and top-``dim`` principal directions (D x dim) of token vectors (N x T x D), from at most ``max_rows``
    seeded random tokens."""
    flat = tokens.reshape(-1, tokens.shape[-1]).float()
    if len(flat) > max_rows:
        picked = torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:max_rows]
        flat = flat[picked.to(flat.device)]
    mean = flat.mean(0)
    centred = flat - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    return {"mean": mean, "components": vectors[:, -dim:].flip(1).contiguous()}


def project_tokens(tokens: torch.Tensor, projection: dict[str, torch.Tensor]) -> torch.Tensor:
    """Tokens (N x T x D) on the projection's principal directions (N x T x dim)."""
    return (tokens.float() - projection["mean"]) @ projection["components"]


def zero_shot_scores(adaptor: CrossAttentionAdaptor, image: torch.Tensor, prompts: dict, tokens: dict) -> np.ndarray:
    """Per class: cosine to the mean adapted positive-prompt embedding minus that to the negative one (images x
    classes)."""
    columns = []
    for class_prompts in prompts.values():
        sides = []
        for texts in (class_prompts.positive, class_prompts.negative):
            rows = [tokens["index"][text] for text in texts]
            embedded = adaptor.encode_text(tokens["tokens"][rows], tokens["mask"][rows])
            sides.append(F.normalize(embedded.mean(0), dim=0))
        columns.append(image @ (sides[0] - sides[1]))
    return torch.stack(columns, dim=1).cpu().numpy()


class BenchData:
    """Everything every run shares: table, splits, cached token pairs and, unless ``training_only``, the zero-shot
    prompts and the frozen probe baseline."""

    def __init__(
        self, config: ObjectivesBenchConfig, backbone: Backbone, show_progress: bool, training_only: bool = False
    ) -> None:
        self.config, self.backbone = config, backbone
        store = EmbeddingStore(config.store)
        source_csv = config.pairs.source == "csv"
        table, self.n_empty_texts = read_pair_csv(config.data, config.pairs) if source_csv else (
            read_data(config.data), 0)
        embed_table(table, backbone, store, tokens=True, show_progress=show_progress)
        embedded = embed_and_load(table, backbone, store, show_progress=False)
        self.table, self.pooled, self.n_failed = embedded.table, embedded.images, embedded.n_failed
        self.splits = patient_split(self.table.patients, config.split.fractions, config.split.seed)
        self.texts: PairTexts = (
            csv_pair_texts(self.table, config.pairs.text_column)
            if source_csv
            else label_pair_texts(self.table, config.pairs.phrasings, self.splits["train"], config.split.seed)
        )
        unique, text_index = np.unique(np.asarray(self.texts.texts, dtype=object), return_inverse=True)
        self.unique_texts = [str(text) for text in unique]
        text_tokens, text_mask = _tokens(self.unique_texts, backbone, store, config.max_text_tokens)
        self.n_truncated = warn_truncated(self.unique_texts, text_mask.cpu().numpy(), config.max_text_tokens)
        device = backbone.device
        tokens = torch.from_numpy(np.ascontiguousarray(image_tokens(self.table, backbone, store))).to(device)
        self.projection = None
        if config.image_token_dim is not None and config.image_token_dim < tokens.shape[2]:
            train_rows = torch.as_tensor(self.splits["train"], device=device)
            self.projection = fit_token_projection(tokens[train_rows], config.image_token_dim, config.split.seed)
            tokens = project_tokens(tokens, self.projection)
        self.pairs = PairData(tokens, text_tokens, text_mask, torch.as_tensor(text_index.reshape(-1), device=device))
        self.groups = torch.as_tensor(self.texts.groups, dtype=torch.long, device=device)
        self.train_texts = [self.texts.texts[row] for row in self.splits["train"]]  # one per training image
        uses_text_only = any("unimodal" in parse_mix(mix) for mix in config.mix_specs().values())
        self.text_only = None
        self.n_text_only = 0
        if config.pairs.text_only is not None and uses_text_only:
            extra = text_only_texts(config.pairs.text_only, config.pairs.text_only_limit)
            self.n_text_only = len(extra)
            extra_tokens, extra_mask = _tokens(extra, backbone, store, config.max_text_tokens)
            self.text_only = (extra_tokens, extra_mask)
        self.classes = list(self.table.classes)
        self.prompts = build_prompts(config.prompts, self.classes) if self.classes and not training_only else {}
        texts = prompt_texts(self.prompts) if self.prompts else []
        prompt_tokens, prompt_mask = _tokens(texts, backbone, store, config.max_text_tokens) if texts else (None, None)
        self.prompt_tokens = {"index": {t: i for i, t in enumerate(texts)}, "tokens": prompt_tokens,
                              "mask": prompt_mask}
        self.frozen_probes = (
            label_efficiency({"frozen": self.pooled}, self.table, self.splits, config, backbone)[0]
            if self.classes and not training_only else {}
        )
        self.vqa = (VqaTask(config.vqa, self.table, tokens, config.split, backbone, store,
                            config.max_text_tokens, config.split.seed)
                    if config.vqa is not None and self.classes and not training_only else None)
        self.segmentation = (SegmentationTask(config.segmentation, backbone, store, self.project, show_progress)
                             if config.segmentation is not None and not training_only else None)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens as the adaptors take them (on the training images' principal directions, when configured)."""
        return tokens.float() if self.projection is None else project_tokens(tokens, self.projection)

    def not_run(self) -> dict[str, str]:
        """The tasks this bench leaves out, and why."""
        skipped = {"vqa_accuracy": self.vqa is None, "dice": self.segmentation is None}
        return {key: reason for key, reason in NOT_CONFIGURED.items() if skipped[key]}

    def task_scores(self, adaptor: CrossAttentionAdaptor | None, seed: int, n_bootstrap: int) -> dict:
        """VQA and Dice of one adaptor (None: the same models without pre-training), for the tasks configured."""
        config, scores = self.config, {}
        if self.vqa is not None:
            shape = adaptor_shape(adaptor) if adaptor is not None else {
                "width": config.width, "embed_dim": config.embed_dim, "layers": config.layers, "heads": config.heads}
            scores["vqa"] = self.vqa.score(adaptor, shape, config.dropout, seed, n_bootstrap, config.min_positives)
        if self.segmentation is not None:
            scores["segmentation"] = self.segmentation.score(adaptor, seed, n_bootstrap)
        return scores

    def facts(self) -> dict:
        """What the data was: sources, counts, the synthetic-text note."""
        return {
            "csv": str(self.config.data.csv),
            "n_images": len(self.table),
            "n_failed_images": self.n_failed,
            "n_left_out_empty_text": self.n_empty_texts,
            "text_source": self.texts.source,
            "text_note": self.texts.note,
            "n_unique_texts": len(self.unique_texts),
            "n_truncated_texts": self.n_truncated,
            "n_text_only": self.n_text_only,
            "text_only_source": str(self.config.pairs.text_only) if self.text_only is not None else None,
            "classes": self.classes,
            "vqa": None if self.vqa is None else self.vqa.facts(),
            "segmentation": None if self.segmentation is None else self.segmentation.facts(),
        }


def train_mix(data: BenchData, mix_name: str, seed: int, show_progress: bool = False) -> tuple[ObjectiveMix, dict]:
    """A fresh adaptor and the mix's objectives, pre-trained with ``seed`` on the training pairs; and the fit facts."""
    config, backbone, pairs, splits = data.config, data.backbone, data.pairs, data.splits
    torch.manual_seed(seed)
    image_dim, text_dim = pairs.image_tokens.shape[2], pairs.text_tokens.shape[2]
    adaptor = CrossAttentionAdaptor(
        image_dim, text_dim, config.width, config.embed_dim, config.layers, config.heads, 0, config.dropout
    ).to(backbone.device)
    context = ObjectiveContext(
        image_dim, text_dim, config.width, config.embed_dim, config.heads, data.unique_texts, data.train_texts
    )
    mix = config.mix_specs()[mix_name]
    model = ObjectiveMix(adaptor, parse_mix(mix), context).to(backbone.device)
    train = TokenPairs(pairs.subset(splits["train"]), data.groups[splits["train"]], data.text_only)
    with progress_bar(
        f"{mix_name} seed {seed}", total=config.optim.epochs * len(splits["train"]), enabled=show_progress,
        unit="pairs",
    ) as advance:
        trained = pretrain_mix(model, train, config.optim, seed, progress=advance)
    return model, {
        "seconds_per_epoch": float(np.median(trained.epoch_seconds)),
        "cpu_seconds_per_epoch": float(np.median(trained.epoch_cpu_seconds)),
        "epoch_seconds": trained.epoch_seconds,
        "epoch_cpu_seconds": trained.epoch_cpu_seconds,
        "train_loss": trained.fit.train_loss,
    }


def _run_one(data: BenchData, mix_name: str, seed: int, first: bool, out_dir: Path, show_progress: bool) -> dict:
    """Pre-train one mix with one seed, evaluate it, save its run folder; its metrics."""
    config, backbone, pairs, splits = data.config, data.backbone, data.pairs, data.splits
    model, training = train_mix(data, mix_name, seed, show_progress)
    adaptor, mix = model.adaptor, config.mix_specs()[mix_name]
    image_dim, text_dim = pairs.image_tokens.shape[2], pairs.text_tokens.shape[2]
    n_bootstrap = config.n_bootstrap if first else 0
    test_rows = splits["test"]
    test = data.table.subset(test_rows)
    metrics: dict = {
        "mix": mix_name,
        "objectives": {name: objective.options.model_dump() for name, objective in model.objectives.items()},
        "seed": seed,
        **training,
        "retrieval": retrieval_with_ci(adaptor, pairs.subset(test_rows), test.patients, n_bootstrap, seed),
        **data.not_run(),
        **data.task_scores(adaptor, seed, n_bootstrap),
    }
    if data.classes:
        with torch.no_grad():
            image = batched(adaptor.encode_image, pairs.image_tokens[torch.as_tensor(test_rows)])
            scores = zero_shot_scores(adaptor, image, data.prompts, data.prompt_tokens)
        metrics["zero_shot"] = metrics_record(
            "adaptor_zero_shot", backbone, data.classes, scores, test, "test", n_bootstrap, seed, config.min_positives
        )
        adapted = batched(adaptor.image_features, pairs.image_tokens).cpu().numpy()
        probe_config = config.model_copy(update={"seed": seed, "n_bootstrap": n_bootstrap})
        probes = label_efficiency({ADAPTOR: adapted}, data.table, splits, probe_config, backbone)[0]
        metrics["linear_probe"] = {fraction: records[ADAPTOR] for fraction, records in probes.items()}
    if "caption" in model.objectives:
        sample = torch.as_tensor(test_rows[:CAPTION_SAMPLES])
        generated = model.objectives["caption"].generate(adaptor, pairs.image_tokens[sample])
        metrics["caption_samples"] = [
            {"generated": text, "paired_text": data.texts.texts[row]} for text, row in zip(generated, test_rows)
        ]
    tensors = {ADAPTOR: (model_state(adaptor), {"image_dim": image_dim, "text_dim": text_dim})}
    if data.projection is not None:
        tensors[TOKEN_PROJECTION] = ({k: v.cpu().numpy() for k, v in data.projection.items()}, {})
    for name, objective in model.objectives.items():
        tensors[f"objective_{name}"] = (model_state(objective), objective.facts())
    facts = {
        "backbone": backbone.describe(),
        "classes": data.classes,
        "mix": mix,
        "bench_config": config.model_dump(mode="json"),
        "max_text_tokens": config.max_text_tokens,
        "image_token_projection": None if data.projection is None else
        f"top {config.image_token_dim} principal components of the training images' tokens",
        "data": {"csv": str(config.data.csv), "n_images": len(data.table), "text_source": data.texts.source,
                 "text_note": data.texts.note},
        "split": split_facts(config.split, splits),
    }
    records = {"zero_shot.": metrics["zero_shot"]} if "zero_shot" in metrics else {}
    records.update({f"probe{fraction}.": record for fraction, record in metrics.get("linear_probe", {}).items()})
    tasks = numeric_leaves({key: metrics[key] for key in ("retrieval", "vqa", "segmentation") if key in metrics})
    finish_run(
        out_dir / "runs" / mix_name / f"seed{seed}", KIND, tensors, facts, metrics, records,
        {ADAPTOR: {"history": {"train_loss": metrics["train_loss"]}}}, tracking_uri(out_dir, config.tracking_uri),
        {"seconds_per_epoch": metrics["seconds_per_epoch"], **tasks},
    )
    return metrics


def _cell(values: list[float | None], ci: list[float] | None = None) -> dict:
    return {**mean_and_sd(values), "first_seed_ci": ci}


def task_cells(seeds: list[dict]) -> dict:
    """VQA accuracy and Dice cells of some runs (those that have them)."""
    cells = {}
    for task, key, metric in (("vqa", "vqa_accuracy", "accuracy"), ("segmentation", "dice", "dice")):
        if task in seeds[0]:
            cells[key] = _cell([run[task][metric] for run in seeds], seeds[0][task].get(f"{metric}_ci"))
    return cells


def summarise(runs: dict[str, list[dict]], frozen: dict, fractions: list[float], baselines: list[dict]) -> dict:
    """Per mix: mean, sd and first-seed CI of every task's headline number; and the baseline row: the frozen-feature
    probes and the VQA / Dice models without pre-training (``baselines``, one per seed)."""
    summary: dict[str, dict] = {}
    for mix_name, seeds in runs.items():
        first = seeds[0]
        cells = {key: _cell([run.get(key) for run in seeds]) for key in ("seconds_per_epoch", "cpu_seconds_per_epoch")}
        cells.update(task_cells(seeds))
        for direction in ("image_to_text", "text_to_image"):
            for k in RECALL_KS:
                key = f"R@{k}"
                ci = first["retrieval"].get(f"{direction}_ci", {}).get(key)
                cells[f"{direction}.{key}"] = _cell([run["retrieval"][direction][key] for run in seeds], ci)
        if "zero_shot" in first:
            cells["zero_shot_auroc"] = _cell(
                [run["zero_shot"]["mean_auroc"] for run in seeds], first["zero_shot"].get("mean_auroc_ci")
            )
            for fraction in fractions:
                key = str(fraction)
                cells[f"probe@{key}"] = _cell(
                    [run["linear_probe"][key]["mean_auroc"] for run in seeds],
                    first["linear_probe"][key].get("mean_auroc_ci"),
                )
        summary[mix_name] = cells
    baseline = {
        f"probe@{key}": _cell([records["frozen"]["mean_auroc"]], records["frozen"].get("mean_auroc_ci"))
        for key, records in frozen.items()
    }
    if baselines and baselines[0]:
        baseline.update(task_cells(baselines))
    if baseline:
        summary[BASELINE_ROW] = baseline
    return summary


def _format(cell: dict | None) -> str:
    if not cell or cell.get("mean") is None:
        return "-"
    text = f"{cell['mean']:.3f}"
    if cell["n"] > 1:
        text += f" ± {cell['std']:.3f}"
    if cell.get("first_seed_ci"):
        low, high = cell["first_seed_ci"]
        text += f" [{low:.3f}, {high:.3f}]"
    return text


def bench_table(summary: dict, fractions: list[float]) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the benchmark table (cells: mean ± sd over seeds [first seed's 95% CI])."""
    keys = [
        ("zero-shot AUROC", "zero_shot_auroc"),
        *((f"probe {fraction:.0%} labels AUROC", f"probe@{fraction}") for fraction in fractions),
        *((f"image→text R@{k}", f"image_to_text.R@{k}") for k in RECALL_KS),
        *((f"text→image R@{k}", f"text_to_image.R@{k}") for k in RECALL_KS),
        ("s / epoch", "seconds_per_epoch"),
        ("CPU s / epoch", "cpu_seconds_per_epoch"),
    ]
    keys += [("VQA accuracy", "vqa_accuracy"), ("Dice", "dice")]
    columns = ["objectives", *(label for label, _ in keys)]
    rows = [[name, *(_format(cells.get(key)) for _, key in keys)] for name, cells in summary.items()]
    return columns, rows


def run_objectives_bench(
    config: ObjectivesBenchConfig, out_dir: str | Path, show_progress: bool = False, backbone: Backbone | None = None
) -> dict:
    """Pre-train every mix with every seed on one patient split and evaluate each; write and return ``bench.json``.

    ``backbone`` overrides building ``config.backbone`` (an already loaded one, or a test double).
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    backbone = backbone or create_backbone(config.backbone, device=config.device)
    data = BenchData(config, backbone, show_progress)
    runs = {
        mix_name: [
            _run_one(data, mix_name, seed, index == 0, out_dir, show_progress)
            for index, seed in enumerate(config.seeds)
        ]
        for mix_name in config.mix_specs()
    }
    baselines = [data.task_scores(None, seed, config.n_bootstrap if index == 0 else 0)
                 for index, seed in enumerate(config.seeds)]
    summary = summarise(runs, data.frozen_probes, config.label_fractions, baselines)
    columns, rows = bench_table(summary, config.label_fractions)
    result = {
        "kind": KIND,
        "backbone": backbone.spec,
        "backbone_fingerprint": backbone.fingerprint,
        "note": GENERAL_DOMAIN_NOTE if backbone.spec == "default" else "",
        "data": data.facts(),
        "split": split_facts(config.split, data.splits),
        "seeds": config.seeds,
        "epochs": config.optim.epochs,
        "summary": summary,
        "table": {"columns": columns, "rows": rows},
        "not_run": data.not_run(),
        "runs": runs,
        "baselines": baselines,
        "frozen_probes": data.frozen_probes,
        "seconds": round(time.perf_counter() - started, 2),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "bench_config.json", config.model_dump(mode="json"))
    write_json_atomic(out_dir / "bench.json", result)
    return result


def caption_images(
    run_dir: str | Path, images: list[str | Path], device: str | None = None, backbone: Backbone | None = None
) -> list[str]:
    """Greedy captions for image files from a bench run folder whose mix has a ``caption`` objective (``backbone``:
    an already loaded one, or a test double, instead of the run's; its fingerprint must match)."""
    run_dir = Path(run_dir)
    tensors, facts = load_checkpoint(run_dir)
    if facts.get("kind") != KIND:
        raise ConfigError(f"{run_dir}: not an objectives bench run (kind '{facts.get('kind')}', expected '{KIND}')")
    if "objective_caption" not in tensors:
        raise ConfigError(f"{run_dir}: its mix ({', '.join(facts['mix'])}) has no caption objective to generate with")
    if backbone is None:
        backbone = checked_backbone(run_dir, facts, device)
    elif backbone.fingerprint != facts["backbone"]["fingerprint"]:
        raise ConfigError(f"{run_dir}: trained on backbone {facts['backbone']['spec']}, not {backbone.spec}")
    config = ObjectivesBenchConfig.model_validate(facts["bench_config"])
    dims = facts["methods"][ADAPTOR]
    adaptor = CrossAttentionAdaptor(
        dims["image_dim"], dims["text_dim"], config.width, config.embed_dim, config.layers, config.heads, 0,
        config.dropout,
    )
    adaptor.load_state_dict({k: torch.from_numpy(v) for k, v in tensors[ADAPTOR].items()})
    saved = facts["methods"]["objective_caption"]
    options = parse_mix({"caption": {k: v for k, v in saved.items() if k not in ("vocabulary", "vocabulary_kind")}})
    context = ObjectiveContext(dims["image_dim"], dims["text_dim"], config.width, config.embed_dim, config.heads,
                               saved_facts=saved)
    captioner = CaptionObjective(options["caption"], context)
    captioner.load_state_dict({k: torch.from_numpy(v) for k, v in tensors["objective_caption"].items()})
    adaptor, captioner = adaptor.to(backbone.device), captioner.to(backbone.device)
    pixels = torch.stack([backbone.preprocess(load_image(path)) for path in images])
    tokens = backbone.encode_images(pixels, tokens=True).tokens.float()
    if TOKEN_PROJECTION in tensors:
        tokens = project_tokens(tokens, {k: torch.from_numpy(v).to(tokens.device) for k, v in
                                         tensors[TOKEN_PROJECTION].items()})
    return captioner.generate(adaptor, tokens)
