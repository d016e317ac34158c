"""A trained run on phantoms, read the way users read it: leakage guard, predict, API, run card, compare, MLflow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from retune.cli import app

runner = CliRunner()


def train_command(phantom_run, out: str | Path) -> list[str]:
    """`retune train` on the session's phantom data and store, writing to ``out``."""
    return ["train", "--data", str(phantom_run.csv), "--out", str(out), "--store", str(phantom_run.store)]


def test_train_epochs_and_lr_overrides_are_recorded(phantom_run):
    optim = json.loads((phantom_run.run / "config.json").read_text())["train_config"]["retune"]["optim"]
    assert optim["epochs"] == 5 and optim["lr"] == 0.001


def test_evaluate_counts_training_images_by_content_and_can_exclude_them(phantom_run, tmp_path):
    """Evaluating the whole training CSV overlaps the train+val images; copies under new names still count."""
    run, csv = phantom_run.run, phantom_run.csv
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    copies = tmp_path / "copies"
    copies.mkdir()
    for index, path in enumerate(frame["path"]):
        shutil.copy(csv.parent / path, copies / f"renamed_{index}.png")
    frame["path"] = [str(copies / f"renamed_{index}.png") for index in range(len(frame))]
    renamed = tmp_path / "renamed.csv"
    frame.to_csv(renamed, index=False)

    result = runner.invoke(
        app, ["evaluate", "--run", str(run), "--data", str(renamed), "--n-bootstrap", "20", "--json"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    sizes = json.loads((run / "training_digests.json").read_text())
    overlap = metrics["overlap"]
    assert overlap["checked"] and overlap["n_images"] == len(sizes["digests"]) and overlap["of"] == len(frame)
    assert not overlap["excluded"] and "LEAKAGE" in result.stderr

    excluded = runner.invoke(
        app,
        ["evaluate", "--run", str(run), "--data", str(renamed), "--n-bootstrap", "20", "--json", "--exclude-overlap"],
    )
    assert excluded.exit_code == 0, excluded.output
    kept = json.loads(excluded.stdout)
    assert kept["overlap"]["excluded"] and kept["n_images"] == len(frame) - overlap["n_images"]


def test_training_digests_hold_no_paths(phantom_run):
    text = (phantom_run.run / "training_digests.json").read_text()
    assert "phantom_" not in text and ".png" not in text


@pytest.fixture(scope="module")
def siglip_run(phantom_run) -> Path:
    """A second run on the same data and split that differs only in its objective."""
    out = phantom_run.root / "run-siglip"
    result = runner.invoke(
        app,
        [
            *train_command(phantom_run, str(out)),
            "--config",
            str(phantom_run.config),
            "--epochs",
            "5",
            "--objective",
            "siglip",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def _images(phantom_run, n: int) -> list[str]:
    return [str(path) for path in sorted((phantom_run.csv.parent / "images").glob("*.png"))[:n]]


def test_predict_table_fits_80_columns_with_3_decimals(phantom_run):
    result = runner.invoke(
        app, ["predict", "--run", str(phantom_run.run), *_images(phantom_run, 3)], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    numbers = [
        token
        for token in result.stdout.replace("│", " ").split()
        if token.replace(".", "", 1).isdigit() and "." in token
    ]
    assert numbers and all(len(token.split(".")[1]) == 3 for token in numbers)


def test_predict_json_and_output_by_extension(phantom_run, tmp_path):
    images = _images(phantom_run, 2)
    result = runner.invoke(
        app, ["predict", "--run", str(phantom_run.run), *images, "--json", "--output", str(tmp_path / "p.json")]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert [record["image"] for record in printed] == [str(Path(p).resolve()) for p in images]
    written = json.loads((tmp_path / "p.json").read_text())  # JSON, not CSV
    assert set(written[0]["probabilities"]) == set(printed[0]["probabilities"])
    parquet = runner.invoke(
        app, ["predict", "--run", str(phantom_run.run), *images, "--output", str(tmp_path / "p.parquet")]
    )
    assert parquet.exit_code == 0 and len(pd.read_parquet(tmp_path / "p.parquet")) == 2
    refused = runner.invoke(
        app, ["predict", "--run", str(phantom_run.run), *images, "--output", str(tmp_path / "p.txt")]
    )
    assert refused.exit_code == 2 and "'.txt'" in refused.output and not (tmp_path / "p.txt").exists()


def test_printed_tables_round_every_number_and_json_keeps_full_precision(phantom_run):
    """Tables show 3 decimals (no 0.6612842463140874); --json is the data interface and matches metrics.json."""
    run, csv = str(phantom_run.run), str(phantom_run.csv)
    options = ["--run", run, "--data", csv, "--n-bootstrap", "50", "--min-positives", "1"]  # 60 phantoms
    table = runner.invoke(app, ["evaluate", *options], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    numbers = [token.strip("[],") for token in table.stdout.replace("│", " ").split()]
    decimals = [token for token in numbers if token.replace(".", "", 1).replace("-", "", 1).isdigit() and "." in token]
    assert decimals and all(len(token.split(".")[1]) == 3 for token in decimals)
    printed = runner.invoke(app, ["evaluate", *options, "--json"])
    saved = json.loads((phantom_run.run / "metrics.json").read_text())
    assert json.loads(printed.stdout)["mean_auroc"] == saved["mean_auroc"]


def test_compare_shows_differing_settings_and_paired_difference(phantom_run, siglip_run):
    run = phantom_run.run
    side = runner.invoke(app, ["compare", str(run), str(siglip_run)], env={"COLUMNS": "200"})
    assert side.exit_code == 0, side.output
    assert "retune.objective" in side.stdout and "siglip" in side.stdout and "retune.optim.lr" in side.stdout
    paired = runner.invoke(
        app, ["compare", str(run), str(siglip_run), "--data", str(phantom_run.csv), "--n-bootstrap", "30", "--json",
              "--min-positives", "1"]  # 60 phantoms: the default 10 positives would leave no class in the mean
    )
    assert paired.exit_code == 0, paired.output
    result = json.loads(paired.stdout)
    assert result["split"] == "test" and result["n_images"] > 0
    assert result["difference"] == pytest.approx(result["mean_auroc_a"] - result["mean_auroc_b"], abs=2e-4)
    low, high = result["difference_ci"]
    assert low <= result["difference"] <= high


def test_compare_on_a_scenario_folder_points_to_scenario_compare(tmp_path):
    (tmp_path / "retune").mkdir()
    (tmp_path / "retune" / "results.json").write_text("{}")
    result = runner.invoke(app, ["compare", str(tmp_path)])
    assert result.exit_code == 2 and "retune scenario compare" in result.output


def test_python_api_readme_example(phantom_run):
    """The README's API example: train from a dict, load the run back, predict and evaluate."""
    import retune

    assert retune.__version__ and retune.__version__[0].isdigit()
    out = phantom_run.root / "api-run"
    run = retune.train(
        {
            "data": {"csv": str(phantom_run.csv)},
            "store": str(phantom_run.store),
            "n_bootstrap": 20,
            "baselines": [],
            "retune": {"optim": {"epochs": 3}},
        },
        out=out,
    )
    assert run.metrics["method"] == "retune" and (out / "RUN_CARD.md").exists()
    loaded = retune.load_run(out)
    frame = loaded.predict(_images(phantom_run, 2))
    assert list(frame.columns) == ["image", *loaded.classes] and len(frame) == 2
    assert loaded.evaluate(phantom_run.csv, n_bootstrap=0)["split"] == "test"
    with pytest.raises(retune.api.ConfigError, match="field 'retune.optim.epochs'"):
        retune.train({"retune": {"optim": {"epochs": 0}}}, out=out)


def test_missing_run_directory_says_it_does_not_exist(tmp_path):
    result = runner.invoke(app, ["predict", "--run", str(tmp_path / "nope"), str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "run directory does not exist" in result.output


def test_version_flag():
    import retune

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"retune {retune.__version__}"


def test_run_card_describes_backbone_data_metrics_and_limits(phantom_run):
    card = (phantom_run.run / "RUN_CARD.md").read_text()
    metrics = json.loads((phantom_run.run / "metrics.json").read_text())
    assert "General-domain backbone" in card and "## Intended use" in card
    assert f"{metrics['mean_auroc']:.3f}" in card and all(name in card for name in metrics["classes"])
    assert "linear_probe AUROC" in card


def test_predict_and_evaluate_add_nothing_to_the_store_without_cache(phantom_run, tmp_path):
    """New images are embedded in memory; only --cache adds their embeddings (and hashes/paths) to the store."""
    from retune.data.phantoms import write_phantom_dataset

    fresh = write_phantom_dataset(tmp_path / "new", n=4, seed=99)
    images = [str(path) for path in sorted((fresh.parent / "images").glob("*.png"))]
    store = phantom_run.store

    def files() -> set[Path]:
        return {path for path in store.rglob("*") if path.is_file() and path.name != ".lock"}

    before = files()
    result = runner.invoke(app, ["predict", "--run", str(phantom_run.run), *images, "--json"])
    assert result.exit_code == 0, result.output
    evaluated = runner.invoke(
        app, ["evaluate", "--run", str(phantom_run.run), "--data", str(fresh), "--n-bootstrap", "0", "--json"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert files() == before
    cached = runner.invoke(app, ["predict", "--run", str(phantom_run.run), *images, "--json", "--cache"])
    assert cached.exit_code == 0, cached.output
    assert files() > before
    assert json.loads(cached.stdout) == json.loads(result.stdout)  # same numbers either way


def test_mlflow_run_holds_settings_per_class_cis_histories_and_artifacts(phantom_run):
    """`retune train` logs to OUT/mlruns what a user browses: every setting, per-class AUROC + CI, curves, files."""
    from mlflow.tracking import MlflowClient

    from retune.experiments.run_folder import tracking_uri

    client = MlflowClient(tracking_uri(phantom_run.run))
    (run,) = client.search_runs([client.get_experiment_by_name("retune-train").experiment_id])
    params, metrics = run.data.params, run.data.metrics
    assert params["config.retune.optim.lr"] == "0.001" and params["config.retune.optim.epochs"] == "5"
    assert params["config.split.seed"] == "0" and len(params["data.csv_sha256"]) == 64
    assert params["backbone.fingerprint"] and "version.torch" in params
    recorded = json.loads((phantom_run.run / "metrics.json").read_text())
    name = next(c for c in recorded["classes"] if recorded["per_class"][c]["auroc_ci"])
    assert metrics[f"auroc.{name}"] == pytest.approx(recorded["per_class"][name]["auroc"])
    assert metrics[f"auroc.{name}.ci_low"] == pytest.approx(recorded["per_class"][name]["auroc_ci"][0])
    assert f"linear_probe.auroc.{name}" in metrics
    history = client.get_metric_history(run.info.run_id, "retune.train_loss")
    assert [point.step for point in history] == [1, 2, 3, 4, 5]
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "config.json", "RUN_CARD.md", "roc_curves.png"} <= artifacts
    assert "training_digests.json" not in artifacts


def test_ui_refuses_a_folder_without_mlflow_runs(tmp_path):
    result = runner.invoke(app, ["ui", str(tmp_path)])
    assert result.exit_code == 2 and "not an MLflow file store" in result.output


def test_ui_serves_the_runs_mlflow_store_and_refuses_mlflow_without_its_server(phantom_run, monkeypatch):
    """`retune ui RUN` starts `mlflow ui` on RUN/mlruns (file store allowed, one worker, the given port); with an
    mlflow lacking its server (mlflow-skinny) it says so in one line instead."""
    import subprocess
    import sys

    started = []

    class Exited:
        """A `mlflow ui` that records how it was started and has already exited (no real server starts)."""

        pid = 2**22 + 12345  # no such process: stopping its group finds nothing

        def __init__(self, command, env, start_new_session):
            started.append((command, env))
            assert start_new_session  # its own process group, so stopping retune ui stops it

        def poll(self):
            return 0

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Exited)
    result = runner.invoke(app, ["ui", str(phantom_run.run), "--port", "5999"])
    assert result.exit_code == 0, result.output
    ((command, env),) = started
    assert command[1:4] == ["-m", "mlflow", "ui"] and env["MLFLOW_ALLOW_FILE_STORE"] == "true"
    assert command[command.index("--backend-store-uri") + 1] == (phantom_run.run / "mlruns").resolve().as_uri()
    assert command[command.index("--port") + 1] == "5999" and command[command.index("--workers") + 1] == "1"
    monkeypatch.setitem(sys.modules, "mlflow.server", None)  # as with mlflow-skinny: no server module
    refused = runner.invoke(app, ["ui", str(phantom_run.run)])
    assert refused.exit_code == 2 and "the MLflow UI needs the full mlflow package" in refused.output


def test_train_progress_bars_on_stderr_only_when_asked(phantom_run, capsys):
    """Each method gets a bar (epoch, loss, validation AUROC) on stderr; the CLI shows none when not on a TTY, and
    names the (existing) store it writes to."""
    import retune

    retune.train(
        {
            "data": {"csv": str(phantom_run.csv)},
            "store": str(phantom_run.store),
            "n_bootstrap": 0,
            "baselines": [],
            "retune": {"optim": {"epochs": 2, "min_epochs": 1}},
        },
        out=phantom_run.root / "bars",
        show_progress=True,
    )
    captured = capsys.readouterr()
    assert "training retune" in captured.err and "epoch 2/2" in captured.err and "val AUROC" in captured.err
    assert "val AUROC" not in captured.out
    result = runner.invoke(
        app,
        [
            *train_command(phantom_run, str(phantom_run.root / "nobars")),
            "--epochs",
            "2",
            "--config",
            str(phantom_run.config),
        ],
    )
    assert result.exit_code == 0 and "val AUROC" not in result.stderr
    assert f"embedding store: {phantom_run.store.resolve()} (existing" in result.stderr.replace("\n", "")


def test_train_writes_a_self_contained_report_with_operating_points(phantom_run):
    report = (phantom_run.run / "report.html").read_text()
    metrics = json.loads((phantom_run.run / "metrics.json").read_text())
    assert report.count('src="data:image/png;base64,') == 2  # ROC curves and calibration
    assert all(f"<td>{name}</td>" in report for name in metrics["classes"])
    assert "Youden" in report and "sensitivity" in report and "ECE" in report
    assert set(metrics["operating_points"]) == set(metrics["classes"]) and set(metrics["calibration_ece"]) == {
        "retune",
        "linear_probe",
    }


def test_default_store_creation_is_announced(tmp_path, monkeypatch):
    """Without --store the default ./retune-store is created: the command says so, with its absolute path."""
    from retune.data.phantoms import write_phantom_dataset

    csv = write_phantom_dataset(tmp_path / "phantoms", n=3, seed=5)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["embed", str(csv), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert f"embedding store: {(tmp_path / 'retune-store').resolve()} (new;" in result.stderr.replace("\n", "")
