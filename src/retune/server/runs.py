"""Runs the server holds: each opened once at startup (weights in memory), with its metrics and config for browsing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from retune.errors import ConfigError
from retune.experiments.inference import PatchScorer, SavedRun, open_run, patch_scorer
from retune.experiments.run_folder import METRICS, ROC_PLOT, read_run_metrics, run_kind


@dataclass
class ServedRun:
    """One served run: its name (the folder name, unique), the loaded model and what the run folder records."""

    name: str
    directory: Path
    model: SavedRun
    metrics: dict
    patches: PatchScorer | None = None  # patch-to-prompt similarity maps, where the backbone allows them

    @property
    def explanations(self) -> list[str]:
        """Explanation maps this run offers: occlusion always, patch-to-prompt similarity where possible."""
        return ["occlusion", "patch"] if self.patches is not None else ["occlusion"]

    @property
    def kind(self) -> str:
        """The run kind its config.json records (``train``, ``peft``, ...)."""
        return run_kind(self.model.facts)

    @property
    def thresholds(self) -> dict[str, float]:
        """Decision thresholds per class, chosen on validation when the run was trained (older runs store none)."""
        return {str(k): float(v) for k, v in (self.model.facts.get("thresholds") or {}).items()}

    @property
    def threshold_rule(self) -> str | None:
        """How the run chose its decision thresholds (e.g. Youden's J on validation); None without thresholds."""
        return self.model.facts.get("threshold_rule") if self.thresholds else None

    def summary(self) -> dict:
        """Name, kind, backbone, classes and headline metrics (test-split mean AUROC with its CI)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "method": self.model.main,
            "backbone": self.model.backbone.spec,
            "backbone_fingerprint": self.model.backbone.fingerprint,
            "classes": self.model.classes,
            "headline": {
                key: self.metrics.get(key)
                for key in ("split", "mean_auroc", "mean_auroc_ci", "n_images", "n_patients")
            },
            "note": self.metrics.get("note", ""),
            "has_roc_plot": (self.directory / ROC_PLOT).is_file(),
            "explanations": self.explanations,
        }

    def details(self) -> dict:
        """Summary plus the full metrics.json and the run's config (training config, prompts, split)."""
        facts = self.model.facts
        config = {key: facts.get(key) for key in ("train_config", "prompts", "split", "tuning", "tau") if key in facts}
        return {**self.summary(), "metrics": self.metrics, "config": config}


def unique_name(directory: Path, taken: dict[str, Path], kind: str) -> str:
    """The name ``directory`` is served under (its folder name); refused when another served folder has it."""
    name = directory.resolve().name
    if name in taken:
        raise ConfigError(
            f"two {kind}s are named '{name}' ({taken[name]} and {directory}): serve folders with distinct names"
        )
    return name


def load_served_runs(
    directories: list[str | Path], store_dir: str | Path | None = None, device: str | None = None
) -> dict[str, ServedRun]:
    """Open every run directory once; names are folder names and must be unique."""
    runs: dict[str, ServedRun] = {}
    for directory in map(Path, directories):
        name = unique_name(directory, {run.name: run.directory for run in runs.values()}, "run")
        metrics = read_run_metrics(directory) if (directory / METRICS).is_file() else {}
        model = open_run(directory, store_dir, device)
        runs[name] = ServedRun(name, directory, model, metrics, patch_scorer(model))
    return runs
