"""(6) External cross-check: Avalanche's Naive, LwF and EWC strategies on retune's cached NIH task stream.

The same task stream as ``configs/nih-class-incremental.yaml`` (every order it lists): the runner's
``prepare`` reads the cached embeddings, the patient split and each task's rows, and this adapter
turns each task into one Avalanche experience (``benchmark_from_datasets`` over Avalanche's
``TaskAwareSupervisedClassificationDataset``) of (embedding, label row) pairs; a label row has NaN
for the classes the task does not reveal, and the criterion is
masked BCE, so the models are multi-label like retune's. The network is retune's baselines'
network (image adaptor + one linear output per class, all outputs allocated up front, as Avalanche
models usually are), trained with AdamW at the config's learning rate and weight decay, full batch,
for the config's number of epochs.

What differs from retune's own naive / lwf / ewc, on purpose (Avalanche's behaviour as shipped):
no early stopping on validation rows (Avalanche strategies train a fixed number of epochs);
Avalanche's LwF distils a softmax over the earlier classes' outputs (temperature 2), retune's
distils each earlier class's sigmoid (BCE); Avalanche's EWC keeps one Fisher per experience
("separate") with an unnormalised penalty, so its lambda is on another scale than retune's.
Avalanche's class bookkeeping (which output units LwF distils) comes from integer targets: each
row's target is one of its task's class columns, cycled, so the units are exactly the task's classes.

Scores after every task go through retune's ``continual_metrics`` (same test split, min-positives
rule, patient bootstrap), so both libraries are measured by one ruler.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.common import NIH_CSV, ROOT, Context, timed

NAME = "avalanche"
CONFIG = ROOT / "configs" / "nih-class-incremental.yaml"
STRATEGIES = ("naive", "lwf", "ewc")
LWF_ALPHA, LWF_TEMPERATURE = 1.0, 2.0
EWC_LAMBDA = 100.0
RETUNE_TWINS = {"naive": "naive", "lwf": "lwf", "ewc": "ewc"}


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the labelled entries (NaN = not revealed by this task)."""
    known = ~torch.isnan(labels)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[known], labels[known])


def experiences(prepared, order: int) -> tuple[list, np.ndarray]:
    """Avalanche training datasets for one order's tasks, and the test split's embeddings."""
    from avalanche.benchmarks.utils import DataAttribute, TaskAwareSupervisedClassificationDataset
    from avalanche.benchmarks.utils.flat_data import ConstantSequence
    from torch.utils.data import TensorDataset

    from retune.scenarios.runner import task_data

    datasets = []
    for task, (train, val) in zip(prepared.tasks_by_order[order], prepared.rows_by_order[order]):
        data = task_data(prepared, task, train, val)
        columns = [prepared.classes.index(c) for c in task.classes]
        labels = np.full((len(data.train_x), len(prepared.classes)), np.nan, dtype=np.float32)
        labels[:, columns] = data.train_y
        targets = [columns[i % len(columns)] for i in range(len(labels))]
        attributes = [
            DataAttribute(targets, "targets"),
            DataAttribute(ConstantSequence(0, len(labels)), "targets_task_labels", use_in_getitem=True),
        ]
        tensors = TensorDataset(
            torch.as_tensor(data.train_x), torch.as_tensor(labels)
        )  # label rows stay vectors (multi-label)
        datasets.append(TaskAwareSupervisedClassificationDataset([tensors], data_attributes=attributes))
    return datasets, prepared.images[prepared.test_rows]


def run_strategy(kind: str, prepared, config, order: int) -> list[np.ndarray]:
    """Train one Avalanche strategy through one order; test scores after each task (NaN for unseen classes)."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import EWC, LwF, Naive

    from retune.methods.continual import SharedHeadModel

    torch.manual_seed(config.seed)
    datasets, test_x = experiences(prepared, order)
    stream = benchmark_from_datasets(train=datasets)
    model = SharedHeadModel(prepared.images.shape[1], 0, config.retune)
    model.add_outputs(len(prepared.classes))
    optim = config.retune.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    common = {
        "model": model,
        "optimizer": optimizer,
        "criterion": masked_bce,
        "train_mb_size": max(len(d) for d in datasets),
        "train_epochs": optim.epochs,
        "device": "cpu",
        "evaluator": EvaluationPlugin(loggers=[]),
    }
    strategy = {
        "naive": lambda: Naive(**common),
        "lwf": lambda: LwF(alpha=LWF_ALPHA, temperature=LWF_TEMPERATURE, **common),
        "ewc": lambda: EWC(ewc_lambda=EWC_LAMBDA, **common),
    }[kind]()
    seen: list[int] = []
    scores = []
    for task, experience in zip(prepared.tasks_by_order[order], stream.train_stream):
        strategy.train(experience)
        seen += [prepared.classes.index(c) for c in task.classes if prepared.classes.index(c) not in seen]
        model.eval()
        with torch.no_grad():
            probabilities = torch.sigmoid(model(torch.as_tensor(test_x))).numpy()
        masked = np.full_like(probabilities, np.nan)
        masked[:, seen] = probabilities[:, seen]
        scores.append(masked)
    return scores


def run(ctx: Context) -> dict:
    from retune.evaluation import continual_metrics, mean_and_sd
    from retune.scenarios.runner import load_results, named_continual_metrics, prepare
    from retune.scenarios.spec import load_scenario

    try:
        import avalanche
    except ImportError as error:
        return {
            "ratios": {},
            "targets": [],
            "rows": [],
            "skipped": f"avalanche-lib is not installed ({error}); pip install 'retune[avalanche]'",
        }
    config = load_scenario(CONFIG)
    config.data.csv = NIH_CSV
    config.store = ctx.workdir / "stores" / "nih"
    if ctx.quick:
        config.orders = config.orders[:1]
        config.retune.optim.epochs = 20
        config.n_bootstrap = 100
    prepared = prepare(config)
    labels, patients = prepared.labels[prepared.test_rows], prepared.patients[prepared.test_rows]
    rows, seconds = [], {}
    for kind in STRATEGIES:
        per_order = []
        for order in config.orders:
            ctx.log(f"avalanche {kind} order {order}")
            elapsed, scores = timed(lambda kind=kind, order=order: run_strategy(kind, prepared, config, order))
            seconds[f"{kind}/order{order}"] = elapsed
            metrics = continual_metrics(
                scores,
                labels,
                patients,
                n_bootstrap=config.n_bootstrap if not per_order or config.bootstrap_every_run else 0,
                seed=config.seed,
                min_positives=config.min_positives,
            )
            per_order.append({"order": order, **named_continual_metrics(metrics, prepared.classes)})
        first = per_order[0]
        rows.append(
            {
                "library": "avalanche",
                "method": kind,
                "final_mean_auroc": first["final_mean_auroc"],
                "final_mean_auroc_ci": first["final_mean_auroc_ci"],
                "forgetting": first["forgetting"],
                "forgetting_ci": first["forgetting_ci"],
                "n_classes_in_mean": first["n_classes_in_mean"],
                "final_over_orders": mean_and_sd([o["final_mean_auroc"] for o in per_order]),
                "forgetting_over_orders": mean_and_sd([o["forgetting"] for o in per_order]),
                "orders": per_order,
            }
        )
    retune_rows = []
    for folder in ctx.scenario_results:
        for name, result in load_results(folder).items():
            if name in RETUNE_TWINS.values():
                over = result.get("over_runs", {})
                retune_rows.append(
                    {
                        "library": "retune",
                        "method": name,
                        "source": str(folder),
                        "final_mean_auroc": result["final_mean_auroc"],
                        "final_mean_auroc_ci": result["final_mean_auroc_ci"],
                        "forgetting": result["forgetting"],
                        "forgetting_ci": result["forgetting_ci"],
                        "final_over_orders": over.get("final_mean_auroc"),
                        "forgetting_over_orders": over.get("forgetting"),
                    }
                )
    return {
        "ratios": {},
        "targets": [],
        "rows": rows + retune_rows,
        "params": {
            "config": str(CONFIG.relative_to(ROOT)),
            "orders": config.orders,
            "epochs": config.retune.optim.epochs,
            "lr": config.retune.optim.lr,
            "weight_decay": config.retune.optim.weight_decay,
            "lwf": {"alpha": LWF_ALPHA, "temperature": LWF_TEMPERATURE},
            "ewc_lambda": EWC_LAMBDA,
            "avalanche_version": avalanche.__version__,
            "min_positives": config.min_positives,
            "n_bootstrap": config.n_bootstrap,
            "note": "default backbone is general-domain (ImageNet EfficientNet-Lite0 + MiniLM), not medical",
        },
        "timings": seconds,
    }
