"""The run card beside every checkpoint (``RUN_CARD.md``, written by ``retune.experiments.run_folder``): a model card
a reader understands without opening the JSON files."""

from __future__ import annotations

from pathlib import Path

from retune.report.text import format_interval as _interval
from retune.report.text import record_mean_label
from retune.version import __version__

DEFAULT_BACKBONE_DOMAIN = (
    "general-domain (ImageNet EfficientNet-Lite0 image tower + sentence-transformers MiniLM text tower, "
    "not aligned, not trained on medical images)"
)


def backbone_domain(spec: str) -> str:
    """What the backbone was trained on, as far as retune knows it."""
    return (
        DEFAULT_BACKBONE_DOMAIN
        if spec == "default"
        else "as stated by its weights' provider (check before clinical research use)"
    )


def _model_and_data(
    kind: str, main: str, methods: list[str], facts: dict, files: list[str], mlruns: str
) -> list[str]:
    """Title, files, model and data sections shared by every kind of run."""
    backbone, split = facts["backbone"], facts.get("split", {})
    listed = ", ".join(f"`{name}`" for name in files)
    return [
        f"# Run card: {kind} run ({main})",
        "",
        f"Made by retune {__version__}. Files: {listed}; MLflow run in `{mlruns}/` unless tracked elsewhere.",
        "",
        "## Model",
        f"- Methods: {', '.join(methods)} (main: {main}); frozen backbone `{backbone['spec']}` "
        f"(fingerprint `{backbone['fingerprint']}`).",
        f"- Backbone domain: {backbone_domain(backbone['spec'])}.",
        "",
        "## Data",
        f"- Label CSV: `{Path(facts['data']['csv']).name}` ({facts['data']['n_images']} images).",
        f"- Patient-level split {split.get('fractions')} (seed {split.get('seed')}): "
        + ", ".join(f"{name} {count} images" for name, count in split.get("sizes", {}).items())
        + ".",
        "",
    ]


def _use_and_limits(spec: str, limitations: list[str]) -> list[str]:
    """Intended use and limitations (the general-domain backbone first where it applies)."""
    lines = [
        "",
        "## Intended use",
        "Research on adapting frozen vision-language models to chest X-ray findings. Not a medical device; not for "
        "diagnosis or triage. Validate on your own site's data before drawing any conclusion.",
        "",
        "## Limitations",
    ]
    if spec == "default":
        lines.append(
            "- **General-domain backbone**: the encoders never saw medical images; "
            "a medical backbone is expected to do better."
        )
    lines += [f"- {line}" for line in limitations]
    lines.append("- Hyper-parameters may have been chosen on the same data; treat the numbers as optimistic.")
    return lines


def run_card(facts: dict, metrics: dict, kind: str, files: list[str], mlruns: str) -> str:
    """The Markdown card of a run from its config.json facts and metrics.json (``files``: what the folder holds)."""
    if kind == "adaptor":
        return adaptor_run_card(facts, metrics, files, mlruns)
    return classifier_run_card(facts, metrics, kind, files, mlruns)


def classifier_run_card(facts: dict, metrics: dict, kind: str, files: list[str], mlruns: str) -> str:
    """The card of a ``train`` or ``peft`` run: per-class test AUROC of the main method and its baselines."""
    positives = facts.get("positives", {})
    methods = [metrics["method"], *metrics.get("baselines", {})]
    lines = _model_and_data(kind, metrics["method"], methods, facts, files, mlruns) + [
        "## Classes and test metrics",
        f"AUROC on the test split ({metrics['n_images']} images of {metrics['n_patients']} patients) with "
        f"{int(metrics.get('ci_level', 0.95) * 100)}% CIs from {metrics['n_bootstrap']} bootstrap resamples "
        "of test patients.",
        "",
        "| class | train positives | test positives | " + " | ".join(f"{name} AUROC [CI]" for name in methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    records = [metrics, *metrics.get("baselines", {}).values()]
    for name in metrics["classes"]:
        cells = [_interval(r["per_class"][name]["auroc"], r["per_class"][name]["auroc_ci"]) for r in records]
        lines.append(
            f"| {name} | {positives.get('train', {}).get(name, '?')} | {metrics['per_class'][name]['n_pos']} | "
            + " | ".join(cells)
            + " |"
        )
    lines.append(
        f"| **{record_mean_label(metrics)}** | | | "
        + " | ".join(_interval(r["mean_auroc"], r["mean_auroc_ci"]) for r in records)
        + " |"
    )
    limitations = []
    undefined = metrics.get("undefined_classes", [])
    if undefined:
        limitations.append(f"Undefined AUROC (no positives or no negatives in test): {', '.join(undefined)}.")
    few = [name for name in metrics["classes"] if 0 < metrics["per_class"][name]["n_pos"] < 10]
    if few:
        limitations.append(f"Fewer than 10 test positives (wide CIs): {', '.join(few)}.")
    limitations += metrics.get("warnings", [])
    return "\n".join(lines + _use_and_limits(facts["backbone"]["spec"], limitations)) + "\n"


def adaptor_run_card(facts: dict, metrics: dict, files: list[str], mlruns: str) -> str:
    """The Markdown card of a ``retune adaptor run``: retrieval on test and probes at each label fraction."""
    lines = _model_and_data("adaptor", metrics["method"], [metrics["method"]], facts, files, mlruns)
    lines += ["## Test metrics", "Retrieval on the test split (the adaptor's image and text embeddings):", ""]
    for direction, values in metrics["retrieval"]["adaptor"].items():
        if isinstance(values, dict):
            lines.append(f"- {direction}: " + ", ".join(f"{key} {value:.3f}" for key, value in values.items()))
    lines += [
        "",
        "| labels used | adaptor + probe mean AUROC [CI] | frozen + probe mean AUROC [CI] |",
        "|---|---|---|",
    ]
    for fraction, pair in metrics["label_fractions"].items():
        cells = [
            _interval(pair[name].get("mean_auroc"), pair[name].get("mean_auroc_ci")) for name in ("adaptor", "frozen")
        ]
        lines.append(f"| {float(fraction):.0%} | " + " | ".join(cells) + " |")
    limits = ["Retrieval texts are built from the labels when the CSV has no report column."]
    return "\n".join(lines + _use_and_limits(facts["backbone"]["spec"], limits)) + "\n"

