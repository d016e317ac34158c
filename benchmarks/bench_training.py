"""(3) Adaptor training throughput on cached embeddings, and per-task update time in a 10-task run.

Synthetic vectors shaped like the default backbone's (1280-d image, 384-d text prompts, 14
classes). Epochs are timed with the package's ``retune.training.loop.fit`` on ``ReTuneModel``
(the same loss as RE-tune: masked BCE over the classes) at batch 4096 and full batch, with
``torch.set_num_threads(2)`` unless ``--threads`` says otherwise. Then a 10-task class-incremental
run with equal task sizes through ``ReTune.learn``: the time of each task's update against the
task index must stay flat, since an increment costs O(its own data).
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.common import NIH_FINDINGS, Context, median, target, timed

NAME = "training"
IMAGE_DIM, TEXT_DIM, N_CLASSES = 1280, 384, 14


def synthetic_vectors(n_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian image vectors and 0/1 labels from 14 random hyperplanes (about 10% positives)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, IMAGE_DIM), dtype=np.float32)
    planes = rng.standard_normal((IMAGE_DIM, N_CLASSES)).astype(np.float32) / np.sqrt(IMAGE_DIM)
    logits = x @ planes
    y = (logits > np.quantile(logits, 0.9, axis=0)).astype(np.float32)
    return x, y


def prompt_bank(seed: int = 0):
    """Random unit prompt vectors per class (text-tower space)."""
    from retune.methods.base import PromptBank

    rng = np.random.default_rng(seed + 1)
    bank = PromptBank()
    for name in NIH_FINDINGS:
        for side in (bank.positive, bank.negative):
            vector = rng.standard_normal(TEXT_DIM).astype(np.float32)
            side[name] = vector / np.linalg.norm(vector)
    return bank


def method_context(seed: int = 0):
    from retune.evaluation import fast_mean_auroc
    from retune.methods.base import MethodContext

    return MethodContext(IMAGE_DIM, TEXT_DIM, False, prompt_bank(seed), fast_mean_auroc, seed)


def retune_config(epochs: int, batch_size: int):
    from retune.config import OptimConfig, ReTuneConfig

    return ReTuneConfig(optim=OptimConfig(epochs=epochs, batch_size=batch_size, patience=10**6))


def epoch_seconds(x: torch.Tensor, y: torch.Tensor, batch_size: int, epochs: int = 1) -> float:
    """Seconds per epoch of ``fit`` on a fresh ReTuneModel (the RE-tune loss on every class)."""
    from retune.losses import masked_bce
    from retune.methods.retune import ReTuneModel
    from retune.training.loop import fit

    config = retune_config(epochs, batch_size)
    torch.manual_seed(0)
    model = ReTuneModel(IMAGE_DIM, TEXT_DIM, config)
    model.add_prompts(*prompt_bank().matrices(NIH_FINDINGS))

    def loss_fn(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return masked_bce(model(xb), yb)

    seconds, _ = timed(lambda: fit(model, model.parameters(), loss_fn, x, y, config.optim, None, 0))
    return seconds / epochs


def incremental_run(
    x: np.ndarray, y: np.ndarray, n_tasks: int, epochs: int, batch_size: int, method_name: str = "retune"
) -> list[float]:
    """Seconds of ``learn`` per task in a class-incremental run with equal-sized disjoint row chunks."""
    from retune.methods.base import TaskData
    from retune.methods.registry import create_method
    from retune.scenarios.generators import class_incremental

    tasks = class_incremental(list(NIH_FINDINGS), n_tasks, seed=0)
    chunks = np.array_split(np.arange(len(x)), n_tasks)
    method = create_method(method_name, method_context(), retune_config(epochs, batch_size))
    seconds = []
    for task, rows in zip(tasks, chunks):
        columns = [NIH_FINDINGS.index(c) for c in task.classes]
        data = TaskData(tuple(task.classes), x[rows].copy(), y[np.ix_(rows, columns)].copy())
        seconds.append(timed(lambda data=data: method.learn(data))[0])
    return seconds


def profile_steps(x: torch.Tensor, y: torch.Tensor, steps: int = 5, batch_size: int = 4096) -> list[dict]:
    """Where a batch-4096 training step spends its time (torch profiler, top ops by self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    from retune.losses import masked_bce
    from retune.methods.retune import ReTuneModel

    torch.manual_seed(0)
    model = ReTuneModel(IMAGE_DIM, TEXT_DIM, retune_config(1, batch_size))
    model.add_prompts(*prompt_bank().matrices(NIH_FINDINGS))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)

    def step(index: int) -> None:
        rows = torch.randint(0, len(x), (batch_size,))
        optimizer.zero_grad(set_to_none=True)
        masked_bce(model(x[rows]), y[rows]).backward()
        optimizer.step()

    step(0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for index in range(steps):
            step(index)
    events = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in events) or 1.0
    top = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:8]
    return [
        {
            "op": event.key,
            "self_cpu_share": event.self_cpu_time_total / total,
            "self_cpu_ms_per_step": event.self_cpu_time_total / 1000 / steps,
        }
        for event in top
    ]


def run(ctx: Context) -> dict:
    previous_threads = torch.get_num_threads()
    try:
        return _run(ctx)
    finally:
        torch.set_num_threads(previous_threads)


def _run(ctx: Context) -> dict:
    sizes = [10_000, 100_000, 224_000]
    thread_counts = list(dict.fromkeys([ctx.threads or 2, 1]))  # the brief's 2, and 1 (better on a contended machine)
    repeats = 1 if ctx.quick else 3
    n_tasks = 10
    task_epochs = 1 if ctx.quick else 3
    task_repeats = 2 if ctx.quick else 3
    methods = ["retune"] if ctx.quick else ["retune", "retune-distill"]

    ctx.log(f"synthetic vectors: {max(sizes):,} x {IMAGE_DIM} (+ {N_CLASSES} labels)")
    x_all, y_all = synthetic_vectors(max(sizes))
    throughput: dict[str, dict] = {}
    for n_rows in sizes:
        x, y = torch.from_numpy(x_all[:n_rows]), torch.from_numpy(y_all[:n_rows])
        seconds: dict[str, list[float]] = {}
        for _ in range(repeats):  # thread counts and batch modes interleaved
            for threads in thread_counts:
                torch.set_num_threads(threads)
                for label, batch_size in (("batch4096", 4096), ("full_batch", 0)):
                    seconds.setdefault(f"{label}_threads{threads}", []).append(epoch_seconds(x, y, batch_size))
        throughput[str(n_rows)] = {
            key: {
                "epoch_seconds": values,
                "epoch_seconds_median": median(values),
                "samples_per_second": n_rows / median(values),
            }
            for key, values in seconds.items()
        }
        ctx.log(
            f"{n_rows:>7,} rows, s/epoch: "
            + ", ".join(f"{key} {median(values):.2f}" for key, values in seconds.items())
        )

    largest = throughput[str(max(sizes))]
    task_threads = min(thread_counts, key=lambda t: largest[f"batch4096_threads{t}"]["epoch_seconds_median"])
    torch.set_num_threads(task_threads)
    rows_per_task = max(sizes) // n_tasks
    per_task: dict[str, dict] = {}
    for name in methods:
        runs = []
        for repeat in range(task_repeats):
            runs.append(incremental_run(x_all, y_all, n_tasks, task_epochs, 4096, name))
            ctx.log(
                f"{name} 10-task run {repeat + 1}/{task_repeats} ({task_threads} threads), s per task: "
                + " ".join(f"{s:.2f}" for s in runs[-1])
            )
        by_index = [median([r[t] for r in runs]) for t in range(n_tasks)]
        per_task[name] = {
            "seconds_per_task_runs": runs,
            "seconds_per_task_median": by_index,
            "task10_over_task1": by_index[-1] / by_index[0],
            "last3_over_first3": median(by_index[-3:]) / median(by_index[:3]),
        }
    breakdown = profile_steps(torch.from_numpy(x_all), torch.from_numpy(y_all))
    ctx.log(
        "batch-4096 step, top ops by self CPU time: "
        + ", ".join(f"{row['op']} {row['self_cpu_share']:.0%}" for row in breakdown[:4])
    )
    main_threads = thread_counts[0]
    best_key = min(largest, key=lambda key: largest[key]["epoch_seconds_median"])
    best_epoch = largest[best_key]["epoch_seconds_median"]
    flat = per_task["retune"]["task10_over_task1"]
    ratios = {
        f"epoch_224k_seconds_batch4096_threads{main_threads}": largest[f"batch4096_threads{main_threads}"][
            "epoch_seconds_median"
        ],
        f"epoch_224k_seconds_full_batch_threads{main_threads}": largest[f"full_batch_threads{main_threads}"][
            "epoch_seconds_median"
        ],
        "epoch_224k_seconds_best": best_epoch,
        "samples_per_second_224k_best": max(sizes) / best_epoch,
        f"threads{main_threads}_vs_threads1_batch4096_speedup": largest["batch4096_threads1"]["epoch_seconds_median"]
        / largest[f"batch4096_threads{main_threads}"]["epoch_seconds_median"],
        "batch4096_vs_full_batch_speedup": largest[f"full_batch_threads{main_threads}"]["epoch_seconds_median"]
        / largest[f"batch4096_threads{main_threads}"]["epoch_seconds_median"],
        "task10_vs_task1_update_time": flat,
        "task_last3_vs_first3_update_time": per_task["retune"]["last3_over_first3"],
    }
    return {
        "ratios": ratios,
        "targets": [
            target(
                "one epoch over 224k embeddings, seconds (best configuration)",
                best_epoch,
                "< 2 s on 2 cores",
                best_epoch < 2.0,
                best_key,
            ),
            target("task-10 / task-1 update time (retune, 10 equal tasks)", flat, "<= 1.2", flat <= 1.2),
        ],
        "params": {
            "image_dim": IMAGE_DIM,
            "text_dim": TEXT_DIM,
            "classes": N_CLASSES,
            "sizes": sizes,
            "repeats": repeats,
            "torch_threads": thread_counts,
            "adaptor": "ReTuneConfig() defaults (dense 1280->256 and 384->256, input dropout 0.5)",
            "n_tasks": n_tasks,
            "rows_per_task": rows_per_task,
            "task_epochs": task_epochs,
            "task_batch_size": 4096,
            "task_repeats": task_repeats,
            "task_torch_threads": task_threads,
            "methods": methods,
        },
        "timings": {"throughput": throughput, "per_task": per_task},
        "profile_batch4096_step": {"torch_threads": task_threads, "top_ops": breakdown},
    }
