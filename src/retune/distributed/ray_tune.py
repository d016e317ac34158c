"""``retune tune CONFIG``: search RE-tune's options on the validation split with Ray Tune (Optuna + ASHA).

The driver reads and embeds the data once (the local embedding job), splits by patient and hands the trials
one ``TaskData`` holding the training and validation rows only: the test split never leaves the driver, so no
trial can see it. Each trial trains with the ordinary method code; its per-epoch validation mean AUROC (the
method's own early-stopping score) is reported to Tune, so ASHA stops poor trials early, and the validation AUROC
of its kept weights is reported last. The best trial's options are written as a ``retune train`` config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import Field, model_validator

from retune.config import ReTuneConfig, StrictModel, TrainConfig, override
from retune.errors import ConfigError
from retune.methods.base import MethodContext, TaskData
from retune.verbosity import third_party_output_shown

METRIC = "val_mean_auroc"


class Range(StrictModel):
    """A continuous range to sample from (log-uniform with ``log``)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"need low < high (and low > 0 with log), got low={self.low}, high={self.high}")
        return self


SearchValue = Range | list[float]


class SearchSpace(StrictModel):
    """What is searched: each option a range or a list of choices; null keeps the base config's value."""

    lr: SearchValue | None = Range(low=1e-4, high=3e-3, log=True)
    weight_decay: SearchValue | None = Range(low=0.0, high=0.3)
    dropout: SearchValue | None = Range(low=0.0, high=0.7)
    shared_dim: list[int] | None = Field(default_factory=lambda: [128, 256, 512])
    epochs: list[int] | None = Field(default_factory=lambda: [100, 300])


class TuneConfig(TrainConfig):
    """``retune tune``: a ``retune train`` config (its ``retune`` block is the base) plus the search."""

    search: SearchSpace = SearchSpace()
    trials: int = Field(8, ge=1, description="Configurations to try.")
    searcher: Literal["optuna", "random"] = Field("optuna", description="optuna (TPE) or random sampling.")
    scheduler: Literal["asha", "none"] = Field("asha", description="asha: stop trials whose validation AUROC lags.")
    grace_epochs: int = Field(10, ge=1, description="ASHA: epochs every trial runs before it may be stopped.")
    concurrent: int | None = Field(None, ge=1, description="Trials at once (default: one per CPU).")



@contextlib.contextmanager
def _restored(setter, value):
    """Call ``setter(value)`` on leaving the block, however it ends (a library setting put back as found)."""
    try:
        yield
    finally:
        setter(value)


def trial_options(base: ReTuneConfig, params: dict) -> ReTuneConfig:
    """``base`` with a trial's sampled options applied (validated like YAML)."""
    optim = {key: params.get(key) for key in ("lr", "weight_decay", "epochs")}
    adaptor = {"dropout": params.get("dropout"), "shared_dim": params.get("shared_dim")}
    return override(base, {"optim": optim, "adaptor": adaptor}, where="search")


def _param_space(space: SearchSpace) -> dict:
    from ray import tune

    def sampler(value):
        if isinstance(value, Range):
            return tune.loguniform(value.low, value.high) if value.log else tune.uniform(value.low, value.high)
        return tune.choice(list(value))

    return {
        name: sampler(getattr(space, name)) for name in SearchSpace.model_fields if getattr(space, name) is not None
    }


def run_trial(params: dict, task: TaskData, context: MethodContext, base: dict) -> None:
    """One Ray Tune trial: train on ``task``'s training rows, report validation mean AUROC per epoch and at the end."""
    import torch
    from ray import tune

    from retune.evaluation import fast_mean_auroc
    from retune.methods.registry import create_method

    torch.set_num_threads(1)

    def reporting(scores: np.ndarray, labels: np.ndarray) -> float | None:
        score = context.val_score(scores, labels)
        tune.report({METRIC: math.nan if score is None else score, "final": False})
        return score

    method = create_method(
        "retune",
        dataclasses.replace(context, val_score=reporting),
        trial_options(ReTuneConfig.model_validate(base), params),
    )
    # the object store hands out read-only arrays; torch wants writable ones
    method.learn(dataclasses.replace(task, train_x=task.train_x.copy(), val_x=task.val_x.copy()))
    final = fast_mean_auroc(method.predict(task.val_x), task.val_y)
    tune.report({METRIC: math.nan if final is None else final, "final": True})


def search_task(images: np.ndarray, labels: np.ndarray, classes: list[str], splits: dict[str, np.ndarray]) -> TaskData:
    """The only data trials receive: training and validation rows (copies); the test rows are left out."""
    return TaskData(
        tuple(classes),
        images[splits["train"]].copy(),
        labels[splits["train"]].copy(),
        images[splits["val"]].copy(),
        labels[splits["val"]].copy(),
    )


def tune_run(config: TuneConfig, out_dir: str | Path, address: str | None = None, show_progress: bool = False) -> dict:
    """Search, then write OUT/best.yaml (a ``retune train`` config), OUT/trials.csv and OUT/search.json."""
    from retune.backbones.registry import create_backbone
    from retune.data.splits import patient_split
    from retune.distributed.cluster import connect
    from retune.experiments.prepare import GENERAL_DOMAIN_NOTE, embed_and_load, method_context, prompt_bank, read_data
    from retune.io_utils import write_json_atomic
    from retune.store import EmbeddingStore

    out_dir = Path(out_dir).resolve()
    table = read_data(config.data)
    backbone = create_backbone(config.backbone, device=config.device)
    store = EmbeddingStore(config.store)
    embedded = embed_and_load(table, backbone, store, show_progress)
    classes = list(embedded.table.classes)
    splits = patient_split(embedded.table.patients, config.split.fractions, config.split.seed)
    bank, _ = prompt_bank(classes, config.retune.prompts, backbone, store)
    task = search_task(embedded.images, embedded.table.labels(), classes, splits)
    context = method_context(backbone, bank, config.seed)

    ray = connect(address)
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    shown = third_party_output_shown()
    searcher, restore_optuna = None, contextlib.nullcontext()
    if config.searcher == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        if not shown:  # no "A new study created" line; the caller's verbosity back once the search ends
            restore_optuna = _restored(optuna.logging.set_verbosity, optuna.logging.get_verbosity())
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        searcher = OptunaSearch(metric=METRIC, mode="max", seed=config.seed)
    epochs = max(config.search.epochs or [config.retune.optim.epochs])
    scheduler = (
        ASHAScheduler(time_attr="training_iteration", max_t=epochs + 1, grace_period=config.grace_epochs)
        if config.scheduler == "asha"
        else None
    )
    concurrent = config.concurrent or max(1, int(ray.cluster_resources().get("CPU", 1)))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, task=task, context=context, base=config.retune.model_dump(mode="json")),
        {"cpu": 1},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=_param_space(config.search),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=config.trials,
            max_concurrent_trials=concurrent,
        ),
        run_config=tune.RunConfig(name="search", storage_path=str(out_dir / "ray"), verbose=1 if shown else 0),
    )
    # Even at verbose=0 Tune prints its experiment table, results folder and a TensorBoard hint to stdout.
    with restore_optuna, contextlib.nullcontext() if shown else contextlib.redirect_stdout(io.StringIO()):
        grid = tuner.fit()
    errors = [str(result.error).strip().splitlines()[-1] for result in grid if result.error]
    if len(errors) == len(grid):
        raise ConfigError(f"every trial failed; the first: {errors[0]}")
    best = grid.get_best_result(metric=METRIC, mode="max", scope="last")
    params = {key: value for key, value in best.config.items() if key in SearchSpace.model_fields}
    tuned = config.model_copy(update={"retune": trial_options(config.retune, params)})
    best_config = TrainConfig.model_validate(
        {key: value for key, value in tuned.model_dump(mode="json").items() if key in TrainConfig.model_fields}
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "best.yaml").write_text(yaml.safe_dump(best_config.model_dump(mode="json"), sort_keys=False))
    frame = grid.get_dataframe(filter_metric=METRIC, filter_mode="max")
    frame.to_csv(out_dir / "trials.csv", index=False)
    summary = {
        "best_params": params,
        "best_val_mean_auroc": best.metrics[METRIC],
        "split": "validation",
        "n_train_rows": int(len(task.train_x)),
        "n_val_rows": int(len(task.val_x)),
        "n_test_rows_unseen": int(len(splits["test"])),
        "trials": len(grid),
        "failed_trials": len(errors),
        "searcher": config.searcher,
        "scheduler": config.scheduler,
        "epochs_run": {str(i): int(result.metrics.get("training_iteration", 0)) for i, result in enumerate(grid)},
        "note": GENERAL_DOMAIN_NOTE if config.backbone == "default" else "",
    }
    write_json_atomic(out_dir / "search.json", summary)
    write_json_atomic(out_dir / "tune_config.json", json.loads(config.model_dump_json()))
    return summary
