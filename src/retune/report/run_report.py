"""The HTML report of one ``retune train`` run: per-class table, operating points, ROC and calibration plots,
definitions.

Self-contained (plots inlined as PNG), so it can be mailed or archived beside the checkpoint.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from retune.report.text import format_interval as _interval
from retune.report.text import record_mean_label

DEFINITIONS = (
    (
        "AUROC",
        "probability that a random positive image scores above a random negative one (0.5 = chance); "
        "undefined when the split has no positives or no negatives for the class.",
    ),
    ("AUPRC", "area under the precision-recall curve; its chance level is the class's prevalence."),
    (
        "95% CI",
        "2.5th-97.5th percentile over bootstrap resamples of test patients (a patient's images stay together).",
    ),
    (
        "mean AUROC",
        "average over the classes with enough test positives (min_positives) and a defined AUROC; "
        "its row says how many of the classes that is.",
    ),
    (
        "operating point",
        "per class, the threshold maximising sensitivity + specificity - 1 (Youden's J) on the "
        "validation split, applied unchanged to test.",
    ),
    ("sensitivity / specificity", "share of test positives / negatives on the right side of that threshold."),
    (
        "calibration (ECE)",
        "observed positive rate against the mean predicted probability in 10 bins over every "
        "labelled image-class pair; ECE is the count-weighted mean gap (0 = calibrated).",
    ),
)


def _share(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _inline_png(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{encoded}">'


def run_report(name: str, metrics: dict, operating: dict[str, dict], plots: list[Path]) -> str:
    """The HTML report of run ``name``: headline, per-class table (AUROC/AUPRC + CIs, threshold, sensitivity,
    specificity), plots (inlined) and definitions."""
    records = {metrics["method"]: metrics, **metrics.get("baselines", {})}
    head = "".join(f"<th>{html.escape(name)} AUROC [95% CI]</th>" for name in records)
    rows = []
    for name in metrics["classes"]:
        entry = metrics["per_class"][name]
        point = operating.get(name, {})
        cells = "".join(
            f"<td>{_interval(r['per_class'][name]['auroc'], r['per_class'][name]['auroc_ci'])}</td>"
            for r in records.values()
        )
        threshold = "undefined" if point.get("threshold") is None else f"{point['threshold']:.3f}"
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{entry['n_pos']}</td><td>{entry['n_neg']}</td>{cells}"
            f"<td>{_interval(entry['auprc'], entry['auprc_ci'])}</td><td>{threshold}</td>"
            f"<td>{_share(point.get('sensitivity'))}</td><td>{_share(point.get('specificity'))}</td></tr>"
        )
    means = "".join(f"<td><b>{_interval(r['mean_auroc'], r['mean_auroc_ci'])}</b></td>" for r in records.values())
    rows.append(
        f"<tr><td><b>{html.escape(record_mean_label(metrics))}</b></td><td></td><td></td>{means}"
        + "<td></td>" * 4
        + "</tr>"
    )
    definitions = "".join(f"<li><b>{html.escape(term)}</b>: {html.escape(text)}</li>" for term, text in DEFINITIONS)
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in metrics.get("warnings", []))
    body = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>retune run: {html.escape(name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}
img{{max-width:100%}}</style></head>
<body>
<h1>retune run {html.escape(name)}</h1>
<p>Backbone <code>{html.escape(str(metrics.get("backbone")))}</code>; test split: {metrics["n_images"]} images of
{metrics["n_patients"]} patients; CIs from {metrics["n_bootstrap"]} patient-bootstrap resamples.
{html.escape(metrics.get("note") or "")}</p>
{f"<h2>Warnings</h2><ul>{warnings}</ul>" if warnings else ""}
<h2>Per class (test split; operating point of {html.escape(metrics["method"])} chosen on validation)</h2>
<table><tr><th>class</th><th>n+</th><th>n-</th>{head}<th>{html.escape(metrics["method"])} AUPRC [95% CI]</th>
<th>threshold</th><th>sensitivity</th><th>specificity</th></tr>
{"".join(rows)}</table>
<h2>Plots</h2>
{"".join(f"<p>{_inline_png(path)}</p>" for path in plots)}
<h2>What the numbers mean</h2><ul>{definitions}</ul>
</body></html>
"""
    return body
