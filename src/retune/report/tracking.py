"""MLflow tracking of scenario and training results: a local file store by default, any URI on request."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path


def default_tracking_uri(out_dir: Path) -> str:
    """A local MLflow file store beside the results (``<out>/mlruns``)."""
    return (Path(out_dir).resolve() / "mlruns").as_uri()


KEY_TAG = "retune.results_key"
DIGEST_TAG = "retune.results_sha256"
COMPLETE_TAG = "retune.logged"


def log_scenario_results(
    results: dict[str, dict], out_dir: Path, tracking_uri: str | None = None, params: dict | None = None
) -> str:
    """One MLflow run per method with its headline metrics, per-task curve and the report as artifacts.

    Idempotent: each run is tagged with a key of (output folder, method) and the SHA-256 of its results.json.
    A rerun finds it again: a complete run of the same results is kept as it is; one left half-logged by a
    kill, or of results that changed, is deleted and logged anew, so there is always one run per method.
    """
    import mlflow

    uri = tracking_uri or default_tracking_uri(out_dir)
    if uri.startswith("file:"):
        # MLflow 3 keeps the file store in maintenance mode behind this opt-in; a local folder is what we want.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    first = next(iter(results.values()))
    mlflow.set_experiment(f"retune-scenario-{first['scenario']}")
    experiment = mlflow.get_experiment_by_name(f"retune-scenario-{first['scenario']}")
    for name, result in results.items():
        key = hashlib.sha256(f"{Path(out_dir).resolve()}\0{name}".encode()).hexdigest()[:32]
        digest = hashlib.sha256((out_dir / name / "results.json").read_bytes()).hexdigest()
        if _keep_or_clear(mlflow, experiment.experiment_id, key, digest):
            continue
        with mlflow.start_run(run_name=name, tags={KEY_TAG: key, DIGEST_TAG: digest}):
            mlflow.log_params(
                {
                    "method": name,
                    "backbone": result["backbone"],
                    "kind": result.get("kind"),
                    "exemplar_free": result["exemplar_free"],
                    **(params or {}),
                }
            )
            headline = {
                key: result[key] for key in ("final_mean_auroc", "forgetting", "bwt", "average_incremental_auroc")
            }
            mlflow.log_metrics(
                {key: value for key, value in headline.items() if value is not None and not math.isnan(value)}
            )
            for step, value in enumerate(result["mean_auroc_per_task"], start=1):
                if value is not None:
                    mlflow.log_metric("mean_auroc_seen", value, step=step)
            mlflow.log_artifact(str(out_dir / name / "results.json"))
            if (out_dir / "report.html").exists():
                mlflow.log_artifact(str(out_dir / "report.html"))
            mlflow.set_tag(COMPLETE_TAG, "true")  # last: a run without it was interrupted
    return uri


def _keep_or_clear(mlflow, experiment_id: str, key: str, digest: str) -> bool:
    """True when a complete run of these very results exists; otherwise delete earlier runs under ``key``."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'", output_format="list"
    )
    complete = [r for r in runs if r.data.tags.get(COMPLETE_TAG) == "true" and r.data.tags.get(DIGEST_TAG) == digest]
    for run in runs:
        if not complete or run.info.run_id != complete[0].info.run_id:
            mlflow.delete_run(run.info.run_id)
    return bool(complete)
