"""What a run folder holds, read back: its metrics records and the settings that decided them.

The run-folder format (file names, run kinds, writing and loading) is owned here, so commands and the server never
parse run folders themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

from retune.errors import ConfigError


def read_run_metrics(run: Path) -> dict:
    """The ``metrics.json`` of a run folder (or the file itself); one line when it is missing or a scenario's."""
    path = run / "metrics.json" if run.is_dir() else run
    if not run.exists():
        raise ConfigError(f"{run}: does not exist")
    if run.is_dir() and not path.exists() and any(run.glob("*/results.json")):
        raise ConfigError(f"{run} is a scenario output folder; use `retune scenario compare {run}`")
    if not path.exists():
        raise ConfigError(f"{path}: no metrics.json here")
    return json.loads(path.read_text())


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
    config = (run if run.is_dir() else run.parent) / "config.json"
    if not config.exists():
        return {}
    facts = json.loads(config.read_text())
    settings = flat_settings(facts.get("train_config", {}))
    settings["backbone.fingerprint"] = str(facts.get("backbone", {}).get("fingerprint", ""))
    settings["methods"] = ", ".join(facts.get("methods", {}))
    if "tuning" in facts:
        settings.update(flat_settings(facts["tuning"], "tuning."))
    return settings
