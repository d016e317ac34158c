"""(5) Quality next to the speed numbers: the incremental results on the shared NIH subset.

Reads ``*/results.json`` from the scenario output folders given with ``--scenario-results DIR``
(several allowed), or else runs ``configs/nih-class-incremental.yaml`` itself (store and output
under the bench work dir; in quick mode with a reduced method list and fewer bootstrap replicates).
Per method: final mean AUROC with its patient-bootstrap CI, forgetting with CI, BWT and the average
incremental AUROC.
"""

from __future__ import annotations

import shutil

from benchmarks.common import NIH_CSV, ROOT, Context, timed

NAME = "quality"
CONFIG = ROOT / "configs" / "nih-class-incremental.yaml"
QUICK_METHODS = ["retune", "retune-distill", "linear_probe", "naive"]


def summarise(results: dict[str, dict]) -> list[dict]:
    rows = []
    for name, result in results.items():
        rows.append({
            "scenario": result.get("scenario"),
            "kind": result.get("kind"),
            "method": name,
            "exemplar_free": result.get("exemplar_free"),
            "backbone": result.get("backbone"),
            "final_mean_auroc": result.get("final_mean_auroc"),
            "final_mean_auroc_ci": result.get("final_mean_auroc_ci"),
            "forgetting": result.get("forgetting"),
            "forgetting_ci": result.get("forgetting_ci"),
            "bwt": result.get("bwt"),
            "average_incremental_auroc": result.get("average_incremental_auroc"),
            "n_test_images": result.get("n_test_images"),
            "n_bootstrap": result.get("n_bootstrap"),
        })
    return rows


def run(ctx: Context) -> dict:
    from retune.scenarios.runner import load_results, run_scenario
    from retune.scenarios.spec import load_scenario

    sources, rows, seconds = [], [], None
    if ctx.scenario_results:
        for folder in ctx.scenario_results:
            rows.extend(summarise(load_results(folder)))
            sources.append(str(folder))
    else:
        config = load_scenario(CONFIG)
        config.data.csv = NIH_CSV
        config.store = ctx.workdir / "stores" / "nih"  # persistent: later runs embed nothing
        if ctx.quick:
            config.methods = [m for m in config.methods if m in QUICK_METHODS]
            config.n_bootstrap = 200
        out = ctx.workdir / "quality" / config.name
        shutil.rmtree(out, ignore_errors=True)
        ctx.log(
            f"running {CONFIG.relative_to(ROOT)} ({', '.join(config.methods)}; n_bootstrap {config.n_bootstrap}) -> "
            f"{out}"
        )
        seconds, results = timed(lambda: run_scenario(config, out, progress=ctx.log))
        rows.extend(summarise(results))
        sources.append(str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out))  # no machine paths
    return {
        "ratios": {},  # quality has no ratios; its rows are printed in the same run's table
        "targets": [],
        "rows": rows,
        "params": {
            "sources": sources,
            "config": str(CONFIG.relative_to(ROOT)) if not ctx.scenario_results else None,
            "note": "default backbone is general-domain (ImageNet EfficientNet-Lite0 + MiniLM), not medical; "
            "small biased subset: read the CIs",
        },
        "timings": {"scenario_seconds": seconds},
    }
