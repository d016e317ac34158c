"""Every table the commands print, in one place (rich on a terminal, Markdown on request)."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from retune.cli.common import console, err_console
from retune.experiments.run_folder import run_settings
from retune.report.text import format_interval, record_classes_covered, record_mean_label

UNLIMITED_WIDTH = 100_000  # piped output: no row is cut or wrapped to fit a screen that is not there


def show(table: Table) -> None:
    """Print a table at the terminal's width, or (output not a terminal, no COLUMNS) with every value in full."""
    if console.is_terminal or "COLUMNS" in os.environ:
        console.print(table)
    else:
        Console(file=sys.stdout, width=UNLIMITED_WIDTH).print(table)


def unique_suffixes(paths: list[str]) -> list[str]:
    """For each path the shortest tail of whole components (file name, then parent/file name, ...) that no other
    path shares: names that tell images apart without their common folders."""
    parts = [Path(path).parts for path in paths]
    depth = [1] * len(parts)
    while True:
        names = [str(Path(*part[-level:])) if part else "" for part, level in zip(parts, depth)]
        counts = Counter(names)
        clashing = [i for i, name in enumerate(names) if counts[name] > 1 and depth[i] < len(parts[i])]
        if not clashing:
            return names
        for index in clashing:
            depth[index] += 1


def print_metrics(metrics: dict) -> None:
    """Per-class AUROC table with CIs for RE-tune and every baseline, side by side."""
    methods = {metrics["method"]: metrics, **metrics.get("baselines", {})}
    table = Table("class", "n+", *[f"{name} AUROC [95% CI]" for name in methods], title=f"split: {metrics['split']}")

    too_few = set(metrics.get("too_few_positives", []))
    for name in metrics["classes"]:
        label = name + (" *" if name in too_few else "")
        row = [label, str(metrics["per_class"][name]["n_pos"])]
        row += [
            format_interval(m["per_class"][name]["auroc"], m["per_class"][name]["auroc_ci"]) for m in methods.values()
        ]
        table.add_row(*row)
    means = [f"[bold]{format_interval(m['mean_auroc'], m['mean_auroc_ci'])}" for m in methods.values()]
    table.add_row(f"[bold]{escape(record_mean_label(metrics))}", "", *means)
    show(table)
    if too_few:
        console.print(f"* fewer than {metrics['min_positives']} positives: listed, not in the mean", highlight=False)
    if metrics.get("note"):
        console.print(f"[dim]{metrics['note']}[/]")
    for warning in metrics.get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


def print_run_saved(out: Path) -> None:
    """The closing line of `retune train` and `retune peft run`: where the run is and what to open."""
    console.print(escape(f"run saved to {out} (report.html, RUN_CARD.md; MLflow: retune ui {out})"), highlight=False)


def print_tuning_cost(metrics: dict) -> None:
    """Trainable parameters and peak memory of a tuning run in words (the measurement details stay in metrics.json)."""
    measured = "GPU memory allocated" if metrics["peak_memory_source"].startswith("CUDA") else "process memory"
    console.print(
        f"trainable parameters: {metrics['trainable_parameters']:,} ({metrics['trainable_percent']:.2f}%), "
        f"peak {measured} {metrics['peak_memory_mb']:.0f} MB",
        highlight=False,
    )


def print_predictions(frame) -> None:
    """A table that stays readable at 80 columns: images as rows when the findings fit, findings as rows otherwise;
    a probability at or above the run's decision threshold (chosen on validation) is marked ``+``."""
    names = unique_suffixes(list(frame["image"]))
    classes = list(frame.columns[1:])
    thresholds = frame.attrs.get("thresholds") or {}

    def cell(name: str, value: float) -> str:
        return f"{value:.3f}" + ("+" if name in thresholds and value >= thresholds[name] else "")

    needed = max(map(len, ["image", *names])) + 4 + sum(max(len(name), 6) + 3 for name in classes)
    width = console.width if console.is_terminal or "COLUMNS" in os.environ else UNLIMITED_WIDTH
    if needed <= width:
        table = Table("image", *classes)
        for name, row in zip(names, frame.itertuples(index=False)):
            table.add_row(escape(name), *(cell(c, value) for c, value in zip(classes, row[1:])))
        show(table)
    else:
        label_width = max(map(len, ["finding", *classes])) + 4
        per_table = max(1, (width - label_width) // (max(map(len, names)) + 3))  # image columns that fit
        for start in range(0, len(names), per_table):
            table = Table("finding", *(escape(name) for name in names[start : start + per_table]))
            for name in classes:
                table.add_row(escape(name), *(cell(name, v) for v in frame[name].iloc[start : start + per_table]))
            show(table)
    if thresholds:
        rule = frame.attrs.get("threshold_rule") or "stored with the run"
        console.print(escape(f"+ = at or above the run's decision threshold ({rule})"), highlight=False)


def print_setting_differences(runs: list[Path]) -> None:
    """Only the settings whose values differ between the runs (objective, method, backbone, options...)."""
    settings = [run_settings(run) for run in runs]
    keys = sorted({key for one in settings for key in one})
    differing = [key for key in keys if len({one.get(key, "-") for one in settings}) > 1]
    if not differing:
        console.print("[dim]the runs' recorded settings are identical[/]")
        return
    table = Table("setting that differs", *map(escape, unique_suffixes([str(run) for run in runs])), title="settings")
    for key in differing:
        table.add_row(escape(key), *(escape(one.get(key, "-")) for one in settings))
    show(table)


def print_paired(result: dict) -> None:
    """Per-class and mean AUROC difference A - B with paired CIs."""
    console.print(
        escape(
            f"A = {result['run_a']} ({result['method_a']})\nB = {result['run_b']} ({result['method_b']})\n"
            f"{result['n_images']} images of {result['n_patients']} patients ({result['split']} split)"
        ),
        highlight=False,
    )
    table = Table("class", "AUROC A - B [95% CI]")
    for name, record in result["per_class"].items():
        table.add_row(escape(name), format_interval(record["difference"], record["difference_ci"]))
    table.add_row(
        f"[bold]{escape(record_mean_label(result))}",
        "[bold]" + format_interval(result["difference"], result["difference_ci"]),
    )
    show(table)
    console.print(
        escape(
            f"mean AUROC A {format_interval(result['mean_auroc_a'], None)}, "
            f"B {format_interval(result['mean_auroc_b'], None)}; "
            "a CI that excludes 0 means a difference beyond resampling noise"
        ),
        highlight=False,
    )
    for run, count in result["excluded_training_overlap"].items():
        if count:
            err_console.print(
                f"[yellow]warning:[/] {escape(f'{count} images left out: {run} trained or validated on them')}",
                highlight=False,
            )


def rounded(payload, digits: int = 3):
    """``payload`` with every float rounded to ``digits`` decimals (for numbers inside human-readable lines)."""
    if isinstance(payload, float):
        return round(payload, digits)
    if isinstance(payload, dict):
        return {key: rounded(value, digits) for key, value in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [rounded(value, digits) for value in payload]
    return payload


def print_comparison(results: dict[str, dict], markdown: bool = False) -> None:
    """The side-by-side table of final mean AUROC, forgetting and BWT with CIs (rich, or Markdown for a README)."""
    from retune.report.scenario_report import classes_in_means, comparison_header, comparison_rows, per_task_rows

    first = next(iter(results.values()))
    if markdown:
        print(f"{first['scenario']} ({first.get('kind')}-incremental, {len(first['tasks'])} tasks, "
              f"{first['n_test_images']} test images); {classes_in_means(first)}\n")
        for header, rows in ((comparison_header(results), comparison_rows(results)), per_task_rows(results)):
            print_markdown_table(header, rows)
        print_site_comparison(results, markdown)
        return
    header = comparison_header(results)
    table = Table(
        title=f"scenario {first['scenario']} ({first.get('kind')}-incremental, {len(first['tasks'])} tasks, "
        f"{first['n_test_images']} test images)"
    )
    table.add_column(header[0], no_wrap=True)
    for name in header[1:]:
        table.add_column(name)
    for row in comparison_rows(results):
        table.add_row(*row)
    show(table)
    console.print(escape(classes_in_means(first)), highlight=False)
    header, rows = per_task_rows(results)
    curve = Table(*header, title="mean AUROC after each task (mean ± sd over runs)")
    for row in rows:
        curve.add_row(*row)
    show(curve)
    print_site_comparison(results, markdown)
    if first.get("note"):
        console.print(f"[dim]{first['note']}[/]")


def print_markdown_table(header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table (for a README) on stdout, then a blank line."""
    lines = [header, ["---"] * len(header), *rows]
    print("\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n")


def print_site_comparison(results: dict[str, dict], markdown: bool = False) -> None:
    """A site-incremental scenario's per-site table (mean AUROC after the site's own task and the last, forgetting);
    nothing for other kinds."""
    from retune.report.scenario_report import site_comparison

    if "per_site" not in next(iter(results.values())):
        return
    table = site_comparison(results)
    if markdown:
        print_markdown_table(table["columns"], table["rows"])
        return
    shown = Table(*table["columns"], title="per site: mean AUROC on its own test patients (mean ± sd over runs)")
    for row in table["rows"]:
        shown.add_row(*(escape(cell) for cell in row))
    show(shown)


def print_run_metrics(records: list[tuple[Path, str, dict]]) -> None:
    """One row per (run, method) metrics record: split, backbone, mean AUROC with CI, images."""
    table = Table("run", "method", "split", "backbone", "mean AUROC [95% CI]", "classes in the mean", "n images")
    for run, label, record in records:
        table.add_row(
            escape(str(run)),
            escape(label),
            str(record.get("split", "")),
            escape(str(record.get("backbone", ""))),
            format_interval(record.get("mean_auroc"), record.get("mean_auroc_ci")),
            escape(record_classes_covered(record)),
            str(record.get("n_images", "")),
        )
    show(table)


def print_store_summary(summary: dict) -> None:
    """Rows per kind for each backbone fingerprint in a store, then its size on disk."""
    from retune.store.store import KINDS

    table = Table("fingerprint", "backbone", *KINDS)
    for fingerprint, rows in summary["rows"].items():
        spec = summary["backbones"].get(fingerprint, {}).get("spec", "?")
        table.add_row(fingerprint, escape(spec), *(str(rows.get(kind, 0)) for kind in KINDS))
    show(table)
    console.print(escape(f"{summary['root']}: {summary['bytes'] / 1e6:.1f} MB on disk (patient-derived data)"))


def print_external(payload: dict) -> None:
    """A finished scenario's final models on another CSV: first run's mean AUROC with CI, mean ± sd over runs."""
    several = any(len(m["runs"]) > 1 for m in payload["methods"].values())
    title = (
        f"scenario {payload['scenario']} final models on {payload['csv']} "
        f"({payload['n_images']} images, {payload['n_patients']} patients)"
    )
    columns = ["method", "mean AUROC [95% CI] (first run)", "classes in mean"]
    table = Table(*columns, *(["mean ± sd over runs"] if several else []), title=title)
    for name, record in payload["methods"].items():
        value, interval = record["mean_auroc"], record["mean_auroc_ci"]
        shown = "undefined" if value is None else f"{value:.3f}"
        if value is not None and interval:
            shown += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
        over = record["mean_auroc_over_runs"]
        spread = f"{over['mean']:.3f} ± {over['std']:.3f} (n={over['n']})" if over["mean"] is not None else "undefined"
        label = name + ("" if record["exemplar_free"] else " (not exemplar-free)")
        table.add_row(label, shown, str(record["n_classes_in_mean"]), *([spread] if several else []))
    show(table)
    left_out = next(iter(payload["methods"].values()))["too_few_positives"]
    if left_out:
        console.print(
            escape(f"too few positives (< {payload['min_positives']}), not in the means: {', '.join(left_out)}"),
            highlight=False,
        )
    if payload["note"]:
        console.print(f"[dim]{payload['note']}[/]")
    for warning in payload["warnings"]:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
