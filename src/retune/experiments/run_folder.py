"""The run-folder format, owned here: file names, the run-kind vocabulary, writing a finished run (``finish_run``)
and reading one back. Experiments write through ``finish_run``; the API, commands, server and MLflow tracking read
and locate files through this module, so no one else spells a run folder's file names.

A run folder (``retune train``, ``retune peft run``, ``retune adaptor run``) holds ``checkpoint.safetensors`` and
``config.json`` (tensors and facts, written together by ``retune.methods.checkpoint``), ``training_digests.json``
(the leakage guard's salted digests, ``retune.evaluation.leakage``), ``metrics.json``, ``RUN_CARD.md``,
``report.html`` and plots where the kind makes them, and ``mlruns/`` (its MLflow run, unless tracked elsewhere).
A scenario output folder keeps each method's per-task states under ``work/<method>/order<N>-seed<S>/task<T>/``.
"""

from __future__ import annotations

import json
from pathlib import Path

from retune.errors import ConfigError
from retune.evaluation.leakage import DIGESTS_FILE
from retune.io_utils import read_json, write_json_atomic, write_text_atomic
from retune.methods.checkpoint import CHECKPOINT, CONFIG, package_versions, save_checkpoint
from retune.report.run_card import run_card
from retune.report.tracking import log_run, log_scenario_results

DIGESTS = DIGESTS_FILE
METRICS = "metrics.json"
REPORT = "report.html"
RUN_CARD = "RUN_CARD.md"
MLRUNS = "mlruns"
ROC_PLOT = "roc_curves.png"
CALIBRATION_PLOT = "calibration.png"
WORK = "work"  # a scenario output folder's per-task states

# The run kinds a run folder's config.json records (``kind``), also its MLflow experiment (retune-<kind>), the run
# card's title and the server's label. Other kinds register a loader in ``retune.experiments.kinds``.
TRAIN, PEFT, ADAPTOR = "train", "peft", "adaptor"
RECORDED_KIND_NAMES = {"retune-train": TRAIN}  # what folders written before the names were unified record


def run_kind(facts: dict) -> str:
    """The kind a run's config.json records, in today's names; older runs (no ``kind``) are told apart by the block
    each wrote."""
    if "kind" in facts:
        return RECORDED_KIND_NAMES.get(facts["kind"], facts["kind"])
    if "tuning" in facts:
        return PEFT
    if "adaptor_config" in facts:
        return ADAPTOR
    return TRAIN


def tracking_uri(out_dir: Path, configured: str | None = None) -> str:
    """Where a folder's MLflow runs go: the configured URI, else a local file store in ``<out>/mlruns``."""
    return configured or (Path(out_dir).resolve() / MLRUNS).as_uri()


def mlflow_store(folder: Path) -> Path:
    """The local MLflow store of a run or scenario folder (its ``mlruns/``), or ``folder`` itself when it is one."""
    return folder / MLRUNS if (folder / MLRUNS).is_dir() else folder


def finish_run(
    out_dir: Path,
    kind: str,
    states: dict[str, tuple[dict, dict]],
    facts: dict,
    metrics: dict,
    tracked: dict[str, dict],
    histories: dict[str, dict],
    configured_uri: str | None = None,
    extra_metrics: dict[str, float | None] | None = None,
    report_html: str | None = None,
    card: str | None = None,
) -> None:
    """Write a finished run in one step: checkpoint and config.json (``facts`` with ``kind``), metrics.json,
    report.html (when given), RUN_CARD.md (``card``, else the card ``retune.report.run_card`` makes for the kind),
    and last its MLflow run (``tracked``: metric prefix -> metrics record, ``histories``: method -> facts with a
    per-epoch ``history``), which takes the files above as artifacts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = {"kind": kind, **facts}
    save_checkpoint(out_dir, states, facts)
    write_json_atomic(out_dir / METRICS, metrics)
    files = [CHECKPOINT, CONFIG, METRICS]
    if report_html is not None:
        write_text_atomic(out_dir / REPORT, report_html)
        files.append(REPORT)
    write_text_atomic(out_dir / RUN_CARD, card or run_card(facts, metrics, kind, files, MLRUNS))
    log_run(
        out_dir,
        kind,
        {**facts, "versions": package_versions()},
        tracked,
        histories,
        tracking_uri(out_dir, configured_uri),
        extra_metrics,
        private=(DIGESTS,),
    )


def read_run_facts(run: Path) -> dict:
    """A run folder's ``config.json`` (backbone, classes, prompts, split, training config); one line when missing."""
    path = Path(run) / CONFIG
    if not path.is_file():
        raise ConfigError(f"{run}: no {CONFIG} here (is this a retune run folder?)")
    return read_json(path)


def read_run_metrics(run: Path) -> dict:
    """The ``metrics.json`` of a run folder (or the file itself); one line when it is missing or a scenario's."""
    run = Path(run)
    path = run / METRICS if run.is_dir() else run
    if not run.exists():
        raise ConfigError(f"{run}: does not exist")
    if run.is_dir() and not path.exists() and any(run.glob("*/results.json")):
        raise ConfigError(f"{run} is a scenario output folder; use `retune scenario compare {run}`")
    if not path.exists():
        raise ConfigError(f"{path}: no {METRICS} here")
    return read_json(path)


def metric_records(payload: dict, prefix: str = "") -> list[tuple[str, dict]]:
    """Every metrics record (a dict with mean_auroc and per_class) inside a metrics.json, with a label."""
    if "mean_auroc" in payload and "per_class" in payload:
        found = [(prefix or payload.get("method", "?"), payload)]
    else:
        found = []
    for key, value in payload.items():
        if not isinstance(value, dict) or key == "per_class":
            continue
        if key == "baselines":  # baseline records are labelled by their own method name
            found += metric_records(value)
        else:
            label = value.get("method", key) if "mean_auroc" in value else key
            found += metric_records(value, f"{prefix}/{label}" if prefix else label)
    return found


def flat_settings(payload: dict, prefix: str = "") -> dict[str, str]:
    """Nested config values as ``a.b.c -> text`` (lists and scalars as text)."""
    flat = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)
    return flat


def run_settings(run: Path) -> dict[str, str]:
    """What decides a run's results, flattened: its training config, backbone and methods (from config.json)."""
    config = (run if run.is_dir() else run.parent) / CONFIG
    if not config.exists():
        return {}
    facts = read_json(config)
    settings = flat_settings(facts.get("train_config", {}))
    settings["backbone.fingerprint"] = str(facts.get("backbone", {}).get("fingerprint", ""))
    settings["methods"] = ", ".join(facts.get("methods", {}))
    if "tuning" in facts:
        settings.update(flat_settings(facts["tuning"], "tuning."))
    return settings


def scenario_run_folder(work_dir: Path, method: str, order: int, seed: int) -> Path:
    """Where one (method, order, seed) scenario run keeps its per-task states (``task<T>/`` below it)."""
    return Path(work_dir) / method / f"order{order}-seed{seed}"


def task_folder(run_folder: Path, task: int) -> Path:
    """The saved state after task ``task`` (counted from 1) of one scenario run."""
    return Path(run_folder) / f"task{task}"


def scenario_histories(out_dir: Path, results: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """Per-task training facts (with per-epoch histories) of each method's first (order, seed) run, the run its
    results.json reports on top: method -> {``task<T>``: learn facts}."""
    histories = {}
    for name, result in results.items():
        first = result["orders"][0]
        folder = scenario_run_folder(Path(out_dir) / WORK, name, first["order"], first["seed"])
        histories[name] = {
            f"task{task}": read_json(task_folder(folder, task) / CONFIG).get("learn", {})
            for task in range(1, len(first["tasks"]) + 1)
            if (task_folder(folder, task) / CONFIG).is_file()
        }
    return histories


def track_scenario(results: dict[str, dict], out_dir: Path, configured_uri: str | None = None) -> str:
    """One MLflow run per method of a finished scenario, with its per-task training histories; returns the URI."""
    return log_scenario_results(
        results, Path(out_dir), tracking_uri(out_dir, configured_uri), histories=scenario_histories(out_dir, results)
    )

