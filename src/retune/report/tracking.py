"""MLflow tracking of scenario and training results: a local file store by default, any URI on request."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path


def default_tracking_uri(out_dir: Path) -> str:
    """A local MLflow file store beside the results (``<out>/mlruns``)."""
    return (Path(out_dir).resolve() / "mlruns").as_uri()


def log_scenario_results(results: dict[str, dict], out_dir: Path, tracking_uri: str | None = None, params: dict | None = None) -> str:
    """One MLflow run per method with its headline metrics, per-task curve and the report as artifacts."""
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines ("Creating a new experiment") are not our output
    uri = tracking_uri or default_tracking_uri(out_dir)
    if uri.startswith("file:"):
        # MLflow 3 keeps the file store in maintenance mode behind this opt-in; a local folder is what we want.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    first = next(iter(results.values()))
    mlflow.set_experiment(f"retune-scenario-{first['scenario']}")
    for name, result in results.items():
        with mlflow.start_run(run_name=name):
            mlflow.log_params({"method": name, "backbone": result["backbone"], "kind": result.get("kind"), "exemplar_free": result["exemplar_free"], **(params or {})})
            headline = {key: result[key] for key in ("final_mean_auroc", "forgetting", "bwt", "average_incremental_auroc")}
            mlflow.log_metrics({key: value for key, value in headline.items() if value is not None and not math.isnan(value)})
            for step, value in enumerate(result["mean_auroc_per_task"], start=1):
                if value is not None:
                    mlflow.log_metric("mean_auroc_seen", value, step=step)
            mlflow.log_artifact(str(out_dir / name / "results.json"))
            if (out_dir / "report.html").exists():
                mlflow.log_artifact(str(out_dir / "report.html"))
    return uri
