"""What each ``results/make_<name>.py`` of a scenario runs: its config through ``retune.run_scenario`` (resuming
finished tasks), then ``results/<name>.json`` with the comparison and per-task tables the docs render."""

from __future__ import annotations

import argparse
from pathlib import Path

from retune.report.results_pages import scenario_tables, write_results


def scenario_results_main(name: str, config_path: str, argv: list[str] | None = None) -> Path:
    """What ``results/make_<name>.py`` runs for a scenario: ``config_path`` through ``retune.run_scenario`` (resuming
    finished tasks), then ``results/<name>.json`` with its comparison and per-task tables."""
    from retune.api import run_scenario
    from retune.config import load_yaml_config, override
    from retune.scenarios.spec import ScenarioConfig

    parser = argparse.ArgumentParser(description=f"Run {config_path} and write results/{name}.json.")
    parser.add_argument("--store", help="Embedding store (default: the config's).")
    parser.add_argument("--work", type=Path, default=Path("runs/results") / name, help="Where the runs go.")
    args = parser.parse_args(argv)
    config = load_yaml_config(config_path, ScenarioConfig)
    if args.store:
        config = override(config, {"store": args.store})
    results = run_scenario(config, out=args.work, track=False)
    orders = ("orders " if len(config.orders) > 1 else "order ") + ", ".join(str(order) for order in config.orders)
    what_ran = (f"Ran: {len(config.methods)} methods ({', '.join(config.methods)}), {orders}, training seed "
                f"{config.seed}; gradient-trained methods {config.retune.optim.epochs} epochs at learning rate "
                f"{config.retune.optim.lr:g} with early stopping (patience {config.retune.optim.patience}).")
    data = {method: {key: result[key] for key in ("final_mean_auroc", "final_mean_auroc_ci", "forgetting",
                                                    "forgetting_ci", "bwt", "bwt_ci", "over_runs",
                                                    "n_test_positives", "too_few_positives", "min_positives")}
            for method, result in results.items()}
    for method, result in results.items():
        data[method]["runs"] = [{key: run[key] for key in ("order", "seed", "mean_auroc_per_task", "final_mean_auroc",
                                                           "forgetting", "bwt")} for run in result["orders"]]
    tables = scenario_tables(results, name.replace("_", "-"), what_ran, config.n_bootstrap)
    path = write_results(name, tables, config_path, data)
    print(path)
    return path
