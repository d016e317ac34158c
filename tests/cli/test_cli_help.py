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


def shown_default(param) -> str | None:
    """What ``--help`` must show as the default of an option (None where it shows none: required options, plain
    switches, and options without a default, whose help says instead what happens without them)."""
    if param.required or param.default is None or (param.is_flag and not param.secondary_opts):
        return None
    if param.is_flag:
        return (param.opts[0] if param.default else param.secondary_opts[0]).lstrip("-")
    return str(param.default)


def test_every_option_shows_its_default_value_or_says_what_happens_without_it():
    """Each option's help shows ``[default: VALUE]`` with its actual default value, or (no default) its help text
    says what happens without it."""
    wrong = []
    for path, command in ALL_COMMANDS:
        output = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400"}).output
        compact = "".join(output.replace("│", " ").split())  # rich wraps long cells; compare without whitespace
        for param in command.params:
            if param.param_type_name != "option" or param.name == "help":
                continue
            expected = shown_default(param)
            if expected is not None:
                value = "".join(expected.split())
                if f"[default:{value}]" not in compact and f"[default:{value};" not in compact:
                    wrong.append(f"{' '.join(path)} {param.opts[0]}: [default: {expected}] not shown")
            elif not param.required and not param.is_flag and "default" not in (param.help or "").lower():
                wrong.append(f"{' '.join(path)} {param.opts[0]}: no default and its help does not say what happens")
    assert not wrong, wrong


def test_the_default_check_sees_a_wrong_value(monkeypatch):
    """The check above compares values: an option whose declared default differs from the one shown fails it."""
    command = dict(ALL_COMMANDS)[("ui",)]
    port = next(param for param in command.params if param.name == "port")
    monkeypatch.setattr(port, "default", 5001)
    assert shown_default(port) == "5001"
    output = runner.invoke(app, ["ui", "--help"], env={"COLUMNS": "400"}).output
    assert "[default:5001" not in "".join(output.split())


def test_backbones_lists_every_backbone_with_its_alignment_and_example_spec_whole():
    """`retune backbones` heads each registered backbone (default among them, unaligned) with whether its towers are
    aligned, and prints each example spec unbroken, even at 80 columns."""
    from retune.backbones.registry import list_backbones

    result = runner.invoke(app, ["backbones"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    listed = dict(list_backbones())
    assert listed["default"].aligned is False
    lines = result.output.splitlines()
    for name, info in listed.items():
        assert f"{name} (aligned towers: {'yes' if info.aligned else 'no'})" in lines
        assert f"  --backbone {info.example}" in lines
    assert "…" not in result.output
