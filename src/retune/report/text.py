"""Numbers as people read them: one formatter for "value [lo, hi]" everywhere (CLI tables, HTML, benchmarks)."""

from __future__ import annotations


def format_interval(value: float | None, interval: list[float] | None, signed: bool = False) -> str:
    """``0.712 [0.650, 0.770]`` (3 decimals; ``+`` sign when ``signed``); "undefined" when there is no value."""
    if value is None:
        return "undefined"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return f"{text} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else text
