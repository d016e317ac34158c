"""Scenario outputs people look at: PNG plots and one self-contained HTML report (images inlined)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from retune.errors import ConfigError
from retune.evaluation import average_incremental, forgetting_and_bwt, mean_and_sd
from retune.io_utils import write_text_atomic
from retune.report.plots import PlotTarget, plot_auroc_matrix, plot_mean_auroc_per_task, plot_roc_curves
from retune.report.text import format_interval as _interval
from retune.report.text import record_mean_label


def _several_runs(results: dict[str, dict]) -> bool:
    return any(r.get("final_mean_auroc_over_orders", {}).get("n", 0) > 1 for r in results.values())


def _mean_sd(summary: dict | None, signed: bool = False) -> str:
    if not summary or summary.get("mean") is None:
        return "undefined"
    mean = f"{summary['mean']:+.3f}" if signed else f"{summary['mean']:.3f}"
    return f"{mean} ± {summary['std']:.3f} (n={summary['n']})"


def comparison_header(results: dict[str, dict]) -> list[str]:
    """Column names of the comparison table (mean ± sd columns only when several (order, seed) runs ran)."""
    header = ["method", "final mean AUROC [95% CI]", "forgetting [95% CI]", "BWT [95% CI]", "avg incremental AUROC"]
    over_runs = ["final over runs (mean ± sd)", "forgetting over runs (mean ± sd)"]
    return header + over_runs if _several_runs(results) else header


def comparison_rows(results: dict[str, dict]) -> list[list[str]]:
    """One row per method: the first run's final mean AUROC, forgetting and BWT with CIs, then mean ± sd over runs."""
    rows = []
    for name, result in results.items():
        row = [
            name + ("" if result["exemplar_free"] else " (not exemplar-free)"),
            _interval(result["final_mean_auroc"], result["final_mean_auroc_ci"]),
            _interval(result["forgetting"], result["forgetting_ci"], signed=True),
            _interval(result["bwt"], result["bwt_ci"], signed=True),
            "undefined"
            if result["average_incremental_auroc"] is None
            else f"{result['average_incremental_auroc']:.3f}",
        ]
        if _several_runs(results):
            over = result.get("over_runs", {})
            final = over.get("final_mean_auroc") or result.get("final_mean_auroc_over_orders")
            row += [_mean_sd(final), _mean_sd(over.get("forgetting"), signed=True)]
        rows.append(row)
    return rows


def per_task_rows(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Mean AUROC after each task, mean ± sd over (order, seed) runs; in a data-incremental scenario task t of T
    has seen t/T of the training data, so this is the data-fraction curve."""
    first = next(iter(results.values()))
    n_tasks = len(first["tasks"])
    if first.get("kind") == "data":
        header = [f"{100 * (t + 1) / n_tasks:.0f}% of the data" for t in range(n_tasks)]
    else:
        header = [f"after task {t + 1}" for t in range(n_tasks)]
    rows = []
    for name, result in results.items():
        runs = result.get("orders") or [result]
        cells = []
        for t in range(n_tasks):
            summary = mean_and_sd([run["mean_auroc_per_task"][t] for run in runs])
            cells.append(_mean_sd(summary) if summary["n"] > 1 else _mean_sd({**summary, "std": 0.0}).split(" ±")[0])
        rows.append([name, *cells])
    return ["method", *header], rows


def with_min_positives(result: dict, min_positives: int) -> dict:
    """A results.json recomputed from its saved AUROC matrices with another min-positives threshold.

    Point estimates only: the bootstrap CIs need the test scores again, so they become None.
    """
    classes, counts = result["classes"], result["n_test_positives"]
    kept = np.array([counts[c] >= min_positives for c in classes])
    runs = []
    for run in result["orders"]:
        matrix = np.array([[np.nan if v is None else v for v in row] for row in run["auroc_matrix"]], dtype=float)
        counted = np.where(kept, matrix, np.nan)
        forgetting, bwt = forgetting_and_bwt(counted)
        per_task = [float(np.nanmean(row)) if not np.isnan(row).all() else None for row in counted]
        runs.append({**run, "mean_auroc_per_task": per_task, "final_mean_auroc": per_task[-1],
                     "forgetting": forgetting, "bwt": bwt, "average_incremental_auroc": average_incremental(per_task)})
    summary_keys = ("final_mean_auroc", "forgetting", "bwt", "average_incremental_auroc")
    first = np.array([[np.nan if v is None else v for v in row] for row in result["auroc_matrix"]], dtype=float)
    defined = ~np.isnan(first).all(axis=0)
    return {
        **result,
        **{key: runs[0][key] for key in (*summary_keys, "mean_auroc_per_task")},
        **{f"{key}_ci": None for key in ("final_mean_auroc", "forgetting", "bwt")},
        "orders": runs,
        "over_runs": {key: mean_and_sd([run[key] for run in runs]) for key in summary_keys},
        "min_positives": min_positives,
        "n_classes_in_mean": int((kept & defined).sum()),
        "too_few_positives": [c for c, k, d in zip(classes, kept, defined) if d and not k],
    }


def classes_in_means(result: dict) -> str:
    """One sentence: how many classes the means cover and which were left out for too few test positives."""
    text = "every " + record_mean_label(result)
    left_out = result.get("too_few_positives") or []
    if left_out:
        counts = result.get("n_test_positives", {})
        listed = ", ".join(f"{c} ({counts.get(c, '?')})" for c in left_out)
        text += "; too few positives (listed per class, not in the means): " + listed
    return text


def forgetting_rows(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Per-class forgetting [CI] of the first run, one column per method, so a reader sees which classes drive it."""
    first = next(iter(results.values()))
    counts = first.get("n_test_positives", {})
    marked = set(first.get("too_few_positives") or [])
    rows = []
    for name in first["classes"]:
        cells = []
        for result in results.values():
            entry = (result.get("forgetting_per_class") or {}).get(name)
            cells.append("-" if entry is None else _interval(entry["value"], entry["ci"], signed=True))
        if any(cell != "-" for cell in cells):
            rows.append([name + (" (too few positives)" if name in marked else ""), str(counts.get(name, "")), *cells])
    return ["class", "test positives", *results], rows


def _html_rows(rows: list[list[str]]) -> str:
    return "".join(f"<tr>{''.join(f'<td>{html.escape(cell)}</td>' for cell in row)}</tr>" for row in rows)

DEFINITIONS = (
    ("AUROC", "probability that a random positive test image scores above a random negative one (0.5 = chance)."),
    (
        "final mean AUROC",
        "mean over the classes learned by the end, after the last task (undefined classes left out).",
    ),
    (
        "forgetting",
        "per class learned before the last task, its best AUROC after any earlier task minus its final AUROC, "
        "averaged; lower is better, 0 = nothing forgotten.",
    ),
    (
        "BWT (backward transfer)",
        "per class learned before the last task, final AUROC minus its AUROC right after the task "
        "that introduced it, averaged; negative = forgetting.",
    ),
    ("average incremental AUROC", "mean over tasks of the mean AUROC over the classes seen so far."),
    ("95% CI", "2.5th-97.5th percentile over bootstrap resamples of test patients."),
    (
        "· / n/a in the matrices",
        "· = the class is not yet learned at that task; n/a = learned, but AUROC undefined "
        "(no positives or no negatives among the test images).",
    ),
)


def staircase_order(tasks: list[dict], classes: list[str]) -> tuple[list[str], list[int]]:
    """Classes in the order the tasks introduced them (never-trained classes left out) and each one's 0-based task."""
    order, introduced = [], []
    for index, task in enumerate(tasks):
        for name in sorted(task["classes"], key=classes.index):
            if name not in order:
                order.append(name)
                introduced.append(index)
    return order, introduced


def per_class_table(results: dict[str, dict], order: list[str], introduced: list[int], task_names: list[str]) -> str:
    """HTML table: each trained class, the task that introduced it (first run), and every method's final AUROC, as
    mean ± sd over (order, seed) runs when there are several, so it matches the comparison above it."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in results)
    rows = []
    for name, task in zip(order, introduced):
        cells = []
        for result in results.values():
            column = result["classes"].index(name)
            finals = [run["auroc_matrix"][-1][column] for run in result.get("orders") or [result]]
            if len(finals) > 1:
                cells.append(f"<td>{html.escape(_mean_sd(mean_and_sd(finals)))}</td>")
            else:
                cells.append(f"<td>{'undefined' if finals[0] is None else f'{finals[0]:.3f}'}</td>")
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(task_names[task])}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>class</th><th>introduced by</th>{head}</tr>{''.join(rows)}</table>"


def first_run_label(result: dict) -> str:
    """Which run a single-run plot shows: ``first run (order 0, seed 0) of 4``, or "" when only one run ran."""
    runs = result.get("orders") or [result]
    if len(runs) < 2:
        return ""
    seed = runs[0].get("seed", result.get("seed"))
    return f"order {runs[0]['order']}, seed {seed} only: the first of {len(runs)} runs"


def task_labels(result: dict) -> list[str]:
    """Each task's name, or ``task<i>`` where the scenario left it unnamed."""
    return [task.get("name") or f"task{i + 1}" for i, task in enumerate(result["tasks"])]


def auroc_heatmap(name: str, result: dict, target: PlotTarget) -> PlotTarget:
    """One method's AUROC-matrix heatmap (its first run), classes in the order the tasks introduced them, as a PNG
    file or into a stream (the server renders it in memory)."""
    order, introduced = staircase_order(result["tasks"], result["classes"])
    columns = [result["classes"].index(c) for c in order]
    matrix = [[row[c] for c in columns] for row in result["auroc_matrix"]]
    return plot_auroc_matrix(matrix, order, task_labels(result), f"{name}: AUROC after each task", target, introduced)


def _inline_png(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{encoded}">'


def write_scenario_report(
    results: dict[str, dict], prepared, out_dir: Path, final_scores: dict[str, np.ndarray]
) -> Path:
    """Plots per method and for all methods, then report.html embedding them with the tables; ``final_scores``:
    each method's test scores after its last task (first order), as the runner computed them."""
    plots = out_dir / "plots"
    first = next(iter(results.values()))
    task_names = task_labels(first)
    order, introduced = staircase_order(first["tasks"], first["classes"])
    heatmaps = [auroc_heatmap(name, r, plots / f"auroc_matrix_{name}.png") for name, r in results.items()]
    curve = plot_mean_auroc_per_task(
        {name: [run["mean_auroc_per_task"] for run in r.get("orders") or [r]] for name, r in results.items()},
        plots / "mean_auroc_per_task.png",
    )
    only_first = first_run_label(first)
    several = f" (mean ± sd over {len(first['orders'])} runs)" if only_first else ""
    first_only = f" ({only_first})" if only_first else ""
    trained = [prepared.classes.index(name) for name in order]  # classes never trained are left out
    roc = plot_roc_curves(
        {name: np.nan_to_num(scores[:, trained], nan=0.5) for name, scores in final_scores.items()},
        prepared.labels[prepared.test_rows][:, trained],
        order,
        plots / "roc_curves_final.png",
    )
    per_class = per_class_table(results, order, introduced, task_names)
    definitions = "".join(f"<li><b>{html.escape(term)}</b>: {html.escape(text)}</li>" for term, text in DEFINITIONS)

    table = _html_rows(comparison_rows(results))
    forgetting_header, forgetting_table = forgetting_rows(results)
    per_task_header, per_task_table = per_task_rows(results)
    tasks = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{html.escape(', '.join(t['classes']))}</td>"
        f"<td>{t['n_train_rows']}</td><td>{t['n_val_rows']}</td></tr>"
        for n, t in zip(task_names, first["tasks"])
    )
    first_run = first["orders"][0]
    note = html.escape(first.get("note", ""))
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>retune scenario: {html.escape(first["scenario"])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:14px}}th{{background:#f3f3f3}}
img{{max-width:100%;margin:0.5em 0}}.note{{color:#7a4b00}}</style></head><body>
<h1>Scenario {html.escape(first["scenario"])} ({html.escape(str(first.get("kind")))}-incremental)</h1>
<p>Backbone <code>{html.escape(first["backbone"])}</code>; {first["n_test_images"]} test images
(patient-level split, seed {first["split_seed"]}); training seed {first["seed"]}.
CIs: percentile bootstrap over test patients ({first["n_bootstrap"]} replicates); definitions at the end.</p>
<p class="note">{note}</p>
<h2>Comparison</h2><p>{html.escape(classes_in_means(first))}. CIs are the first run's
(order {first_run["order"]}, seed {first_run.get("seed", first["seed"])});
mean ± sd is over every (order, seed) run.</p>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in comparison_header(results))}</tr>{table}</table>
<h2>Mean AUROC after each task (mean ± sd over runs)</h2>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in per_task_header)}</tr>{_html_rows(per_task_table)}</table>
<h2>Forgetting per class (first run)</h2>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in forgetting_header)}</tr>
{_html_rows(forgetting_table)}</table>
<h2>Tasks</h2><table><tr><th>task</th><th>classes</th><th>training rows</th><th>validation rows</th></tr>
{tasks}</table>
<h2>Mean AUROC after each task{html.escape(several)}</h2>{_inline_png(curve)}
<h2>AUROC matrices{html.escape(first_only)}</h2>{"".join(_inline_png(p) for p in heatmaps)}
<h2>Final AUROC per class (test split, after the last task){html.escape(several)}</h2>
<p>"introduced by" is the first run's task order.</p>{per_class}
<h2>Per-class ROC curves after the last task{html.escape(first_only)}</h2>{_inline_png(roc)}
<h2>What the numbers mean</h2><ul>{definitions}</ul>
</body></html>"""
    target = out_dir / "report.html"
    write_text_atomic(target, page)
    return target


def site_comparison(results: dict[str, dict]) -> dict:
    """The per-site table of a site-incremental scenario: per method and site, mean AUROC after the site's own task
    and after the last task (mean ± sd over runs), and the forgetting in between (first run, patient-bootstrap CI)."""
    first = next(iter(results.values()))
    names = [task["site"] for task in first["tasks"] if task.get("site") in first.get("per_site", {})]
    if not names:
        raise ConfigError(f"scenario '{first.get('scenario')}' is not site-incremental: it has no per-site results")
    columns = ["method"]
    for name in names:
        columns += [f"{name} after own task", f"{name} final", f"{name} forgetting [95% CI]"]
    rows = []
    for method, result in results.items():
        row = [method + ("" if result["exemplar_free"] else " (keeps rows)")]
        for name in names:
            site, over = result["per_site"][name], result["per_site_over_runs"][name]
            forgetting = site["forgetting"]
            row += [
                _mean_sd(over["mean_auroc_after_own_task"]),
                _mean_sd(over["final_mean_auroc"]),
                "-" if forgetting is None else _interval(forgetting, site["forgetting_ci"], signed=True),
            ]
        rows.append(row)
    return {"columns": columns, "rows": rows, "sites": names}
