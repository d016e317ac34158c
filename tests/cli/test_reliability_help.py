"""--help that a user can follow: real metavars, placeholders instead of project paths, examples that never embed
patient data into an unnamed store, options that exist on the command that mentions them."""

from __future__ import annotations

import re

import click
import typer
from typer.testing import CliRunner

from retune.cli import app

runner = CliRunner()


def commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_every_help_reads_as_written():
    for path, _command in commands(typer.main.get_command(app)):
        text = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output
        usage = text.splitlines()[0]
        assert not re.search(r"\{[a-z_]+\}", usage) and "<list" not in usage, usage  # {CSV}, never {csv_path}
        assert "shared/data" not in text and "on this machine" not in text, path
        for example in re.findall(r"^\s+(retune .*)$", text, re.M):
            if re.match(r"retune (train|embed|peft run|adaptor run|demo) ", example):  # they embed into a store
                assert "--store" in example or "--config" in example, example  # a config names its store
        assert not re.search(r"Example: .*\n\s+[A-Z]", text), path


def test_tune_help_mentions_only_options_tune_has():
    tune = typer.main.get_command(app).commands["tune"]
    options = {opt for param in tune.params for opt in getattr(param, "opts", [])}
    text = runner.invoke(app, ["tune", "--help"], env={"COLUMNS": "200"}).output
    assert set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", text)) <= options | {"--help", "--config"}
