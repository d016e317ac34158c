"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--only NAME ...] [--scenario-results DIR ...]``.

Writes ``benchmarks/results/<name>.json`` per benchmark (top-level ``ratios``, raw timings, the
machine) and prints one table of the ratios measured in this run, then the quality table.
Targets are reported, never asserted: the exit status is non-zero only if a benchmark crashed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # executed as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, Context, fmt, print_table, write_result  # noqa: E402

# Cheapest first, so a quick run shows numbers early; quality last (it may embed the NIH subset).
BENCHMARKS = [
    "training", "memory", "embed", "scenario", "prefix", "serve", "quality", "distributed", "avalanche",
    "serve_abuse", "seg",
]
MODULES = {
    "training": "bench_training",
    "memory": "bench_memory",
    "embed": "bench_embed",
    "scenario": "bench_scenario",
    "prefix": "bench_prefix",
    "serve": "bench_serve",
    "quality": "bench_quality",
    "distributed": "bench_distributed",
    "avalanche": "bench_avalanche",
    "serve_abuse": "bench_serve_abuse",
    "seg": "bench_seg",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes and fewer repeats (under 10 minutes on 2 CPU cores)"
    )
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help=f"run only these: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--scenario-results",
        nargs="+",
        type=Path,
        default=[],
        metavar="DIR",
        help="'retune scenario run' output folders to read the quality rows from (else the quality benchmark runs the "
             "NIH class-incremental config)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for the training and memory benchmarks (default 2)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=ROOT / "benchmarks" / "work",
        help="scratch space (stores, scenario outputs); git-ignored",
    )
    parser.add_argument(
        "--results", type=Path, default=ROOT / "benchmarks" / "results", help="where <name>.json files go"
    )
    return parser.parse_args(argv)


def ratio_rows(name: str, payload: dict) -> list[list]:
    rows = [[name, key, value, "", ""] for key, value in payload.get("ratios", {}).items()]
    rows += [[name, key, value, "", ""] for key, value in payload.get("figures", {}).items()]
    for goal in payload.get("targets", []):
        rows.append([name, "target: " + goal["name"], goal["value"], goal["goal"], goal["met"]])
    return rows


def quality_rows(payload: dict) -> list[list]:
    from retune.report.text import format_interval as interval

    return [
        [
            row["scenario"],
            row["method"],
            interval(row["final_mean_auroc"], row["final_mean_auroc_ci"]),
            interval(row["forgetting"], row["forgetting_ci"]),
            row["bwt"],
            row["average_incremental_auroc"],
        ]
        for row in payload.get("rows", [])
    ]


def _relative(path: str) -> str:
    return str(Path(path).relative_to(ROOT)) if Path(path).is_relative_to(ROOT) else path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = Context(
        quick=args.quick,
        workdir=args.workdir.resolve(),
        results_dir=args.results.resolve(),
        threads=args.threads,
        scenario_results=[p.resolve() for p in args.scenario_results],
    )
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    selected = [name for name in BENCHMARKS if not args.only or name in args.only]
    payloads, failures, durations = {}, {}, {}
    started = time.perf_counter()
    for name in selected:
        print(f"== {name} ({'quick' if ctx.quick else 'full'})", flush=True)
        module = importlib.import_module(f"benchmarks.{MODULES[name]}")
        begun = time.perf_counter()
        try:
            payload = module.run(ctx)
        except Exception as error:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            failures[name] = f"{type(error).__name__}: {error}"
            continue
        durations[name] = time.perf_counter() - begun
        payload["benchmark_seconds"] = durations[name]
        payloads[name] = payload
        path = write_result(ctx, name, payload)
        print(
            f"   {name}: {durations[name]:.0f} s -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}",
            flush=True,
        )

    print()
    rows = [row for name in selected if name in payloads for row in ratio_rows(name, payloads[name])]
    if rows:
        print_table(
            ["benchmark", "ratio / figure", "value", "target", "met"],
            rows,
            title="Ratios measured in this run (targets reported, not asserted)",
        )
    if "quality" in payloads and payloads["quality"].get("rows"):
        print()
        print_table(
            ["scenario", "method", "final mean AUROC [95% CI]", "forgetting [95% CI]", "BWT", "avg incr. AUROC"],
            quality_rows(payloads["quality"]),
            title="Quality: "
            + "; ".join(_relative(p) for p in payloads["quality"]["params"]["sources"])
            + " (default backbone: general-domain, not medical)",
        )
    print(
        f"\ntotal {time.perf_counter() - started:.0f} s: "
        + ", ".join(f"{name} {fmt(seconds)} s" for name, seconds in durations.items())
    )
    for name, reason in failures.items():
        print(f"FAILED {name}: {reason}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
