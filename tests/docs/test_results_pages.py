"""The docs' results tables are the render of the committed JSON, and user pages carry no dates, clock times,
temporary paths or "this branch"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retune.config import PeftExperimentConfig, load_yaml_config
from retune.errors import ConfigError
from retune.report.results_pages import (
    MARKER,
    forbidden_phrases,
    load_record,
    main,
    pages,
    render_page,
    results_table,
)

ROOT = Path(__file__).resolve().parents[2]


def test_every_results_block_in_the_committed_docs_is_the_render_of_its_json():
    stale = [str(path) for path in pages(ROOT) if render_page(path.read_text(), ROOT, str(path)) != path.read_text()]
    assert stale == [], f"edited by hand or not re-rendered: {stale}; run python -m retune.report.results_pages"


def test_the_docs_ask_for_results_tables():
    blocks = [match["file"] for path in pages(ROOT) for match in MARKER.finditer(path.read_text())]
    assert any(file.startswith("results/") for file in blocks)
    assert any(file.startswith("benchmarks/results/") for file in blocks)


@pytest.mark.parametrize("path", pages(ROOT), ids=lambda path: str(path.relative_to(ROOT)))
def test_user_pages_have_no_dates_clock_times_tmp_paths_or_this_branch(path: Path):
    assert forbidden_phrases(path.read_text()) == []


@pytest.mark.parametrize(
    "text",
    ["measured on 2026-11-29", "ran at 17:32 UTC", "from 17:32:05", "see /tmp/run.yaml", "made with This branch",
     "rerun this afternoon", "on 29 November 2026"],
)
def test_forbidden_phrases_are_found(text: str):
    assert len(forbidden_phrases(f"Intro line.\n{text}\n")) == 1


def test_ordinary_prose_and_ratios_are_not_flagged():
    assert forbidden_phrases("A 70/10/20 split, ratio 1:4, 2.19x faster, 3:2 aspect, seed 0.") == []


@pytest.fixture
def docs_tree(tmp_path: Path) -> Path:
    record = {"name": "toy", "command": "python results/make_toy.py", "config": "configs/toy.yaml",
              "machine": "2 CPU cores (x86_64, Linux), no GPU", "backbone": "default (general-domain)",
              "tables": [results_table("main", "Toy", ["method", "AUROC"], [["a", "0.700"], ["b|c", "0.650"]],
                                       "Two rows.")],
              "data": {}}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "toy.json").write_text(json.dumps(record))
    (tmp_path / "docs").mkdir()
    block = "<!-- results: results/toy.json#main -->\n<!-- /results -->\n"
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n" + block)
    (tmp_path / "README.md").write_text("# Readme\n")
    return tmp_path


def test_render_fills_the_block_with_table_notes_command_machine_and_backbone(docs_tree: Path):
    rendered = render_page((docs_tree / "docs" / "page.md").read_text(), docs_tree)
    body = rendered.split("<!-- results: results/toy.json#main -->\n")[1].split("<!-- /results -->")[0]
    assert "| method | AUROC |" in body
    assert "| b\\|c | 0.650 |" in body  # a pipe inside a cell is escaped, not a new column
    assert "Two rows." in body
    assert "Reproduce: `python results/make_toy.py` (config `configs/toy.yaml`)" in body
    assert "Machine: 2 CPU cores (x86_64, Linux), no GPU." in body
    assert "Backbone: default (general-domain)." in body
    assert render_page(rendered, docs_tree) == rendered  # rendering is idempotent


def test_check_fails_after_a_hand_edit_and_passes_after_rendering(docs_tree: Path):
    assert main(["--root", str(docs_tree), "--check"]) == 1  # the empty block is not yet rendered
    assert main(["--root", str(docs_tree)]) == 0
    assert main(["--root", str(docs_tree), "--check"]) == 0
    page = docs_tree / "docs" / "page.md"
    page.write_text(page.read_text().replace("0.700", "0.900"))
    assert main(["--root", str(docs_tree), "--check"]) == 1


def test_an_unknown_table_id_or_a_missing_file_is_one_line(docs_tree: Path, capsys: pytest.CaptureFixture[str]):
    page = docs_tree / "docs" / "page.md"
    page.write_text("<!-- results: results/toy.json#nope -->\n<!-- /results -->\n")
    assert main(["--root", str(docs_tree), "--check"]) == 1
    assert "no table 'nope' (tables: main)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="missing.json"):
        load_record(docs_tree / "results" / "missing.json")


def test_a_benchmark_file_becomes_tables_with_its_command_and_machine(tmp_path: Path):
    benchmark = {"benchmark": "serve", "mode": "quick",
                 "targets": [{"name": "speed-up", "value": 2.19, "goal": ">= 2", "met": True, "note": ""}],
                 "ratios": {"batched_vs_unbatched": 2.19},
                 "levels": [{"concurrency": 1, "p50_ms": 30.6, "error_examples": []}],
                 "machine": {"cpu_model": "AMD EPYC", "cpus_usable": 2, "ram_bytes": 24 * 2**30, "gpu": None}}
    (tmp_path / "serve.json").write_text(json.dumps(benchmark))
    record = load_record(tmp_path / "serve.json")
    tables = {table["id"]: table for table in record["tables"]}
    assert tables["targets"]["rows"] == [["speed-up", "2.19", ">= 2", "yes", ""]]
    assert tables["levels"]["columns"] == ["concurrency", "p50 ms"]
    assert record["command"] == "python -m benchmarks.run --quick --only serve"
    assert record["machine"] == "2 CPU cores (AMD EPYC), 24 GiB RAM, no GPU"


def test_a_table_with_a_short_row_is_refused():
    with pytest.raises(ConfigError, match="every row needs 2 cells"):
        results_table("t", "T", ["a", "b"], [["only one"]], "")


@pytest.mark.parametrize("tuner", ["lora", "ia3", "prefix", "prompt", "freeze"])
def test_each_shipped_peft_config_validates_and_names_its_tuner(tuner: str):
    config = load_yaml_config(ROOT / "configs" / f"peft-{tuner}.yaml", PeftExperimentConfig)
    assert config.method == tuner


def test_the_peft_page_documents_every_field_of_the_peft_config():
    page = (ROOT / "docs" / "adaptor-peft.md").read_text()
    missing = [name for name in PeftExperimentConfig.model_fields if f"| `{name}` |" not in page]
    assert missing == []
