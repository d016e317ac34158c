"""A run's or a scenario's train, val or test split as a CSV a user can keep, share or evaluate other models on.

The split is rebuilt the way training built it: the recorded CSV (refused when its content changed since), the rows
whose images the store holds for the recorded backbone, the patient-level split with the recorded fractions and seed.
For a run, the rebuilt split sizes must equal the recorded ones, so an export never silently differs from training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from retune.backbones.registry import create_backbone
from retune.config import DataConfig, SplitConfig, parse_config
from retune.data.splits import SPLIT_NAMES, patient_split
from retune.data.table import PATH_COLUMN
from retune.errors import ConfigError, DataError, StoreError, unknown_name
from retune.experiments.prepare import read_data
from retune.io_utils import atomic_path, read_json
from retune.methods.checkpoint import CONFIG, file_sha256
from retune.store import EmbeddingStore, image_embeddings


def export_split(folder: str | Path, split: str, out: str | Path) -> dict:
    """Write ``split`` of a run folder (config.json) or scenario folder (scenario.json) to ``out`` as CSV: the
    original CSV's rows when the table has one row per CSV row, else path, patient and labels. Returns a summary."""
    if split not in SPLIT_NAMES:
        raise unknown_name("split", split, list(SPLIT_NAMES))
    folder = Path(folder)
    if (folder / CONFIG).is_file():
        facts = read_json(folder / CONFIG)
        train_config = facts.get("train_config", {})
        data, split_config = train_config.get("data"), train_config.get("split", {})
        recorded = facts.get("split", {}).get("sizes")
        fingerprint, store = facts["backbone"]["fingerprint"], train_config.get("store", "retune-store")
        checksum = facts.get("data", {}).get("csv_sha256")
    elif (folder / "scenario.json").is_file():
        from retune.scenarios.runner import load_scenario_config

        config = load_scenario_config(folder)
        data, split_config, store = config.data.model_dump(), config.split.model_dump(), config.store
        recorded, checksum = None, None
        fingerprint = create_backbone(config.backbone, device="cpu").fingerprint
    else:
        raise ConfigError(f"{folder}: neither a run folder (config.json) nor a scenario output folder (scenario.json)")
    data = parse_config(data, DataConfig, f"{folder}: data")
    split_config = parse_config(split_config, SplitConfig, f"{folder}: split")
    if checksum and file_sha256(data.csv) != checksum:
        raise DataError(f"{data.csv}: its content changed since {folder} was trained; the split cannot be rebuilt")
    table = read_data(data)
    rows = _embedded_rows(table, fingerprint, Path(store))
    splits = patient_split(table.patients[rows], split_config.fractions, split_config.seed)
    sizes = {name: int(len(chosen)) for name, chosen in splits.items()}
    if recorded is not None and sizes != {name: int(recorded[name]) for name in SPLIT_NAMES}:
        raise DataError(
            f"{folder}: the rebuilt split ({sizes}) differs from the recorded one ({recorded}): the CSV's images or "
            f"the store {store} changed since training"
        )
    chosen = rows[splits[split]]
    raw = pd.read_csv(data.csv, dtype=str, keep_default_na=False)
    if len(raw) == len(table):
        frame = raw.iloc[chosen]
    else:  # a joined format (mimic): the table's own columns
        frame = table.subset(chosen).frame.rename(columns={PATH_COLUMN: "path"})
    out = Path(out)
    with atomic_path(out) as temp:
        frame.to_csv(temp, index=False)
    return {"folder": str(folder), "split": split, "csv": str(data.csv), "out": str(out), "n_rows": int(len(frame)),
            "n_patients": int(pd.unique(table.patients[chosen]).size), "sizes": sizes,
            "image_root": str(table.image_root)}


def _embedded_rows(table, fingerprint: str, store: Path) -> np.ndarray:
    """Positions of the rows training used: those whose images the store holds for the backbone."""
    if not (store / "manifest.json").is_file():
        raise ConfigError(f"{store}: the embedding store the split was made with is not there; it decides the rows")
    try:
        _, rows = image_embeddings(table, fingerprint, EmbeddingStore(store, create=False))
    except StoreError as error:
        raise DataError(f"cannot rebuild the split: {error}") from None
    return rows
