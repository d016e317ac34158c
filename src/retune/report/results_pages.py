"""Results shown in the docs are rendered from committed JSON, never typed by hand.

A results file (``results/<name>.json``, written by ``results/make_<name>.py``) holds ``tables`` with ids, the
``command`` and ``config`` that reproduce them, the ``machine`` and the ``backbone``. A Markdown page asks for one
table with a marker block::

    <!-- results: results/<name>.json#<table-id> -->
    <!-- /results -->

and ``python -m retune.report.results_pages`` fills every block of README.md and docs/**/*.md (``--check`` fails
instead when a block differs from its render, e.g. after a hand edit). Benchmark files
(``benchmarks/results/*.json``) are read too: their ``targets`` become the table ``targets``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from retune.errors import ConfigError
from retune.io_utils import write_json_atomic, write_text_atomic

DEFAULT_BACKBONE = "default (general-domain: ImageNet EfficientNet-Lite0 + MiniLM, not a medical model)"
MARKER = re.compile(
    r"(?P<open><!-- results: (?P<file>[^#\s]+)#(?P<table>[\w.-]+) -->)\n(?P<body>.*?)(?P<close><!-- /results -->)",
    re.DOTALL,
)
# What a user-facing page must not contain: dates, clock times, temporary paths, development narrative.
FORBIDDEN = {
    "a date": re.compile(
        r"\b(19|20)\d\d-\d\d-\d\d\b|\b\d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\w* (19|20)\d\d\b"
    ),
    "a clock time": re.compile(r"\b([01]?\d|2[0-3]):[0-5]\d( ?UTC\b|:[0-5]\d)"),
    "a /tmp/ path": re.compile(r"/tmp/"),
    '"this branch"': re.compile(r"\bthis branch\b", re.IGNORECASE),
    '"this afternoon"': re.compile(r"\bthis (afternoon|morning)\b", re.IGNORECASE),
}


def machine_description() -> str:
    """The machine a result ran on, in words: CPU cores and architecture, and the GPU if one was used."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cores} CPU cores ({platform.machine()}, {platform.system()})"
    import torch

    if torch.cuda.is_available():
        return f"{text}, GPU: {torch.cuda.get_device_name(0)}"
    return f"{text}, no GPU"


def results_table(table_id: str, title: str, columns: list[str], rows: list[list], notes: str) -> dict:
    """One table of a results file; every cell becomes text as it is shown."""
    if any(len(row) != len(columns) for row in rows):
        raise ConfigError(f"table '{table_id}': every row needs {len(columns)} cells")
    return {"id": table_id, "title": title, "columns": columns, "rows": [[str(c) for c in r] for r in rows],
            "notes": notes}


def write_results(
    name: str, tables: list[dict], config: str, data: dict, backbone: str = DEFAULT_BACKBONE, root: Path = Path(".")
) -> Path:
    """Write ``results/<name>.json`` in the shared schema; the command is ``python results/make_<name>.py``."""
    record = {"name": name, "command": f"python results/make_{name}.py", "config": config,
              "machine": machine_description(), "backbone": backbone, "tables": tables, "data": data}
    path = root / "results" / f"{name}.json"
    write_json_atomic(path, record)
    return path


def scenario_tables(results: dict[str, dict], name: str, what_ran: str, n_bootstrap: int) -> list[dict]:
    """The comparison table (``<name>-final``) and the mean-AUROC-per-task table (``<name>-per-task``) of a scenario,
    as ``retune scenario compare --markdown`` prints them; ``what_ran`` says which orders and methods ran."""
    from retune.report.scenario_report import classes_in_means, comparison_header, comparison_rows, per_task_rows

    first = next(iter(results.values()))
    means = classes_in_means(first)
    several = len(first.get("orders") or [first]) > 1
    over_runs = "mean ± sd over the runs; " if several else ""
    notes = (f"{what_ran} Final = after the last task; forgetting = best earlier AUROC - final AUROC (lower is "
             f"better); BWT = final - just-learned AUROC; CIs for the first run from {n_bootstrap} "
             f"patient-bootstrap resamples; {over_runs}{means}.")
    per_task_header, per_task = per_task_rows(results)
    curve = "after each chunk of the training patients" if first.get("kind") == "data" else "after each task"
    return [
        results_table(f"{name}-final", f"{first['scenario']}: final models", comparison_header(results),
                      comparison_rows(results), notes),
        results_table(f"{name}-per-task", f"{first['scenario']}: mean AUROC over the seen classes {curve}",
                      per_task_header, per_task, f"{what_ran} {over_runs.capitalize()}{means}."),
    ]


def _shown(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "n/a"}[value]
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def _benchmark_tables(record: dict) -> list[dict]:
    """A benchmark JSON's parts as tables: ``targets``, ``ratios`` and ``figures`` (name, value), and lists of
    records such as ``levels`` or ``rows`` (their scalar fields as columns)."""
    tables = []
    if record.get("targets"):
        rows = [[t["name"], _shown(t["value"]), t.get("goal", ""), _shown(bool(t.get("met"))), t.get("note", "")]
                for t in record["targets"]]
        tables.append(results_table("targets", f"{record['benchmark']} benchmark: targets",
                                    ["measure", "value", "target", "met", "note"], rows, ""))
    for key in ("ratios", "figures"):
        if record.get(key):
            rows = [[name.replace("_", " "), _shown(value)] for name, value in record[key].items()]
            title = f"{record['benchmark']} benchmark: {key}"
            tables.append(results_table(key, title, ["measure", "value"], rows, ""))
    for key in ("levels", "rows"):
        items = record.get(key) or []
        if items:
            columns = [name for name, value in items[0].items() if not isinstance(value, (list, dict))]
            rows = [[_shown(item.get(name)) for name in columns] for item in items]
            tables.append(results_table(key, f"{record['benchmark']} benchmark: {key}",
                                        [name.replace("_", " ") for name in columns], rows, ""))
    return tables


def _machine_words(machine: dict | str) -> str:
    """A benchmark's recorded machine in words (its load average and timestamp are left out)."""
    if isinstance(machine, str):
        return machine
    cores = machine.get("cpus_usable") or machine.get("cpu_count")
    parts = [f"{cores} CPU cores ({machine.get('cpu_model', 'unknown CPU')})"]
    if machine.get("ram_bytes"):
        parts.append(f"{machine['ram_bytes'] / 2**30:.0f} GiB RAM")
    parts.append(f"GPU: {machine['gpu']}" if machine.get("gpu") else "no GPU")
    if machine.get("torch"):
        parts.append(f"torch {machine['torch']}")
    return ", ".join(parts)


def load_record(path: Path) -> dict:
    """A results or benchmark JSON, normalised to the results schema; one line naming the file when it is not."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: cannot read results JSON ({error})") from None
    if "tables" in record:
        return record
    if "benchmark" in record:
        mode = " --quick" if record.get("mode") == "quick" else ""
        return {"name": record["benchmark"], "tables": _benchmark_tables(record),
                "command": f"python -m benchmarks.run{mode} --only {record['benchmark']}",
                "config": "benchmarks/README.md", "machine": _machine_words(record.get("machine", {})),
                "backbone": DEFAULT_BACKBONE}
    raise ConfigError(f"{path}: neither a results file (no 'tables') nor a benchmark file (no 'benchmark')")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(record: dict, table_id: str, source: str) -> str:
    """The Markdown that fills one marker block: table, notes, how to reproduce it, machine and backbone."""
    tables = {table["id"]: table for table in record["tables"]}
    if table_id not in tables:
        raise ConfigError(f"{source}: no table '{table_id}' (tables: {', '.join(tables) or 'none'})")
    table = tables[table_id]
    lines = [f"**{table['title']}**", "", "| " + " | ".join(_cell(c) for c in table["columns"]) + " |",
             "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table["rows"]]
    lines.append("")
    if table.get("notes"):
        lines += [table["notes"], ""]
    lines.append(f"Reproduce: `{record['command']}` (config `{record['config']}`).  ")
    lines.append(f"Machine: {record['machine']}.  ")
    lines.append(f"Backbone: {record['backbone']}.")
    return "\n".join(lines) + "\n"


def render_page(text: str, root: Path, where: str = "page", problems: list[str] | None = None) -> str:
    """``text`` with every marker block refilled from the JSON it names (paths relative to ``root``).

    A block that cannot be rendered (missing file, unknown table) raises, or, given a ``problems`` list, is left as
    it is and its one-line reason appended there.
    """
    cache: dict[str, dict] = {}

    def fill(match: re.Match) -> str:
        file = match["file"]
        try:
            if file not in cache:
                cache[file] = load_record(root / file)
            body = render_table(cache[file], match["table"], f"{where}: {file}")
        except ConfigError as error:
            if problems is None:
                raise
            problems.append(str(error))
            return match.group(0)
        return f"{match['open']}\n{body}{match['close']}"

    return MARKER.sub(fill, text)


def forbidden_phrases(text: str) -> list[str]:
    """What a user-facing page must not say (dates, clock times, /tmp/ paths, "this branch"), as found."""
    found = []
    for what, pattern in FORBIDDEN.items():
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"line {line}: {what} ({match.group(0)!r})")
    return found


def pages(root: Path) -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [path for path in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if path.is_file()]


def stale_pages(root: Path, paths: Iterable[Path], problems: list[str] | None = None) -> list[Path]:
    """The pages whose marker blocks differ from their render."""
    return [path for path in paths if render_page(path.read_text(), root, str(path), problems) != path.read_text()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retune.report.results_pages", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="Repository root (default: the current folder).")
    parser.add_argument(
        "--check", action="store_true", help="Change nothing; exit 1 if a block differs from its render."
    )
    args = parser.parse_args(argv)
    problems: list[str] = []
    paths = pages(args.root)
    stale = stale_pages(args.root, paths, problems)
    if args.check:
        for path in stale:
            print(f"{path}: a results block differs from its JSON; run python -m retune.report.results_pages")
    else:
        for path in stale:
            write_text_atomic(path, render_page(path.read_text(), args.root, str(path), []))
            print(f"rendered {path}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems or (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
