"""RUN_CARD.md beside every checkpoint: a model card a reader understands without opening the JSON files."""

from __future__ import annotations

from pathlib import Path

from retune.io_utils import write_text_atomic

RUN_CARD = "RUN_CARD.md"
DEFAULT_BACKBONE_DOMAIN = ("general-domain (ImageNet EfficientNet-Lite0 image tower + sentence-transformers MiniLM text tower, "
                           "not aligned, not trained on medical images)")


def _interval(value: float | None, interval: list | None) -> str:
    if value is None:
        return "undefined"
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def backbone_domain(spec: str) -> str:
    """What the backbone was trained on, as far as retune knows it."""
    return DEFAULT_BACKBONE_DOMAIN if spec == "default" else "as stated by its weights' provider (check before clinical research use)"


def run_card(facts: dict, metrics: dict, kind: str) -> str:
    """The Markdown card of a ``train`` or ``peft`` run from its config.json facts and metrics.json."""
    from retune import __version__

    backbone = facts["backbone"]
    split = facts.get("split", {})
    sizes = split.get("sizes", {})
    positives = facts.get("positives", {})
    methods = [metrics["method"], *metrics.get("baselines", {})]
    lines = [
        f"# Run card: {kind} run ({metrics['method']})",
        "",
        f"Made by retune {__version__}. Files: `checkpoint.safetensors` (tensors only), `config.json` (settings and facts), "
        "`metrics.json` (every number below, full precision), `report.html`.",
        "",
        "## Model",
        f"- Methods: {', '.join(methods)} (main: {metrics['method']}); frozen backbone `{backbone['spec']}` "
        f"(fingerprint `{backbone['fingerprint']}`).",
        f"- Backbone domain: {backbone_domain(backbone['spec'])}.",
        "",
        "## Data",
        f"- Label CSV: `{Path(facts['data']['csv']).name}` ({facts['data']['n_images']} images).",
        f"- Patient-level split {split.get('fractions')} (seed {split.get('seed')}): "
        + ", ".join(f"{name} {count} images" for name, count in sizes.items()) + ".",
        "",
        "## Classes and test metrics",
        f"AUROC on the test split ({metrics['n_images']} images of {metrics['n_patients']} patients) with "
        f"{int(metrics.get('ci_level', 0.95) * 100)}% CIs from {metrics['n_bootstrap']} bootstrap resamples of test patients.",
        "",
        "| class | train positives | test positives | " + " | ".join(f"{name} AUROC [CI]" for name in methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    records = [metrics, *metrics.get("baselines", {}).values()]
    for name in metrics["classes"]:
        cells = [_interval(r["per_class"][name]["auroc"], r["per_class"][name]["auroc_ci"]) for r in records]
        lines.append(f"| {name} | {positives.get('train', {}).get(name, '?')} | {metrics['per_class'][name]['n_pos']} | " + " | ".join(cells) + " |")
    defined = len(metrics["classes"]) - len(metrics.get("undefined_classes", []))
    lines.append(f"| **mean ({defined} defined classes)** | | | " + " | ".join(_interval(r["mean_auroc"], r["mean_auroc_ci"]) for r in records) + " |")
    lines += [
        "",
        "## Intended use",
        "Research on adapting frozen vision-language models to chest X-ray findings. Not a medical device; not for "
        "diagnosis or triage. Validate on your own site's data before drawing any conclusion.",
        "",
        "## Limitations",
    ]
    if backbone["spec"] == "default":
        lines.append("- **General-domain backbone**: the encoders never saw medical images; a medical backbone is expected to do better.")
    undefined = metrics.get("undefined_classes", [])
    if undefined:
        lines.append(f"- Undefined AUROC (no positives or no negatives in test): {', '.join(undefined)}.")
    few = [name for name in metrics["classes"] if 0 < metrics["per_class"][name]["n_pos"] < 10]
    if few:
        lines.append(f"- Fewer than 10 test positives (wide CIs): {', '.join(few)}.")
    lines += [f"- {warning}" for warning in metrics.get("warnings", [])]
    lines.append("- Hyper-parameters may have been chosen on the same data; treat the numbers as optimistic.")
    return "\n".join(lines) + "\n"


def write_run_card(out_dir: str | Path, facts: dict, metrics: dict, kind: str) -> Path:
    """Write ``RUN_CARD.md`` into the run directory."""
    target = Path(out_dir) / RUN_CARD
    write_text_atomic(target, run_card(facts, metrics, kind))
    return target
