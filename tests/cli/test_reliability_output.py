"""Output a person can read: image names that tell images apart, tables at the terminal's width, full values when
the output is not a terminal."""

from __future__ import annotations

import shutil

from typer.testing import CliRunner

from retune.cli import app
from retune.cli.tables import unique_suffixes

runner = CliRunner()


def test_unique_suffixes_keep_whole_names_and_add_folders_only_where_names_clash():
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


def test_tables_print_full_values_when_output_is_not_a_terminal(monkeypatch):
    from retune.api import methods

    monkeypatch.delenv("COLUMNS", raising=False)
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for name, cls in methods().items():
        assert any(name in line and cls.description in line for line in lines), cls.description
