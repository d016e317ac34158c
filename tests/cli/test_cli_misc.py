"""CLI behaviour that needs no real data: config errors, compare, help texts."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from retune.cli import app

runner = CliRunner()


def _record(method: str, mean: float) -> dict:
    return {
        "method": method,
        "backbone": "default",
        "split": "test",
        "per_class": {},
        "mean_auroc": mean,
        "mean_auroc_ci": [mean - 0.05, mean + 0.05],
        "n_images": 10,
    }


def test_compare_lists_main_and_baseline_records(tmp_path):
    """`retune compare` shows every method of every run with its mean AUROC and CI."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(
        json.dumps({**_record("retune", 0.71), "baselines": {"linear_probe": _record("linear_probe", 0.69)}})
    )
    result = runner.invoke(app, ["compare", str(run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "retune" in result.output and "linear_probe" in result.output
    assert "0.710 [0.660, 0.760]" in result.output


def test_compare_missing_metrics_is_one_line_error(tmp_path):
    """A folder without metrics.json exits 2 naming the file."""
    result = runner.invoke(app, ["compare", str(tmp_path)])
    assert result.exit_code == 2
    assert "metrics.json" in result.output and "Traceback" not in result.output


def test_train_config_with_unknown_field_names_it(tmp_path):
    """A typo in a YAML config is reported with the file and the field, before any work."""
    config = tmp_path / "train.yaml"
    config.write_text("retune:\n  optim:\n    learning_rate: 0.1\n")
    result = runner.invoke(app, ["train", "--data", "x.csv", "--out", str(tmp_path / "run"), "--config", str(config)])
    assert result.exit_code == 2
    assert "train.yaml" in result.output and "retune.optim.learning_rate" in result.output


def test_train_unknown_objective_names_the_field(tmp_path):
    """--objective is validated like the YAML field: one line naming it and the valid values."""
    result = runner.invoke(app, ["train", "--data", "x.csv", "--out", str(tmp_path / "run"), "--objective", "triplet"])
    assert result.exit_code == 2
    assert "command line: field 'objective'" in result.output and "'bce', 'clip' or 'siglip'" in result.output


def test_peft_and_adaptor_bad_options_are_one_line(tmp_path):
    """--method / --lr / --loss outside their ranges: exit 2 naming the field, no traceback."""
    for args, field in (
        (["peft", "run", "--out", str(tmp_path / "a"), "--method", "dora"], "method"),
        (["peft", "run", "--out", str(tmp_path / "b"), "--lr", "-1"], "lr"),
        (["adaptor", "run", "--out", str(tmp_path / "c"), "--loss", "triplet"], "loss"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f"command line: field '{field}'" in result.output and "Traceback" not in result.output


def test_unknown_backbone_lists_valid_names(tmp_path):
    """An unknown --backbone is one line listing the valid names."""
    csv = tmp_path / "labels.csv"
    csv.write_text("path,A\nmissing.png,1\n")
    result = runner.invoke(app, ["embed", str(csv), "--backbone", "nosuch", "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "unknown backbone 'nosuch'" in result.output and "default" in result.output


def test_help_teaches_the_flow():
    """The main commands are registered (not merely named in the app's prose) and each one's --help runs."""
    import re

    import typer.main

    expected = {"embed", "train", "evaluate", "predict", "scenario", "demo", "store", "compare"}
    assert expected <= set(typer.main.get_command(app).commands)
    for command in sorted(expected):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert re.search(rf"Usage: \S+ {command}\b", result.output), result.output


@pytest.mark.slow  # seconds of training: make test and CI run it, make test-fast does not
def test_peft_run_freeze_k_on_phantoms(tmp_path):
    """`retune peft run` trains the unfrozen top of the image tower and reports trainable share and memory."""
    from retune.data.phantoms import write_phantom_dataset

    csv = write_phantom_dataset(tmp_path / "phantoms", n=40, seed=1)
    out = tmp_path / "run"
    freeze_top = ["peft", "run", "--data", str(csv), "--method", "freeze", "--freeze-blocks", "6", "--epochs", "1",
                  "--store", str(tmp_path / "store"), "--json"]
    result = runner.invoke(app, [*freeze_top, "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "freeze-k" and metrics["tuning"]["learning_rate"] == 1e-4  # the freeze default
    again = runner.invoke(app, [*freeze_top, "--out", str(tmp_path / "lr"), "--lr", "0.0005"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "lr" / "metrics.json").read_text())["tuning"]["learning_rate"] == 5e-4
    assert 0 < metrics["trainable_percent"] < 100
    assert json.loads((out / "config.json").read_text())["kind"] == "peft"
    evaluate = ["evaluate", "--run", str(out), "--data", str(csv), "--n-bootstrap", "10", "--json"]
    evaluated = runner.invoke(app, evaluate)
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["method"] == "freeze-k"


@pytest.mark.slow  # seconds of training: make test and CI run it, make test-fast does not
def test_adaptor_run_on_phantoms_reports_retrieval_and_fractions(tmp_path):
    """`retune adaptor run` pre-trains on cached tokens and reports R@K and every label fraction."""
    from retune.data.phantoms import write_phantom_dataset

    csv = write_phantom_dataset(tmp_path / "phantoms", n=48, seed=2)
    config = tmp_path / "adaptor.yaml"
    config.write_text("layers: 1\nwidth: 32\nheads: 2\nembed_dim: 16\nn_bootstrap: 50\nlabel_fractions: [0.1, 1.0]\n")
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "adaptor",
            "run",
            "--data",
            str(csv),
            "--out",
            str(out),
            "--config",
            str(config),
            "--epochs",
            "3",
            "--store",
            str(tmp_path / "store"),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["label_fractions"]) == {"0.1", "1.0"}
    assert all(0.0 <= value <= 1.0 for value in metrics["retrieval"]["adaptor"]["image_to_text"].values())
    assert "retrieval" in result.output and "100%" in result.output
    card = (out / "RUN_CARD.md").read_text()
    assert "## Intended use" in card and "| 10% |" in card and "General-domain backbone" in card
    from mlflow.tracking import MlflowClient

    client = MlflowClient((out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("retune-adaptor").experiment_id])
    assert run.data.params["config.loss"] == "clip" and "retrieval.adaptor.image_to_text.R_1" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "xattn_adaptor.train_loss")) == 3
    assert json.loads((out / "config.json").read_text())["kind"] == "adaptor"
    image = next((tmp_path / "phantoms").rglob("*.png"))
    for command in (["evaluate", "--run", str(out), "--data", str(csv)], ["predict", str(image), "--run", str(out)]):
        refused = runner.invoke(app, command, env={"COLUMNS": "400"})
        assert refused.exit_code == 2, refused.output
        assert "an Adaptor run (kind 'adaptor') is evaluated by `retune adaptor run`" in refused.output
        assert "Traceback" not in refused.output and len(refused.output.strip().splitlines()) == 1


def test_a_train_run_records_its_kind_and_older_runs_still_evaluate(phantom_run, tmp_path):
    """config.json says kind 'train'; runs that recorded the earlier name 'retune-train', or no kind at all (saved
    before the field), evaluate the same."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(phantom_run.run, out, ignore=shutil.ignore_patterns("mlruns"))
    facts = json.loads((out / "config.json").read_text())
    assert facts["kind"] == "train"
    command = ["evaluate", "--run", str(out), "--data", str(phantom_run.csv), "--n-bootstrap", "10", "--json"]
    current = runner.invoke(app, command)
    assert current.exit_code == 0, current.output
    for older_facts in ({**facts, "kind": "retune-train"}, {k: v for k, v in facts.items() if k != "kind"}):
        (out / "config.json").write_text(json.dumps(older_facts))
        older = runner.invoke(app, command)
        assert older.exit_code == 0, older.output
        assert json.loads(older.stdout)["per_class"] == json.loads(current.stdout)["per_class"]
