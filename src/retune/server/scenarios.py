"""Scenario output folders the server shows: results read once at startup, each method's AUROC-matrix heatmap
rendered in memory (nothing is written into the folder)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from retune.report.scenario_report import auroc_heatmap, classes_in_means, comparison_header, comparison_rows
from retune.scenarios.runner import load_results, load_scenario_config
from retune.scenarios.spec import ScenarioConfig
from retune.server.runs import unique_name


@dataclass(frozen=True)
class Png:
    """A PNG held in memory with its entity tag (a content hash, computed once), so browsers can revalidate
    instead of refetching."""

    data: bytes
    etag: str


def heatmap_png(method: str, result: dict) -> Png:
    """One method's AUROC-matrix heatmap, drawn by the report's own plotting code into memory."""
    buffer = io.BytesIO()
    auroc_heatmap(method, result, buffer)
    data = buffer.getvalue()
    return Png(data, f'"{hashlib.sha256(data).hexdigest()[:20]}"')


@dataclass
class ServedScenario:
    """One served scenario: its name (the folder name, unique), config, every method's results.json, heatmaps."""

    name: str
    directory: Path
    config: ScenarioConfig
    results: dict[str, dict]  # method -> results.json, in the scenario's method order
    heatmaps: dict[str, Png]  # method -> its AUROC-matrix heatmap

    @property
    def first(self) -> dict:
        """The first method's results: what every method shares (tasks, classes, test split, note)."""
        return next(iter(self.results.values()))

    @staticmethod
    def headline(result: dict) -> dict:
        """A method's final mean AUROC and forgetting, mean ± sample sd over its (order, seed) runs, and how many
        classes the means cover under the min-positives rule."""
        over = result.get("over_runs") or {}
        return {
            "final_mean_auroc": over.get("final_mean_auroc") or result.get("final_mean_auroc_over_orders"),
            "forgetting": over.get("forgetting") or result.get("forgetting_over_orders"),
            "n_classes_in_mean": result.get("n_classes_in_mean"),
            "min_positives": result.get("min_positives"),
            "too_few_positives": result.get("too_few_positives") or [],
            "exemplar_free": result["exemplar_free"],
        }

    def summary(self) -> dict:
        """Name, scenario name, kind, backbone, tasks, methods and each method's headline."""
        first = self.first
        return {
            "name": self.name,
            "scenario": self.config.name,
            "kind": self.config.kind,
            "backbone": first.get("backbone"),
            "n_tasks": len(first["tasks"]),
            "n_test_images": first.get("n_test_images"),
            "methods": list(self.results),
            "headline": {method: self.headline(result) for method, result in self.results.items()},
            "note": first.get("note", ""),
        }

    def details(self) -> dict:
        """Summary plus the scenario's config (scenario.json) and every method's full results.json."""
        return {**self.summary(), "config": self.config.model_dump(mode="json"), "results": self.results}

    def comparison(self) -> tuple[list[str], list[list[str]]]:
        """The report's comparison table (header, rows): final mean AUROC, forgetting, BWT with CIs, mean ± sd."""
        return comparison_header(self.results), comparison_rows(self.results)

    def classes_note(self) -> str:
        """Which classes the means cover (the min-positives rule), as the report words it."""
        return classes_in_means(self.first)


def load_served_scenarios(directories: list[str | Path]) -> dict[str, ServedScenario]:
    """Read every scenario folder once (a corrupt or partial one is an error naming the file) and draw its
    heatmaps; names are folder names and must be unique."""
    scenarios: dict[str, ServedScenario] = {}
    for directory in map(Path, directories):
        name = unique_name(directory, {s.name: s.directory for s in scenarios.values()}, "scenario")
        config = load_scenario_config(directory)
        results = load_results(directory, config)
        heatmaps = {method: heatmap_png(method, result) for method, result in results.items()}
        scenarios[name] = ServedScenario(name, directory, config, results, heatmaps)
    return scenarios
