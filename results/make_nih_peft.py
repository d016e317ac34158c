"""NIH ChestX-ray14: partial freezing (freeze-k) of the default image tower under the RE-tune head, k swept.

Runs ``configs/peft-freeze.yaml`` through ``retune.api.run_peft`` with the first k of the tower's blocks frozen for
each k of ``FREEZE_BLOCKS`` (0 = every block tuned, the tower's block count = only the layers after the blocks) and
each seed, on the split of ``results/nih_train.json``, and writes ``results/nih_peft.json``: trainable parameters,
test mean AUROC (mean +- sd over seeds, the first seed's CI) and, per k, the paired patient-bootstrap difference
against k = 0 (first seed). Finished runs in WORK are reused. Long on CPU (every epoch runs the unfrozen top of the
encoder on every training image). From the repo root:

    python results/make_nih_peft.py [--store DIR] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from retune.api import compare_runs, run_peft
from retune.config import PeftExperimentConfig, load_yaml_config, override
from retune.report.results_pages import results_table, write_results
from retune.report.text import format_interval

CONFIG = "configs/peft-freeze.yaml"
FREEZE_BLOCKS = (0, 3, 5, 7)
SEEDS = (0, 1, 2)
COMPARED = ("epochs", "lr", "batch_size", "method", "tower", "freeze_blocks", "seed", "split", "retune")
KEPT = ("mean_auroc", "mean_auroc_ci", "n_classes_in_mean", "trainable_parameters", "trainable_percent", "seconds")


def finished(run_dir: Path, config: PeftExperimentConfig) -> dict | None:
    """The metrics of a finished run made with this config's settings (training, split, head; not paths), else
    None: it is trained again."""
    if not (run_dir / "metrics.json").is_file() or not (run_dir / "config.json").is_file():
        return None
    recorded = json.loads((run_dir / "config.json").read_text())["train_config"]
    wanted = config.model_dump(mode="json")
    same = all(recorded.get(key) == wanted[key] for key in COMPARED)
    return json.loads((run_dir / "metrics.json").read_text()) if same else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", help="Embedding store (default: the config's).")
    parser.add_argument("--work", type=Path, default=Path("runs/results/nih_peft"), help="Where the runs go.")
    args = parser.parse_args()
    base = override(load_yaml_config(CONFIG, PeftExperimentConfig), {"store": args.store})  # None: the config's
    runs: dict[int, list[dict]] = {}
    for k in FREEZE_BLOCKS:
        for seed in SEEDS:
            run_dir = args.work / f"k{k}-s{seed}"
            config = override(base, {"freeze_blocks": k, "seed": seed})
            metrics = finished(run_dir, config) or run_peft(config, run_dir)
            runs.setdefault(k, []).append({key: metrics[key] for key in KEPT} | {"run": run_dir.name})
            n_blocks = metrics["tuning"]["blocks"]["image"]  # the tower's block count, as every run records it
            print(f"k={k} seed={seed}: mean AUROC {metrics['mean_auroc']:.3f}", flush=True)
    paired = {k: compare_runs(args.work / f"k{k}-s{SEEDS[0]}", args.work / f"k0-s{SEEDS[0]}", base.data.csv,
                              n_bootstrap=base.n_bootstrap) for k in FREEZE_BLOCKS if k}
    rows, data = [], {"freeze_blocks": list(FREEZE_BLOCKS), "n_blocks": n_blocks, "seeds": list(SEEDS), "runs": {},
                      "paired_vs_k0": {}}
    for k, seeds in runs.items():
        aurocs = [run["mean_auroc"] for run in seeds]
        mean, sd = float(np.mean(aurocs)), float(np.std(aurocs, ddof=1)) if len(aurocs) > 1 else 0.0
        difference = paired.get(k)
        data["runs"][str(k)] = {"mean_auroc": mean, "sd": sd, "seeds": seeds}
        if difference is not None:
            data["paired_vs_k0"][str(k)] = {"difference": difference["difference"], "ci": difference["difference_ci"]}
        rows.append([
            f"{k} of {n_blocks}" + (" (every block tuned)" if k == 0 else " (only the layers after the blocks)"
                                    if k == n_blocks else ""),
            f"{seeds[0]['trainable_parameters']:,} ({seeds[0]['trainable_percent']:.1f}%)",
            f"{mean:.3f} ± {sd:.3f} [{seeds[0]['mean_auroc_ci'][0]:.3f}, {seeds[0]['mean_auroc_ci'][1]:.3f}]",
            "-" if difference is None else format_interval(difference["difference"], difference["difference_ci"],
                                                           signed=True),
            f"{np.mean([run['seconds'] for run in seeds]):.0f}",
        ])
    first = runs[FREEZE_BLOCKS[0]][0]
    notes = (f"Mean ± sd over seeds {list(SEEDS)} [95% patient-bootstrap CI of seed {SEEDS[0]}]; means over the "
             f"{first['n_classes_in_mean']} classes with >= 10 test positives; the same 70/10/20 patient split "
             f"(seed 0) as the RE-tune table; {base.epochs} epochs at learning rate {base.learning_rate:g} for every "
             "k. The paired difference scores both runs of the first seed on the same test images (patient "
             "bootstrap). "
             "Trainable parameters include the RE-tune head; the frozen blocks' activations are cached in the store, "
             "so training runs only the unfrozen top of the tower. Seconds per run: wall clock on a shared 2-core "
             "machine, a rough guide only.")
    table = results_table("freeze-k", "Partial freezing of the image tower under the RE-tune head, NIH test split",
                          ["frozen blocks", "trainable parameters", "mean test AUROC",
                           "paired difference vs 0 frozen [95% CI]", "seconds per run"], rows, notes)
    print(write_results("nih_peft", [table], CONFIG, data))


if __name__ == "__main__":
    main()
