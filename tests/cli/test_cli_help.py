"""`--help` that teaches: examples at the end, a default for every option, switches shown as flags."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from retune.cli import app

runner = CliRunner()


def _commands(group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


ALL_COMMANDS = list(_commands(typer.main.get_command(app)))


def test_every_command_help_ends_with_examples_and_shows_flags_as_flags():
    assert len(ALL_COMMANDS) >= 14
    for path, _ in ALL_COMMANDS:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
        assert result.exit_code == 0, path
        tail = result.output.rstrip().split("Examples:")
        assert len(tail) == 2 and f"retune {' '.join(path)}" in tail[1], f"{path}: no examples at the end"
        assert "<bool>" not in result.output, f"{path}: a switch renders as <bool>"


def test_every_option_states_its_default():
    """An option either shows [default: ...] or says in its help what happens without it."""
    missing = []
    for path, command in ALL_COMMANDS:
        for param in command.params:
            if param.param_type_name != "option" or param.required or param.is_flag or param.name == "help":
                continue
            if param.default is None and "default" not in (param.help or "").lower():
                missing.append(f"{' '.join(path)} {param.opts[0]}")
    assert not missing, missing


def test_backbones_prints_example_specs_whole():
    from retune.backbones.registry import list_backbones

    result = runner.invoke(app, ["backbones"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    flat = result.output.replace("\n", "")
    assert all(info.example in flat for _, info in list_backbones())
    assert "…" not in result.output
