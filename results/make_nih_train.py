"""NIH ChestX-ray14: RE-tune against the linear probe per class, and RE-tune's three training objectives.

Runs ``configs/nih-train.yaml`` three times (objective bce, clip, siglip) through ``retune.train`` and compares bce
with clip on the same test images (``retune compare --data``), then writes ``results/nih_train.json``.
Long (minutes on a few CPU cores; embedding the 1,599 images is the first run's share). From the repo root:

    python results/make_nih_train.py [--store DIR] [--work DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import retune
from retune.config import TrainConfig, load_yaml_config, override
from retune.experiments.inference import paired_comparison
from retune.report.results_pages import results_table, write_results
from retune.report.text import format_interval

CONFIG = "configs/nih-train.yaml"
OBJECTIVES = ("bce", "clip", "siglip")


def per_class_table(metrics: dict) -> dict:
    """RE-tune and the linear probe per class (same command, same split), then the min-positives means."""
    probe = metrics["baselines"]["linear_probe"]
    rows = []
    for name in metrics["classes"]:
        ours, theirs = metrics["per_class"][name], probe["per_class"][name]
        marker = " (too few positives)" if name in metrics["too_few_positives"] else ""
        rows.append([name + marker, ours["n_pos"], format_interval(ours["auroc"], ours["auroc_ci"]),
                     format_interval(theirs["auroc"], theirs["auroc_ci"])])
    counted = f"{metrics['n_classes_in_mean']} classes with >= {metrics['min_positives']} test positives"
    rows.append([f"**mean ({counted})**", "",
                 f"**{format_interval(metrics['mean_auroc'], metrics['mean_auroc_ci'])}**",
                 f"**{format_interval(probe['mean_auroc'], probe['mean_auroc_ci'])}**"])
    notes = (
        f"Test split: {metrics['n_images']} images of {metrics['n_patients']} patients; 95% CIs from "
        f"{metrics['n_bootstrap']:,} bootstrap resamples of test patients. Both methods ran in the same command on "
        "the same split. Classes marked 'too few positives' keep their per-class row but are left out of the mean; "
        "'undefined' means no positive test image. RE-tune's defaults were chosen on this same subset, so its "
        "number is optimistic; the subset is small and biased (half of it was collected as pneumonia vs no finding)."
    )
    return results_table("per-class", "RE-tune vs linear probe on NIH ChestX-ray14, test AUROC",
                         ["class", "test positives", "RE-tune AUROC [95% CI]", "linear probe AUROC [95% CI]"],
                         rows, notes)


def objectives_table(runs: dict[str, dict], facts: dict[str, dict], paired: dict) -> dict:
    """One row per objective (mean test AUROC, where early stopping kept the weights), then the linear probe."""
    rows = []
    for objective in OBJECTIVES:
        metrics, training = runs[objective], facts[objective]["training"]["retune"]
        rows.append([f"RE-tune, {objective}" + (" (the paper's)" if objective == "bce" else ""),
                     format_interval(metrics["mean_auroc"], metrics["mean_auroc_ci"]),
                     f"{training['best_epoch']} / {training['epochs_run']}"])
    probe = runs[OBJECTIVES[0]]["baselines"]["linear_probe"]
    rows.append(["linear probe (same command as bce)", format_interval(probe["mean_auroc"], probe["mean_auroc_ci"]),
                 "-"])
    first = runs[OBJECTIVES[0]]
    notes = (
        f"Test split of NIH ChestX-ray14 ({first['n_images']} images, {first['n_patients']} patients); means over the "
        f"{first['n_classes_in_mean']} classes with >= {first['min_positives']} test positives, 95% patient-bootstrap "
        "CIs. Paired comparison on the same test images and resampled patients (`retune compare RUN_BCE RUN_CLIP "
        "--data labels.csv`): mean AUROC bce - clip = "
        f"{format_interval(paired['difference'], paired['difference_ci'], signed=True)} "
        f"over the {len(paired['classes'])} classes defined in the test split, {paired['n_bootstrap']:,} replicates. "
        "The defaults (learning rate, dropout, epochs) were tuned with bce on this subset."
    )
    return results_table("objectives", "RE-tune's training objectives and the linear probe, NIH test split",
                         ["method", "mean test AUROC [95% CI]", "best validation epoch / epochs run"], rows, notes)


def trained(config: TrainConfig, out: Path) -> retune.Run:
    """The run in ``out`` when it was trained with exactly ``config`` (a rerun of this script), else a new one."""
    if (out / "metrics.json").is_file():
        run = retune.load_run(out)
        if run.facts["train_config"] == config.model_dump(mode="json"):
            return run
    return retune.train(config, out=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", help="Embedding store (default: the config's).")
    parser.add_argument("--work", type=Path, default=Path("runs/results/nih_train"), help="Where the runs go.")
    args = parser.parse_args()
    config = override(load_yaml_config(CONFIG, TrainConfig), {"store": args.store})  # None: the config's
    runs, facts = {}, {}
    for objective in OBJECTIVES:
        run = trained(override(config, {"retune": {"objective": objective}}), args.work / objective)
        runs[objective], facts[objective] = run.metrics, run.facts
    paired = paired_comparison(args.work / "bce", args.work / "clip", config.data.csv, n_bootstrap=config.n_bootstrap)
    data = {objective: {key: runs[objective][key] for key in
                        ("mean_auroc", "mean_auroc_ci", "per_class", "n_classes_in_mean", "min_positives",
                         "too_few_positives", "n_images", "n_patients", "n_bootstrap")}
            for objective in OBJECTIVES}
    data["linear_probe"] = {key: runs["bce"]["baselines"]["linear_probe"][key]
                            for key in ("mean_auroc", "mean_auroc_ci", "per_class")}
    data["paired_bce_minus_clip"] = {key: paired[key] for key in ("difference", "difference_ci", "classes",
                                                                  "n_images", "n_bootstrap")}
    data["split"] = facts["bce"]["split"]
    tables = [per_class_table(runs["bce"]), objectives_table(runs, facts, paired)]
    print(write_results("nih_train", tables, CONFIG, data))


if __name__ == "__main__":
    main()
