"""NIH ChestX-ray14: partial freezing (freeze-k) of the default image tower under the RE-tune head.

Runs ``configs/peft-freeze.yaml`` through ``retune.api.run_peft`` and writes ``results/nih_peft.json``: trainable
parameters, the test AUROC with its CI, on the split of ``results/nih_train.json``. Long on CPU (every epoch runs the
unfrozen top of the encoder on every training image). From the repo root:

    python results/make_nih_peft.py [--store DIR] [--work DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from retune.api import run_peft
from retune.config import PeftExperimentConfig, load_yaml_config, override
from retune.report.results_pages import results_table, write_results
from retune.report.text import format_interval

CONFIGS = ("configs/peft-freeze.yaml",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", help="Embedding store (default: the config's).")
    parser.add_argument("--work", type=Path, default=Path("runs/results/nih_peft"), help="Where the runs go.")
    args = parser.parse_args()
    rows, data = [], {}
    for path in CONFIGS:
        config = load_yaml_config(path, PeftExperimentConfig)
        if args.store:
            config = override(config, {"store": args.store})
        metrics = run_peft(config, args.work / Path(path).stem)
        tuning = metrics["tuning"]
        frozen = ", ".join(f"{tower}: {tuning['frozen_blocks'][tower]} of {count}"
                           for tower, count in tuning["blocks"].items())
        rows.append([f"`{path}` ({config.method}, {config.tower} tower; frozen blocks {frozen})",
                     f"{metrics['trainable_parameters']:,} ({metrics['trainable_percent']:.1f}%)",
                     f"{config.learning_rate:g}, {config.epochs} epochs",
                     format_interval(metrics["mean_auroc"], metrics["mean_auroc_ci"])])
        data[path] = {key: metrics[key] for key in ("mean_auroc", "mean_auroc_ci", "per_class", "n_classes_in_mean",
                                                   "trainable_parameters", "trainable_percent", "tuning")}
    first = data[CONFIGS[0]]
    notes = (f"Means over the {first['n_classes_in_mean']} classes with >= 10 test positives, 95% patient-bootstrap "
             "CIs; the same 70/10/20 patient split (seed 0) as the RE-tune table above. Trainable parameters include "
             "the RE-tune head; the frozen blocks' activations are cached in the store, so training runs only the "
             "unfrozen top of the tower.")
    table = results_table("freeze-k", "Partial freezing of the image tower under the RE-tune head, NIH test split",
                          ["run", "trainable parameters", "learning rate, epochs", "mean test AUROC [95% CI]"],
                          rows, notes)
    print(write_results("nih_peft", [table], ", ".join(CONFIGS), data))


if __name__ == "__main__":
    main()
