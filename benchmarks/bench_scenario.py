"""(1) Incremental scenario wall time: retune on cached embeddings against the encode-every-epoch loop.

Both arms run the same class-incremental scenario (the 14 NIH findings in 5 seeded groups, task t
training on chunk t of the training patients, as ``configs/nih-class-incremental.yaml`` does) on
the same images, with the same RE-tune model, seed, epochs and minibatches (batch 32, no early
stopping), and score the same test split after every task.

* cached (the package): vectors read from the store once (``image_embeddings``), then per task the
  runner's ``task_data`` -> ``ReTune.learn`` -> ``test_scores``. Timed warm (the store already
  holds the vectors, the steady state for every run after the first) and cold (a fresh store, so
  the one-time ``embed_table`` is included).
* uncached (the reference loop, how the RE-tune paper's setup and most peers run it): every
  minibatch of every epoch of every task is decoded, preprocessed and passed through the frozen
  image encoder (``encode_images`` under inference mode), then the same adaptor update: the
  package's ``fit`` with ``ReTuneModel`` and ``masked_bce`` over the task's classes and the
  package's prompt bank. The test split is encoded again after every task.

Prompt embedding and backbone loading happen once, before both arms, and are not timed.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import NIH_CSV, NIH_FINDINGS, Context, median, target, timed
from retune.report.text import format_interval

NAME = "scenario"
N_TASKS, EPOCHS, BATCH = 5, 10, 32


class EncodeOnAccess:
    """Stands in for ``train_x`` in ``fit``: indexing rows decodes and encodes those images now."""

    def __init__(self, paths: list[str], backbone, pool: ThreadPoolExecutor, clock: dict) -> None:
        self.paths = paths
        self.backbone = backbone
        self.pool = pool
        self.clock = clock
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return encode_paths([self.paths[i] for i in rows.tolist()], self.backbone, self.pool, self.clock)


def encode_paths(paths: list[str], backbone, pool: ThreadPoolExecutor, clock: dict) -> torch.Tensor:
    from retune.data.images import load_image

    started = time.perf_counter()
    pixels = torch.stack(list(pool.map(lambda path: backbone.preprocess(load_image(path)), paths)))
    decoded = time.perf_counter()
    pooled = backbone.encode_images(pixels).pooled.float().clone()  # clone: a normal tensor, not an inference tensor
    clock["decode"] += decoded - started
    clock["encode"] += time.perf_counter() - decoded
    clock["images"] += len(paths)
    return pooled


def pick_table(n_images: int, seed: int = 0):
    """NIH rows whose image is 256x256, whole patients in a seeded order, about ``n_images`` rows."""
    from PIL import Image

    from retune.data.readers import read_table

    table = read_table(NIH_CSV, classes=NIH_FINDINGS)
    sizes = []
    for path in table.paths:
        with Image.open(path) as image:
            sizes.append(image.size)
    eligible = np.flatnonzero([size == (256, 256) for size in sizes])
    patients = table.patients
    order = np.random.default_rng(seed).permutation(np.unique(patients[eligible]))
    chosen: list[int] = []
    for patient in order:
        chosen.extend(int(r) for r in eligible[patients[eligible] == patient])
        if len(chosen) >= n_images:
            break
    return table.subset(sorted(chosen))


def build_scenario(table, seed: int = 0):
    from retune.config import SplitConfig
    from retune.data.splits import patient_split
    from retune.scenarios.generators import class_incremental
    from retune.scenarios.runner import chunk_rows

    patients = table.patients
    splits = patient_split(patients, SplitConfig().fractions, seed)
    tasks = class_incremental(list(table.classes), N_TASKS, seed)
    rows = [chunk_rows(splits["train"], patients, task.rows, seed=seed) for task in tasks]
    return splits, tasks, rows


def method_config():
    from retune.config import OptimConfig, ReTuneConfig

    return ReTuneConfig(optim=OptimConfig(epochs=EPOCHS, batch_size=BATCH, patience=10**6))


def cached_arm(store_root: Path, table, fingerprint: str, context, splits, tasks, rows) -> list[np.ndarray]:
    """The package's path: vectors from the store once, then learn/score per task on them."""
    from retune.methods.registry import create_method
    from retune.scenarios.runner import PreparedScenario, task_data, test_scores
    from retune.store import EmbeddingStore, image_embeddings

    store = EmbeddingStore(store_root, create=False)
    images, present = image_embeddings(table, fingerprint, store)
    if len(present) != len(table):
        raise RuntimeError(f"{len(table) - len(present)} images are missing from the store")
    prepared = PreparedScenario(
        classes=list(table.classes),
        images=images,
        labels=table.labels(),
        patients=table.patients,
        test_rows=splits["test"],
        tasks_by_order={0: tasks},
        rows_by_order={0: [(train, np.zeros(0, dtype=int)) for train in rows]},
        context_factory=lambda seed: context,
        backbone_spec="default",
        backbone_fingerprint=fingerprint,
    )
    method = create_method("retune", context, method_config())
    scores = []
    for task, train in zip(tasks, rows):
        method.learn(task_data(prepared, task, train, np.zeros(0, dtype=int)))
        scores.append(test_scores(method, prepared))
    return scores


def uncached_arm(table, backbone, context, splits, tasks, rows, clock: dict) -> list[np.ndarray]:
    """Reference loop: every image through the frozen encoder in every epoch of every task."""
    from retune.losses import masked_bce
    from retune.methods.registry import create_method
    from retune.store.embed import default_workers
    from retune.training.loop import fit

    classes = list(table.classes)
    labels = table.labels()
    paths = table.paths
    test_paths = [paths[r] for r in splits["test"]]
    method = create_method("retune", context, method_config())
    scores = []
    with ThreadPoolExecutor(max_workers=max(1, default_workers())) as pool:
        for task, train in zip(tasks, rows):
            new = method.add_classes(task.classes)
            if new:
                method.model.add_prompts(*context.prompts.matrices(new))
            columns = torch.tensor([method.classes.index(c) for c in task.classes])
            train_y = torch.as_tensor(labels[np.ix_(train, [classes.index(c) for c in task.classes])])

            def loss_fn(x: torch.Tensor | EncodeOnAccess, y: torch.Tensor, columns=columns) -> torch.Tensor:
                if isinstance(x, EncodeOnAccess):  # a full batch is handed over whole: encode all of its rows now
                    x = x[torch.arange(len(x))]
                return masked_bce(method.model(x)[:, columns], y)

            started = time.perf_counter()
            fit(
                method.model,
                method.model.parameters(),
                loss_fn,
                EncodeOnAccess([paths[r] for r in train], backbone, pool, clock),
                train_y,
                method.config.optim,
                None,
                context.seed + method.tasks_learned,
            )
            clock["train"] += time.perf_counter() - started
            method.tasks_learned += 1
            started = time.perf_counter()
            test_x = torch.cat(
                [
                    encode_paths(test_paths[i : i + BATCH], backbone, pool, clock)
                    for i in range(0, len(test_paths), BATCH)
                ]
            )
            task_scores = np.full((len(test_paths), len(classes)), np.nan, dtype=np.float32)
            task_scores[:, [classes.index(c) for c in method.classes]] = method.predict(test_x.numpy())
            scores.append(task_scores)
            clock["test"] += time.perf_counter() - started
    return scores


def metrics(scores: list[np.ndarray], table, splits, n_bootstrap: int) -> dict:
    from retune.evaluation import continual_metrics

    test = splits["test"]
    result = continual_metrics(scores, table.labels()[test], table.patients[test], n_bootstrap=n_bootstrap, seed=0)
    keep = (
        "final_mean_auroc",
        "final_mean_auroc_ci",
        "forgetting",
        "forgetting_ci",
        "bwt",
        "average_incremental_auroc",
        "mean_auroc_per_task",
    )
    return {key: result[key] for key in keep}


def run(ctx: Context) -> dict:
    from retune.backbones.registry import create_backbone
    from retune.experiments.prepare import method_context, prompt_bank
    from retune.store import EmbeddingStore, embed_table

    n_images = 128 if ctx.quick else 1050
    warm_repeats = 3
    uncached_repeats = 1 if ctx.quick else 2
    n_bootstrap = 200 if ctx.quick else 500
    work = ctx.workdir / "scenario"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    table = pick_table(n_images)
    splits, tasks, rows = build_scenario(table)
    ctx.log(
        f"{len(table)} NIH images (256 px) of {len(np.unique(table.patients))} patients; train/val/test "
        f"{[len(splits[k]) for k in ('train', 'val', 'test')]}; "
        f"{N_TASKS} tasks x {EPOCHS} epochs, batch {BATCH}; task train rows {[len(r) for r in rows]}"
    )
    backbone = create_backbone("default", device="cpu")
    bank, _ = prompt_bank(list(table.classes), method_config().prompts, backbone, EmbeddingStore(work / "prompts"))
    context = method_context(backbone, bank, 0)

    def cold() -> list[np.ndarray]:
        store_root = work / "store-cold"
        shutil.rmtree(store_root, ignore_errors=True)
        embed_table(table, backbone, EmbeddingStore(store_root), batch_size=BATCH, show_progress=False)
        return cached_arm(store_root, table, backbone.fingerprint, context, splits, tasks, rows)

    def warm() -> list[np.ndarray]:
        return cached_arm(work / "store-cold", table, backbone.fingerprint, context, splits, tasks, rows)

    cold_seconds, cached_scores = timed(cold)
    ctx.log(f"cached, cold store (embeds each image once): {cold_seconds:.1f} s")
    default_threads = torch.get_num_threads()

    def warm_one_thread() -> list[np.ndarray]:
        torch.set_num_threads(1)
        try:
            return warm()
        finally:
            torch.set_num_threads(default_threads)

    # Interleaved: warm (default threads), warm (1 thread), uncached, warm, warm, uncached, ...
    warm_seconds, warm_1t_seconds, uncached_seconds, clocks = [], [], [], []
    uncached_scores = None
    for repeat in range(max(warm_repeats, uncached_repeats)):
        if repeat < warm_repeats:
            warm_seconds.append(timed(warm)[0])
            warm_1t_seconds.append(timed(warm_one_thread)[0])
        if repeat < uncached_repeats:
            clock = {"decode": 0.0, "encode": 0.0, "images": 0, "train": 0.0, "test": 0.0}
            seconds, uncached_scores = timed(
                lambda clock=clock: uncached_arm(table, backbone, context, splits, tasks, rows, clock)
            )
            uncached_seconds.append(seconds)
            clocks.append(clock)
            ctx.log(
                f"uncached reference loop: {seconds:.1f} s ({clock['images']} encoder passes; decode "
                f"{clock['decode']:.1f} s, encode {clock['encode']:.1f} s)"
            )
    ctx.log(
        f"cached, warm store: median {median(warm_seconds):.2f} s ({default_threads} torch threads), "
        f"{median(warm_1t_seconds):.2f} s (1 thread)"
    )

    cached_metrics = metrics(cached_scores, table, splits, n_bootstrap)
    uncached_metrics = metrics(uncached_scores, table, splits, n_bootstrap)
    final_difference = abs(cached_metrics["final_mean_auroc"] - uncached_metrics["final_mean_auroc"])
    probability_difference = float(np.nanmax(np.abs(cached_scores[-1] - uncached_scores[-1])))
    same = final_difference <= 0.01
    ratio = median(uncached_seconds) / median(warm_seconds)
    ratio_1t = median(uncached_seconds) / median(warm_1t_seconds)
    cold_ratio = median(uncached_seconds) / cold_seconds
    n_train = int(sum(len(r) for r in rows))
    encodes_per_image = (EPOCHS * n_train + N_TASKS * len(splits["test"])) / len(table)

    def shown(result: dict) -> str:
        text = format_interval(result["final_mean_auroc"], result["final_mean_auroc_ci"])
        return text + (f", forgetting {result['forgetting']:.3f}" if result["forgetting"] is not None else "")

    return {
        "figures": {
            "final mean AUROC [95% CI], cached arm": shown(cached_metrics),
            "final mean AUROC [95% CI], uncached arm": shown(uncached_metrics),
        },
        "ratios": {
            "scenario_cached_vs_uncached": ratio,
            "scenario_cached_1thread_vs_uncached": ratio_1t,
            "scenario_cold_cached_vs_uncached": cold_ratio,
            "uncached_encoder_passes_per_image": encodes_per_image,
        },
        "targets": [
            target(
                f"uncached / cached wall time, {N_TASKS} tasks x {EPOCHS} epochs (store filled, same torch settings)",
                ratio,
                ">= 25",
                ratio >= 25,
                "scenario_cached_1thread_vs_uncached: the cached arm with torch.set_num_threads(1), which suits its "
                "32-row minibatches",
            ),
            target(
                "uncached / cached incl. the one-time embedding (fresh store)",
                cold_ratio,
                "(no target; bounded by encoder passes per image)",
                None,
                f"the reference loop makes {encodes_per_image:.1f} encoder passes per image, the cold cached arm 1",
            ),
            target("final mean AUROC equal within noise (|difference| <= 0.01)", final_difference, "<= 0.01", same),
        ],
        "metrics": {
            "cached": cached_metrics,
            "uncached": uncached_metrics,
            "final_mean_auroc_abs_difference": final_difference,
            "final_test_probability_max_abs_difference": probability_difference,
            "same_within_noise": same,
        },
        "params": {
            "images": len(table),
            "image_size": 256,
            "backbone": "default",
            "tasks": N_TASKS,
            "epochs": EPOCHS,
            "batch_size": BATCH,
            "early_stopping": False,
            "seed": 0,
            "n_bootstrap": n_bootstrap,
            "task_train_rows": [len(r) for r in rows],
            "test_rows": len(splits["test"]),
            "warm_repeats": len(warm_seconds),
            "default_torch_threads": default_threads,
            "uncached_repeats": uncached_repeats,
            "tasks_classes": [t.classes for t in tasks],
        },
        "timings": {
            "cached_warm_seconds": warm_seconds,
            "cached_warm_1thread_seconds": warm_1t_seconds,
            "cached_cold_seconds": cold_seconds,
            "uncached_seconds": uncached_seconds,
            "uncached_breakdown": clocks,
        },
    }
