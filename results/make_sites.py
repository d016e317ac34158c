"""Site-incremental NIH -> Kermany (configs/site-incremental-nih-kermany.yaml) and the transfer table it gives.

Run from the repo root: ``python results/make_sites.py [--store DIR] [--out DIR]``. Runs the scenario through the
Python API (resuming finished tasks), then writes results/sites.json: the per-site table, and the transfer table
(each method after the NIH task only and after the Kermany task: Kermany Pneumonia / No_Finding AUROC and NIH's mean
AUROC, patient-bootstrap CIs from the first seed, mean ± sd over the five seeds).
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch

import retune
from retune.evaluation import mean_and_sd
from retune.io_utils import write_json_atomic
from retune.report.scenario_report import site_comparison
from retune.report.text import format_interval
from retune.scenarios.runner import load_results
from retune.scenarios.spec import load_scenario

CONFIG = "configs/site-incremental-nih-kermany.yaml"
FIRST, SECOND = "nih", "kermany"
TRANSFER_CLASSES = ("Pneumonia", "No_Finding")
# Targets: Kermany Pneumonia AUROC after the site task; NIH mean AUROC at most this much below its value before it
TARGET_AUROC, TARGET_DROP = 0.95, 0.01


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), {gpu}"


def per_seed(result: dict) -> dict:
    """Per (order, seed) run: Kermany's transfer classes and NIH's mean AUROC after each task."""
    classes = result["classes"]
    runs = []
    for run in result["orders"]:
        second, first = run["per_site"][SECOND], run["per_site"][FIRST]
        runs.append({
            "seed": run["seed"],
            **{f"{SECOND}_{c}": [row[classes.index(c)] for row in second["auroc_matrix"]] for c in TRANSFER_CLASSES},
            f"{FIRST}_mean_auroc": first["mean_auroc_per_task"],
        })
    return {"runs": runs}


def transfer_row(name: str, result: dict, raw: dict) -> list[str]:
    """One method's transfer-table row: first seed's values with CIs, the change in NIH's mean over seeds, target."""
    second, first = result["per_site"][SECOND], result["per_site"][FIRST]
    row = [name + ("" if result["exemplar_free"] else " (keeps rows)")]
    for c in TRANSFER_CLASSES:
        for task in (0, 1):
            metrics = second["metrics_after_task"][task]["per_class"].get(c)
            row.append(format_interval(metrics["auroc"], metrics["auroc_ci"]) if metrics else "undefined")
    for task in (0, 1):
        metrics = first["metrics_after_task"][task]
        row.append(format_interval(metrics["mean_auroc"], metrics["mean_auroc_ci"]))
    drops = mean_and_sd([run[f"{FIRST}_mean_auroc"][1] - run[f"{FIRST}_mean_auroc"][0] for run in raw["runs"]])
    pneumonia = mean_and_sd([run[f"{SECOND}_Pneumonia"][1] for run in raw["runs"]])
    raw["nih_change"], raw["kermany_pneumonia_after"] = drops, pneumonia
    met = result["exemplar_free"] and pneumonia["mean"] >= TARGET_AUROC and drops["mean"] >= -TARGET_DROP
    row += [f"{drops['mean']:+.3f} ± {drops['std']:.3f}", f"{pneumonia['mean']:.3f} ± {pneumonia['std']:.3f}",
            "yes" if met else "no"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="embedding store (default: the config's)")
    parser.add_argument("--out", default="runs/site-incremental-nih-kermany", help="scenario output folder")
    parser.add_argument("--methods", help="comma-separated subset of the config's methods (default: all)")
    parser.add_argument("--tables-only", action="store_true",
                        help="only rebuild the tables from the results.json files already in --out")
    args = parser.parse_args()
    config = load_scenario(CONFIG)
    if args.store:
        config = config.model_copy(update={"store": Path(args.store)})
    if not args.tables_only:
        methods = args.methods.split(",") if args.methods else config.methods
        retune.run_scenario(config.model_copy(update={"methods": methods}), out=args.out, track=False, progress=print)
    saved = load_results(args.out)  # every method run into this folder, in the config's order
    results = {name: saved[name] for name in config.methods if name in saved}
    missing = [name for name in config.methods if name not in results]

    sites = site_comparison(results)
    raw = {name: per_seed(result) for name, result in results.items()}
    transfer = [transfer_row(name, result, raw[name]) for name, result in results.items()]
    n_seeds = len(config.training_seeds)
    first = next(iter(results.values()))["per_site"]
    sizes = {site: f"{block['n_test_images']} images / {block['n_test_patients']} patients"
             for site, block in first.items()}
    payload = {
        "name": "sites",
        "command": "python results/make_sites.py",
        "config": CONFIG,
        "machine": machine(),
        "backbone": "default (general-domain: ImageNet EfficientNet-Lite0 + MiniLM)",
        "tables": [
            {
                "id": "site-incremental",
                "title": "Site-incremental NIH (adults) -> Kermany (Guangzhou children): mean AUROC per site",
                "columns": sites["columns"],
                "rows": sites["rows"],
                "notes": (
                    f"Mean AUROC over each site's test patients ({sizes[FIRST]} at NIH, {sizes[SECOND]} at Kermany; "
                    f"NIH's mean covers classes with >= {config.min_positives} test positives), mean ± sd over "
                    f"{n_seeds} seeds; forgetting = mean AUROC after the site's own task minus after the last task "
                    "(first seed, patient-bootstrap 95% CI). Only joint keeps earlier rows; sd 0.000 means the "
                    "method does not depend on the training seed."
                    + (f" Not run here: {', '.join(missing)}." if missing else "")
                ),
            },
            {
                "id": "transfer",
                "title": "Transfer to a second hospital: trained on NIH only, then after the Kermany task",
                "columns": [
                    "method", "Kermany Pneumonia, NIH only", "Kermany Pneumonia, after Kermany",
                    "Kermany No_Finding, NIH only", "Kermany No_Finding, after Kermany", "NIH mean AUROC, before",
                    "NIH mean AUROC, after", f"NIH change (mean ± sd, {n_seeds} seeds)",
                    f"Kermany Pneumonia after (mean ± sd, {n_seeds} seeds)", "target met",
                ],
                "rows": transfer,
                "notes": (
                    f"AUROC on held-out test patients with patient-bootstrap 95% CIs (first seed). Target: an "
                    f"exemplar-free method with Kermany Pneumonia AUROC >= {TARGET_AUROC} after the Kermany task and "
                    f"NIH's mean AUROC at most {TARGET_DROP} below its value before it (means over seeds)."
                ),
            },
        ],
        "data": raw,
    }
    write_json_atomic(Path("results/sites.json"), payload)
    print("wrote results/sites.json")


if __name__ == "__main__":
    main()
