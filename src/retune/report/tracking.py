"""MLflow tracking of every run kind: a local file store by default (browse with ``retune ui``), any URI on request.

Each MLflow run holds every setting that decides results (the whole config flattened, data CSV digest, backbone
fingerprint, package versions), per-class AUROC with CI bounds, per-epoch training loss and validation score as
metric histories, and the run's plots, report, card and JSON files as artifacts. Never the store, the checkpoint's
leakage digests or any image path beyond the CSV's own.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import signal
import time
from pathlib import Path

ARTIFACT_SUFFIXES = (".json", ".md", ".png", ".html", ".yaml")


def _mlflow(uri: str):
    """mlflow, pointed at ``uri``, with its INFO chatter ("Creating a new experiment") kept out of our output."""
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    if uri.startswith("file:"):
        # MLflow 3 keeps the file store in maintenance mode behind this opt-in; a local folder is what we want.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    return mlflow


def flat_params(payload: dict, prefix: str = "") -> dict[str, str]:
    """Nested settings as ``a.b.c -> value`` strings (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_params(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def numeric_leaves(payload: dict, prefix: str = "") -> dict[str, float]:
    """Every number inside nested dicts as ``a.b.c -> value`` (for metrics such as retrieval R@K)."""
    found: dict[str, float] = {}
    for key, value in payload.items():
        if isinstance(value, dict):
            found.update(numeric_leaves(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[f"{prefix}{key}"] = float(value)
    return found


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (``missing`` when it is gone): identifies the exact label CSV a run used."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "missing"


def run_params(facts: dict) -> dict[str, str]:
    """Every result-deciding value of a run's config.json facts, flattened."""
    config = facts.get("train_config") or facts.get("adaptor_config") or facts.get("bench_config") or {}
    params = flat_params(config, "config.")
    params.update(flat_params(facts.get("mix", {}), "mix."))  # an objectives bench run's mix
    backbone = facts.get("backbone", {})
    params["backbone.spec"] = str(backbone.get("spec"))
    params["backbone.fingerprint"] = str(backbone.get("fingerprint"))
    params.update(flat_params(facts.get("versions", {}), "version."))
    params.update(flat_params(facts.get("tuning", {}), "tuning."))
    params.update(
        {f"split.{name}_images": str(size) for name, size in facts.get("split", {}).get("sizes", {}).items()}
    )
    csv = config.get("data", {}).get("csv")
    if csv:
        params["data.csv_sha256"] = file_digest(csv)
    return params


def metric_name(name: str) -> str:
    """``name`` with the characters MLflow refuses in metric names (``R@1``, ``+``) made underscores."""
    return re.sub(r"[^\w\-. :/]", "_", name)


def _finite(values: dict[str, float | None]) -> dict[str, float]:
    """The defined values, under names MLflow accepts (undefined AUROCs stay out rather than becoming 0)."""
    return {
        metric_name(key): float(value) for key, value in values.items() if value is not None and not math.isnan(value)
    }


def record_metrics(record: dict, prefix: str) -> dict[str, float]:
    """Mean and per-class AUROC (and AUPRC) of one metrics record, with CI bounds, as flat MLflow metrics."""
    values = {f"{prefix}mean_auroc": record.get("mean_auroc")}
    if record.get("mean_auroc_ci"):
        values[f"{prefix}mean_auroc_ci_low"], values[f"{prefix}mean_auroc_ci_high"] = record["mean_auroc_ci"]
    for name, metrics in record.get("per_class", {}).items():
        key = name.replace(" ", "_")
        values[f"{prefix}auroc.{key}"] = metrics.get("auroc")
        values[f"{prefix}auprc.{key}"] = metrics.get("auprc")
        if metrics.get("auroc_ci"):
            values[f"{prefix}auroc.{key}.ci_low"], values[f"{prefix}auroc.{key}.ci_high"] = metrics["auroc_ci"]
    return _finite(values)


def _log_histories(mlflow, training: dict) -> None:
    """Per-epoch training loss and validation score of every method as metric histories (step = epoch)."""
    for method, facts in training.items():
        history = facts.get("history", {}) if isinstance(facts, dict) else {}
        for name in ("train_loss", "val_score"):
            for epoch, value in enumerate(history.get(name, []), start=1):
                if value is not None and not math.isnan(value):
                    mlflow.log_metric(metric_name(f"{method}.{name}"), value, step=epoch)


def _local_store(uri: str) -> Path | None:
    """The folder of a ``file:`` tracking URI (None for a server)."""
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else None


def _log_artifacts(mlflow, folder: Path, uri: str, private: tuple[str, ...]) -> None:
    """The run's small readable files (JSON, card, plots, report), never the ``private`` ones (the leakage digests)
    nor the MLflow store itself when it lies inside the folder."""
    store = _local_store(uri)
    for path in sorted(folder.rglob("*")):
        if (
            path.is_file()
            and path.suffix in ARTIFACT_SUFFIXES
            and path.name not in private
            and not (store is not None and path.resolve().is_relative_to(store))
        ):
            mlflow.log_artifact(
                str(path), artifact_path=str(path.parent.relative_to(folder)) if path.parent != folder else None
            )


def log_run(
    out_dir: str | Path,
    kind: str,
    facts: dict,
    records: dict[str, dict],
    histories: dict[str, dict],
    uri: str,
    extra_metrics: dict[str, float | None] | None = None,
    private: tuple[str, ...] = (),
) -> str:
    """One MLflow run for a run directory: its settings, ``records`` (metric prefix -> metrics record), ``histories``
    (method -> facts holding a per-epoch ``history``), extra metrics and artifacts (all but ``private`` files).
    Returns the tracking URI."""
    out_dir = Path(out_dir)
    mlflow = _mlflow(uri)
    mlflow.set_experiment(f"retune-{kind}")
    with mlflow.start_run(run_name=out_dir.name):
        mlflow.set_tags({"retune.kind": kind, "retune.run_dir": str(out_dir.resolve())})
        mlflow.log_params(run_params(facts))
        values = _finite(extra_metrics or {})
        for prefix, record in records.items():
            values.update(record_metrics(record, prefix))
        mlflow.log_metrics(values)
        _log_histories(mlflow, histories)
        _log_artifacts(mlflow, out_dir, uri, private)
    return uri


KEY_TAG = "retune.results_key"
DIGEST_TAG = "retune.results_sha256"
COMPLETE_TAG = "retune.logged"


def log_scenario_results(
    results: dict[str, dict],
    out_dir: Path,
    uri: str,
    params: dict | None = None,
    histories: dict[str, dict[str, dict]] | None = None,
) -> str:
    """One MLflow run per method: the scenario config, headline metrics with CIs, per-task curve, final per-class
    AUROC, per-task training histories (``histories``: method -> {task name: facts with a per-epoch ``history``},
    logged as ``<task>.train_loss`` / ``<task>.val_score``), and the report, config and plots as artifacts.

    Idempotent: each run is tagged with a key of (output folder, method) and the SHA-256 of its results.json.
    A rerun finds it again: a complete run of the same results is kept as it is; one left half-logged by a
    kill, or of results that changed, is deleted and logged anew, so there is always one run per method.
    """
    import json

    out_dir = Path(out_dir)
    mlflow = _mlflow(uri)
    first = next(iter(results.values()))
    mlflow.set_experiment(f"retune-scenario-{first['scenario']}")
    experiment = mlflow.get_experiment_by_name(f"retune-scenario-{first['scenario']}")
    scenario_file = out_dir / "scenario.json"
    scenario = json.loads(scenario_file.read_text()) if scenario_file.exists() else {}
    config = flat_params(scenario, "config.")
    csv = scenario.get("data", {}).get("csv")
    _drop_runs_killed_at_creation(uri, experiment.experiment_id, set(results))
    for name, result in results.items():
        key = hashlib.sha256(f"{out_dir.resolve()}\0{name}".encode()).hexdigest()[:32]
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
                    **config,
                    **({"data.csv_sha256": file_digest(csv)} if csv else {}),
                    **(params or {}),
                }
            )
            headline = {
                key: result.get(key) for key in ("final_mean_auroc", "forgetting", "bwt", "average_incremental_auroc")
            }
            for metric in ("final_mean_auroc", "forgetting", "bwt"):
                if result.get(f"{metric}_ci"):
                    headline[f"{metric}_ci_low"], headline[f"{metric}_ci_high"] = result[f"{metric}_ci"]
            final_row = (result.get("auroc_matrix") or [[]])[-1]
            headline.update({f"final_auroc.{cls}": value for cls, value in zip(result.get("classes", []), final_row)})
            mlflow.log_metrics(_finite(headline))
            for step, value in enumerate(result["mean_auroc_per_task"], start=1):
                if value is not None:
                    mlflow.log_metric("mean_auroc_seen", value, step=step)
            _log_histories(mlflow, (histories or {}).get(name, {}))
            mlflow.log_artifact(str(out_dir / name / "results.json"))
            for shared in ("report.html", "scenario.json"):
                if (out_dir / shared).exists():
                    mlflow.log_artifact(str(out_dir / shared))
            if (out_dir / "plots").is_dir():
                mlflow.log_artifacts(str(out_dir / "plots"), artifact_path="plots")
            mlflow.set_tag(COMPLETE_TAG, "true")  # last: a run without it was interrupted
    return uri


def _drop_runs_killed_at_creation(uri: str, experiment_id: str, names: set[str]) -> None:
    """Remove file-store run folders a process killed while MLflow created them left behind: ``meta.yaml`` missing
    or empty (MLflow's file store then fails every search of the experiment), or a run of one of these methods
    (``names``) without the results key, which MLflow writes just after ``meta.yaml`` (a search by key never finds
    it, so it would stay beside the run logged anew). Such a folder holds no results (those are in
    ``results.json``); the run is logged again."""
    store = _local_store(uri)
    if store is None:
        return
    folder = store / experiment_id
    for run_dir in folder.iterdir() if folder.is_dir() else []:
        meta = run_dir / "meta.yaml"
        is_run = run_dir.is_dir() and re.fullmatch(r"[0-9a-f]{32}", run_dir.name)  # run ids, not tags/ etc.
        text = meta.read_text() if is_run and meta.is_file() else ""
        named = re.search(r"^run_name: (.*)$", text, re.M)
        unkeyed = bool(named) and named.group(1).strip().strip("'\"") in names and not (
            run_dir / "tags" / KEY_TAG).is_file()
        if is_run and (not text.strip() or unkeyed):
            shutil.rmtree(run_dir, ignore_errors=True)


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


def mlflow_ui(store: Path, host: str, port: int, announce=print) -> int:
    """Run ``mlflow ui`` over the MLflow file store ``store`` until it stops; returns its exit code.
    Same as ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri file://STORE``."""
    import subprocess
    import sys

    from retune.errors import ConfigError

    if not store.is_dir():
        raise ConfigError(f"{store}: does not exist (expected a run folder with mlruns/ or an mlruns folder)")
    if not any(store.glob("*/meta.yaml")):
        raise ConfigError(
            f"{store}: not an MLflow file store (no experiment folders with meta.yaml); "
            "pass a run folder made by retune"
        )
    try:
        import mlflow.server  # noqa: F401  (absent with mlflow-skinny)
    except ImportError as error:
        raise ConfigError(f"the MLflow UI needs the full mlflow package ({error}); pip install mlflow") from None
    environment = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store.resolve().as_uri()]
    command += ["--host", host, "--port", str(port), "--workers", "1"]
    # its own process group: mlflow starts a web server child; a signal to retune reaches them all
    process = subprocess.Popen(command, env=environment, start_new_session=True)

    def forward(signum, _frame) -> None:
        _signal_group(process, signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        if _wait_for_port(process, host, port):
            announce(f"MLflow UI for {store.resolve()} on http://{host}:{port} (Ctrl-C stops it)")
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)


def _signal_group(process, signum: int) -> None:
    """Send ``signum`` to the process group ``process`` leads (gone already: nothing to do)."""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def _wait_for_port(process, host: str, port: int, timeout: float = 120.0) -> bool:
    """Whether ``host:port`` answers before ``process`` exits (False) or ``timeout`` seconds pass (False)."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False
