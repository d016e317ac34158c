"""Every command's --help reads like click's: ``retune compare [OPTIONS] RUN...``, ``--data PATH``, ``--split TEXT``,
never typer's ``{CSV}``, ``<list[Path]>``, ``<path>`` or ``<int range>`` tags."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from retune.cli import app

runner = CliRunner()
TYPE_TAG = re.compile(r"<(str|int|float|bool|path|file|dir|int range|float range|list\[[^>]*\])>")


def command_paths(command, path=()):
    """The argument paths of every command and command group of the app, e.g. ("scenario", "run")."""
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from command_paths(sub, (*path, name))


ALL_COMMANDS = list(command_paths(typer.main.get_command(app)))


def help_rows(text: str) -> list[str]:
    """The first column (names and metavars) of the Arguments and Options sections of a --help text."""
    rows, section = [], None
    for line in text.splitlines():
        if not line.strip() or not line.startswith(" "):  # a section ends at a blank line (then the epilog)
            section = line.rstrip(":") if line.endswith(":") else None
        elif section in ("Arguments", "Options") and re.match(r"  \S", line):
            rows.append(re.split(r"\s{2,}", line.strip())[0])
    return rows


def test_the_walk_reaches_nested_commands():
    assert {(), ("compare",), ("scenario",), ("scenario", "run"), ("peft", "run")} <= set(ALL_COMMANDS)


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda path: " ".join(path) or "retune")
def test_usage_and_rows_use_click_metavars(path):
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}, prog_name="retune")
    assert result.exit_code == 0, result.output
    usage = result.output.split("\n\n")[0]
    assert usage.startswith(f"Usage: {' '.join(('retune', *path))} [OPTIONS]")
    assert not re.search(r"[{}<>]", usage), usage
    assert not TYPE_TAG.search(result.output)
    for row in help_rows(result.output):
        values = [word for word in re.split(r"[ ,]+", row) if word and not word.startswith("-") and word != "/"]
        assert all(word == word.upper() for word in values), row  # PATH, TEXT, INTEGER, CSV, RUN...


def test_compare_and_embed_read_as_in_click():
    compare = runner.invoke(app, ["compare", "--help"], env={"COLUMNS": "200"}, prog_name="retune").output
    embed = runner.invoke(app, ["embed", "--help"], env={"COLUMNS": "200"}, prog_name="retune").output
    assert compare.startswith("Usage: retune compare [OPTIONS] RUN...\n")
    assert embed.startswith("Usage: retune embed [OPTIONS] CSV\n")
    assert {"RUN...", "--data PATH", "--split TEXT", "--n-bootstrap INTEGER"} <= set(help_rows(compare))
