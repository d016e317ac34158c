"""(3) Adaptor training throughput on cached embeddings, and per-task update time in a 10-task run.

Synthetic vectors shaped like the default backbone's (1280-d image, 384-d text prompts, 14
classes). Epochs are timed with the package's ``retune.training.loop.fit`` on ``ReTuneModel``
(the same loss as RE-tune: masked BCE over the classes) at batch 4096 and full batch, with
``torch.set_num_threads(2)`` unless ``--threads`` says otherwise. Then a 10-task class-incremental
run with equal task sizes through ``ReTune.learn``: the time of each task's update against the
task index must stay flat, since an increment costs O(its own data). Every epoch is timed in fp32
and, where the CPU runs bf16 natively, under bf16 autocast (``OptimConfig.precision``), beside the
matmul-only limit measured in the same run; the NIH class-incremental scenario is then run with
both precisions, same seeds, to check that the final AUROC does not move.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.common import NIH_CSV, NIH_FINDINGS, ROOT, Context, median, target, timed

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


def retune_config(epochs: int, batch_size: int, precision: str = "fp32"):
    from retune.config import OptimConfig, ReTuneConfig

    return ReTuneConfig(optim=OptimConfig(epochs=epochs, batch_size=batch_size, patience=10**6, precision=precision))


def epoch_seconds(x: torch.Tensor, y: torch.Tensor, batch_size: int, precision: str = "fp32") -> tuple[float, float]:
    """(wall, process CPU) seconds of one epoch of ``fit`` on a fresh ReTuneModel (the RE-tune loss on every class).

    CPU seconds count the work done; on a machine shared with other jobs they drift less than wall seconds.
    """
    from retune.losses import masked_bce
    from retune.methods.retune import ReTuneModel
    from retune.training.loop import fit

    config = retune_config(1, batch_size, precision)
    torch.manual_seed(0)
    model = ReTuneModel(IMAGE_DIM, TEXT_DIM, config)
    model.add_prompts(*prompt_bank().matrices(NIH_FINDINGS))

    def loss_fn(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return masked_bce(model(xb), yb)

    cpu = time.process_time()
    seconds, _ = timed(lambda: fit(model, model.parameters(), loss_fn, x, y, config.optim, None, 0))
    return seconds, time.process_time() - cpu


def matmul_limit_seconds(n_rows: int, batch_size: int, dtype: torch.dtype, repeats: int = 3) -> float:
    """Seconds per epoch of the image adaptor's two matmuls alone (forward, weight gradient): the FLOP limit.

    Per batch: (B x 1280) @ (1280 x 256) and its weight gradient (1280 x B) @ (B x 256), i.e. 4 * B * 1280 * 256
    FLOP, about 294 GFLOP per 224k-row epoch; the text side (28 prompts) and the rest are negligible in FLOPs.
    """
    features = torch.randn(batch_size, IMAGE_DIM, dtype=dtype)
    weight = torch.randn(IMAGE_DIM, 256, dtype=dtype)
    grad = torch.randn(batch_size, 256, dtype=dtype)
    features @ weight, features.T @ grad  # warm-up
    best = float("inf")
    for _ in range(repeats):
        seconds, _ = timed(lambda: (features @ weight, features.T @ grad))
        best = min(best, seconds)
    return best * (n_rows / batch_size)


def nih_precision_check(ctx: Context) -> dict:
    """The NIH class-incremental scenario (RE-tune, quick: 200 bootstrap replicates) with fp32 and bf16 steps,
    same seeds and split: final mean AUROC with its patient-bootstrap CI per precision, and their difference."""
    import shutil

    from retune.scenarios.runner import run_scenario
    from retune.scenarios.spec import load_scenario

    results = {}
    for precision in ("fp32", "bf16"):
        config = load_scenario(ROOT / "configs" / "nih-class-incremental.yaml")
        config.data.csv = NIH_CSV
        config.store = ctx.workdir / "stores" / "nih"  # shared with the quality benchmark: embedded once
        config.methods = ["retune"]
        config.n_bootstrap = 200 if ctx.quick else config.n_bootstrap
        config.retune.optim.precision = precision
        out = ctx.workdir / "precision" / precision
        shutil.rmtree(out, ignore_errors=True)
        seconds, outcome = timed(lambda config=config, out=out: run_scenario(config, out))
        result = outcome["retune"]
        results[precision] = {
            "final_mean_auroc": result["final_mean_auroc"],
            "final_mean_auroc_ci": result["final_mean_auroc_ci"],
            "average_incremental_auroc": result["average_incremental_auroc"],
            "seconds": seconds,
        }
        ctx.log(f"NIH class-incremental, retune, {precision}: final mean AUROC {result['final_mean_auroc']:.4f} "
                f"{result['final_mean_auroc_ci']} ({seconds:.0f} s)")
    difference = results["bf16"]["final_mean_auroc"] - results["fp32"]["final_mean_auroc"]
    low, high = results["fp32"]["final_mean_auroc_ci"]
    return {**results, "bf16_minus_fp32": difference, "fp32_ci_half_width": (high - low) / 2}


def incremental_run(
    x: np.ndarray, y: np.ndarray, n_tasks: int, epochs: int, batch_size: int, method_name: str = "retune",
    precision: str = "fp32",
) -> list[float]:
    """Seconds of ``learn`` per task in a class-incremental run with equal-sized disjoint row chunks."""
    from retune.methods.base import TaskData
    from retune.methods.registry import create_method
    from retune.scenarios.generators import class_incremental

    tasks = class_incremental(list(NIH_FINDINGS), n_tasks, seed=0)
    chunks = np.array_split(np.arange(len(x)), n_tasks)
    method = create_method(method_name, method_context(), retune_config(epochs, batch_size, precision))
    seconds = []
    for task, rows in zip(tasks, chunks):
        columns = [NIH_FINDINGS.index(c) for c in task.classes]
        data = TaskData(tuple(task.classes), x[rows].copy(), y[np.ix_(rows, columns)].copy())
        seconds.append(timed(lambda data=data: method.learn(data))[0])
    return seconds


def profile_steps(
    x: torch.Tensor, y: torch.Tensor, steps: int = 5, batch_size: int = 4096, precision: str = "fp32"
) -> list[dict]:
    """Where a batch-4096 training step of ``fit`` spends its time (torch profiler, top ops by self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    from retune.devices import training_autocast
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
        with training_autocast(x.device, precision):
            loss = masked_bce(model(x.index_select(0, rows)), y.index_select(0, rows))
        loss.backward()
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
    sizes = [224_000] if ctx.quick else [10_000, 100_000, 224_000]
    thread_counts = list(dict.fromkeys([ctx.threads or 2, 1]))  # the brief's 2, and 1 (better on a contended machine)
    repeats = 1 if ctx.quick else 3
    n_tasks = 10
    task_epochs = 1 if ctx.quick else 3
    task_repeats = 2 if ctx.quick else 3
    methods = ["retune"] if ctx.quick else ["retune", "retune-distill"]

    from retune.devices import bf16_supported

    precisions = ["fp32", "bf16"] if bf16_supported(torch.device("cpu")) else ["fp32"]
    batch_modes = [("batch4096", 4096)] + ([] if ctx.quick else [("full_batch", 0)])
    ctx.log(f"synthetic vectors: {max(sizes):,} x {IMAGE_DIM} (+ {N_CLASSES} labels); precisions {precisions}")
    x_all, y_all = synthetic_vectors(max(sizes))
    throughput: dict[str, dict] = {}
    for n_rows in sizes:
        x, y = torch.from_numpy(x_all[:n_rows]), torch.from_numpy(y_all[:n_rows])
        seconds: dict[str, list[float]] = {}
        cpu_seconds: dict[str, list[float]] = {}
        for _ in range(repeats):  # thread counts, precisions and batch modes interleaved
            for threads in thread_counts:
                torch.set_num_threads(threads)
                for precision in precisions:
                    for label, batch_size in batch_modes:
                        key = f"{label}_{precision}_threads{threads}"
                        wall, cpu = epoch_seconds(x, y, batch_size, precision)
                        seconds.setdefault(key, []).append(wall)
                        cpu_seconds.setdefault(key, []).append(cpu)
        throughput[str(n_rows)] = {
            key: {
                "epoch_seconds": values,
                "epoch_seconds_median": median(values),
                "epoch_cpu_seconds_median": median(cpu_seconds[key]),
                "samples_per_second": n_rows / median(values),
            }
            for key, values in seconds.items()
        }
        ctx.log(
            f"{n_rows:>7,} rows, s/epoch (CPU s): "
            + ", ".join(f"{key} {median(seconds[key]):.2f} ({median(cpu_seconds[key]):.2f})" for key in seconds)
        )

    largest = throughput[str(max(sizes))]
    fastest = precisions[-1]
    limits = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if precision in precisions:
                limits[f"{precision}_threads{threads}"] = matmul_limit_seconds(max(sizes), 4096, dtype)
    ctx.log("224k-row epoch, matmul-only limit (s): " + ", ".join(f"{k} {v:.2f}" for k, v in limits.items()))
    task_threads = min(
        thread_counts, key=lambda t: largest[f"batch4096_{fastest}_threads{t}"]["epoch_seconds_median"]
    )
    torch.set_num_threads(task_threads)
    rows_per_task = max(sizes) // n_tasks
    per_task: dict[str, dict] = {}
    for name in methods:
        runs = []
        for repeat in range(task_repeats):
            runs.append(incremental_run(x_all, y_all, n_tasks, task_epochs, 4096, name, fastest))
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
    breakdown = profile_steps(torch.from_numpy(x_all), torch.from_numpy(y_all), precision=fastest)
    ctx.log(
        "batch-4096 step, top ops by self CPU time: "
        + ", ".join(f"{row['op']} {row['self_cpu_share']:.0%}" for row in breakdown[:4])
    )
    main_threads = thread_counts[0]
    best_key = min(largest, key=lambda key: largest[key]["epoch_seconds_median"])
    best_epoch = largest[best_key]["epoch_seconds_median"]
    best_limit = limits[best_key.removeprefix("batch4096_").removeprefix("full_batch_")]
    flat = per_task["retune"]["task10_over_task1"]

    def epoch_of(key: str) -> float:
        return largest[key]["epoch_seconds_median"]

    main = f"batch4096_{fastest}_threads{main_threads}"
    ratios = {
        f"epoch_224k_seconds_batch4096_fp32_threads{main_threads}": epoch_of(f"batch4096_fp32_threads{main_threads}"),
        f"epoch_224k_seconds_{main}": epoch_of(main),
        "epoch_224k_seconds_best": best_epoch,
        "epoch_224k_matmul_limit_seconds_best_configuration": best_limit,
        "epoch_224k_best_vs_matmul_limit": best_epoch / best_limit,
        "samples_per_second_224k_best": max(sizes) / best_epoch,
        f"fp32_vs_{fastest}_batch4096_threads{main_threads}_speedup": epoch_of(
            f"batch4096_fp32_threads{main_threads}"
        ) / epoch_of(main),
        f"threads{main_threads}_vs_threads1_batch4096_{fastest}_speedup": epoch_of(
            f"batch4096_{fastest}_threads1"
        ) / epoch_of(main),
        "task10_vs_task1_update_time": flat,
        "task_last3_vs_first3_update_time": per_task["retune"]["last3_over_first3"],
    }
    targets = [
        target(
            "one epoch over 224k embeddings, seconds (best configuration)",
            best_epoch,
            "< 2 s on 2 cores",
            best_epoch < 2.0,
            f"{best_key}; the adaptor's matmuls alone take {best_limit:.2f} s in that configuration (this run)",
        ),
        target("task-10 / task-1 update time (retune, 10 equal tasks)", flat, "<= 1.2", flat <= 1.2),
    ]
    precision_check = None
    if "bf16" in precisions:
        precision_check = nih_precision_check(ctx)
        difference = abs(precision_check["bf16_minus_fp32"])
        ratios["nih_final_auroc_bf16_minus_fp32"] = precision_check["bf16_minus_fp32"]
        targets.append(target(
            "NIH final mean AUROC, |bf16 - fp32| (retune, same seeds)", difference, "<= 0.01 (within noise)",
            difference <= 0.01, f"fp32 95% CI half-width {precision_check['fp32_ci_half_width']:.3f}",
        ))
    return {
        "ratios": ratios,
        "targets": targets,
        "params": {
            "image_dim": IMAGE_DIM,
            "text_dim": TEXT_DIM,
            "classes": N_CLASSES,
            "sizes": sizes,
            "repeats": repeats,
            "torch_threads": thread_counts,
            "adaptor": "ReTuneConfig() defaults (dense 1280->256 and 384->256, input dropout 0.5)",
            "precisions": precisions,
            "n_tasks": n_tasks,
            "rows_per_task": rows_per_task,
            "task_epochs": task_epochs,
            "task_batch_size": 4096,
            "task_repeats": task_repeats,
            "task_torch_threads": task_threads,
            "methods": methods,
        },
        "timings": {"throughput": throughput, "per_task": per_task, "matmul_limit_seconds_224k": limits},
        "nih_precision_check": precision_check,
        "profile_batch4096_step": {"torch_threads": task_threads, "top_ops": breakdown},
    }
