"""report.html and RUN_CARD.md of a segmentation run: per-structure Dice / IoU / HD95 with CIs for the head and its
baselines, the empty-mask line beside the predict-nothing baseline, and overlays of test images."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from retune.report.run_card import _use_and_limits, backbone_domain
from retune.report.text import format_interval
from retune.segmentation.overlay import overlay, structure_colour

PREVIEW_SIZE = 384


def metric_rows(metrics: dict) -> list[list[str]]:
    """Rows (structure, method, present images, Dice, IoU, HD95 px, empty images predicted empty, Dice with empty
    = 1) for every method of a run or an evaluation."""
    rows = []
    hd95_computed = metrics.get("hd95_computed", True)
    for structure in metrics["structures"]:
        for method, summary in metrics["per_method"].items():
            record = summary.get(structure)
            if record is None:
                continue
            rows.append([
                structure, method, f"{record['n_present']} / {record['n_images']}",
                format_interval(record["dice"], record["dice_ci"]),
                format_interval(record["iou"], record["iou_ci"]),
                format_interval(record["hd95"], record["hd95_ci"]) if hd95_computed else "not computed",
                f"{record['share_empty_predicted_empty']:.3f} of {record['n_empty']}" if record["n_empty"] else "-",
                format_interval(record["dice_empty_as_one"], record["dice_empty_as_one_ci"]),
            ])
    return rows


METRIC_HEADER = ["structure", "method", "present / annotated images", "Dice [95% CI]", "IoU [95% CI]",
                 "HD95 px [95% CI]", "empty masks predicted empty", "Dice, empty = 1 (SIIM convention)"]


def _preview(image: Image.Image, masks: list[np.ndarray]) -> str:
    drawn = overlay(image, masks)
    drawn.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    buffer = io.BytesIO()
    drawn.save(buffer, format="PNG")
    return f'<img alt="overlay" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def seg_report_html(metrics: dict, examples: list[tuple[str, Image.Image, list[np.ndarray]]]) -> str:
    """report.html of a run: the metrics table, a colour legend and the head's masks over a few test images."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in METRIC_HEADER)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                   for row in metric_rows(metrics))
    legend = " ".join(
        f'<span style="color:rgb{structure_colour(k)}">&#9632; {html.escape(name)}</span>'
        for k, name in enumerate(metrics["structures"])
    )
    figures = "".join(f"<figure>{_preview(image, masks)}<figcaption>{html.escape(name)}</figcaption></figure>"
                      for name, image, masks in examples)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>retune segmentation run</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px}}figure{{display:inline-block;margin:6px}}</style></head><body>
<h1>Segmentation run: {html.escape(metrics['method'])} head</h1>
<p>Test split: {metrics['n_images']} images of {metrics['n_patients']} patients; 95% CIs from {metrics['n_bootstrap']}
bootstrap resamples of patients. Dice, IoU and HD95 (in the image's own pixels) are over images where the structure is
present; images whose annotated mask is empty are scored by the share predicted empty and by the SIIM convention
(empty predicted empty = 1), which the predict-nothing baseline also reaches.
{html.escape(metrics.get('note', ''))}</p>
<table><tr>{head}</tr>{body}</table>
<h2>Test images, {html.escape(metrics['method'])} head</h2><p>{legend}</p>{figures}
</body></html>
"""


def seg_run_card(facts: dict, metrics: dict) -> str:
    """The RUN_CARD.md text of a segmentation run."""
    from retune.version import __version__

    backbone, split = facts["backbone"], facts["split"]
    baselines = ", ".join(method for method in metrics["per_method"] if method != facts["head"])
    lines = [
        f"# Run card: segmentation run ({facts['head']} head)",
        "",
        f"Made by retune {__version__}. Files: `checkpoint.safetensors` (the head's tensors only), `config.json`, "
        "`metrics.json`, `per_image.csv`, `report.html`; MLflow run in `mlruns/` unless tracked elsewhere.",
        "",
        "## Model",
        f"- Head `{facts['head']}` on the frozen backbone `{backbone['spec']}` (fingerprint "
        f"`{backbone['fingerprint']}`), maps at strides {facts['dense']['strides']}; baselines: {baselines}.",
        f"- Backbone domain: {backbone_domain(backbone['spec'])}.",
        "",
        "## Data",
        f"- Masks: `{Path(facts['data']['csv']).name}` ({facts['data']['n_images']} images), structures "
        f"{', '.join(facts['structures'])}.",
        f"- Patient-level split {split.get('fractions')} (seed {split.get('seed')}); "
        f"{split['label_fraction']:.0%} of the training patients used ({split['train_used']} images).",
        "",
        "## Test metrics",
        "| " + " | ".join(METRIC_HEADER) + " |",
        "|" + "---|" * len(METRIC_HEADER),
        *("| " + " | ".join(row) + " |" for row in metric_rows(metrics)),
    ]
    limits = [f"Annotated images per split: {facts['annotated']}."]
    return "\n".join(lines + _use_and_limits(backbone["spec"], limits)) + "\n"
