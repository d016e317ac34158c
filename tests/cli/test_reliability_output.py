"""Output a person can read: image names that tell images apart, tables at the terminal's width, full values when
the output is not a terminal."""

from __future__ import annotations

import re
import shutil

from typer.testing import CliRunner

from retune.cli import app

runner = CliRunner()


def test_unique_suffixes_keep_whole_names_and_add_folders_only_where_names_clash():
    from retune.cli.tables import unique_suffixes

    paths = ["/data/a/img.png", "/data/b/img.png", "/data/c/patient_00000054_006.png"]
    assert unique_suffixes(paths) == ["a/img.png", "b/img.png", "patient_00000054_006.png"]


def test_predict_shows_whole_image_names_that_tell_images_apart(strict_run, tmp_path):
    source = sorted((strict_run["csv"].parent / "images").glob("*.png"))[:2]
    long_name = "patient_00000054_study_0006_view_PA_frontal.png"
    images = []
    for index, path in enumerate(source):
        (tmp_path / f"site{index}").mkdir()
        images.append(str(shutil.copy(path, tmp_path / f"site{index}" / long_name)))
    result = runner.invoke(app, ["predict", "--run", str(strict_run["run"]), *images], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert f"site0/{long_name}" in result.stdout and f"site1/{long_name}" in result.stdout
    assert "…" not in result.stdout


def test_tables_print_full_values_when_output_is_not_a_terminal(phantom_run, strict_run, monkeypatch):
    from retune.methods.registry import available_methods

    monkeypatch.delenv("COLUMNS", raising=False)
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for name, cls in available_methods().items():
        assert any(name in line and cls.description in line for line in lines), cls.description
    runs = [str(phantom_run.run), str(strict_run["run"])]
    compared = runner.invoke(app, ["compare", *runs])
    assert compared.exit_code == 0, compared.output
    for run in runs:  # each run's two rows (RE-tune, linear probe) name it in full, never as one cut prefix
        assert sum(run in line for line in compared.stdout.splitlines()) == 2, compared.stdout


def test_ctrl_c_says_what_was_saved_and_how_to_resume(strict_run, tmp_path, monkeypatch):
    import retune.api

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(retune.api, "train", interrupted)
    monkeypatch.setattr(retune.api, "run_scenario", interrupted)
    store = str(strict_run["store"])
    out = str(tmp_path / "r")
    trained = runner.invoke(app, ["train", "--data", str(strict_run["csv"]), "--out", out, "--store", store])
    assert trained.exit_code == 130 and "interrupted:" in trained.output and "rerun the same command" in trained.output
    assert store in " ".join(trained.output.split())
    monkeypatch.setattr(retune.api, "embed", interrupted)
    embedded = runner.invoke(app, ["embed", str(strict_run["csv"]), "--store", store])
    assert embedded.exit_code == 130 and "embed only the rest" in " ".join(embedded.output.split())
    config = tmp_path / "scenario.yaml"
    config.write_text(f"name: s\ndata: {{csv: {strict_run['csv']}}}\nstore: {store}\ngenerate: {{kind: class}}\n")
    scenario = runner.invoke(app, ["scenario", "run", str(config), "--out", out])
    assert scenario.exit_code == 130 and "rerun the same command to resume" in " ".join(scenario.output.split())


def test_third_party_warnings_are_hidden_unless_verbose(monkeypatch):
    import os
    import sys
    import warnings

    import retune.api
    from retune.verbosity import VERBOSE_ENV

    monkeypatch.setenv(VERBOSE_ENV, "")  # restored after the test: the CLI sets it for the processes it starts

    def noisy_methods():
        warnings.warn_explicit(
            "Grad strides do not match bucket view strides", UserWarning, "torch/autograd/graph.py", 1,
            module="torch.autograd.graph",
        )
        return {}

    monkeypatch.setattr(retune.api, "methods", noisy_methods)
    def to_stderr(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.showwarning = to_stderr  # as outside pytest, which records warnings instead
        quiet = runner.invoke(app, ["methods"])
        quiet_env = os.environ[VERBOSE_ENV]  # what torchrun's and Ray's processes inherit
        verbose = runner.invoke(app, ["--verbose", "methods"])
        verbose_env = os.environ[VERBOSE_ENV]
    assert quiet.exit_code == 0 and "Grad strides" not in quiet.output and quiet_env == "0"
    assert verbose.exit_code == 0 and "Grad strides" in verbose.output and verbose_env == "1"


def test_scenario_compare_prints_whole_values_when_piped(phantom_scenario, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    result = runner.invoke(app, ["scenario", "compare", str(phantom_scenario)])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith(("│ simplecil", "│ naive"))]
    assert len(rows) == 4 and "…" not in result.stdout, result.stdout  # the summary and the after-task tables
    summary = rows[:2]  # each method's whole row on one line: its three CIs and both spreads over runs
    assert all(len(re.findall(r"\[-?\d\.\d{3}, -?\d\.\d{3}\]", row)) == 3 for row in summary), result.stdout
    assert all(row.count("(n=2)") == 2 for row in summary), result.stdout
