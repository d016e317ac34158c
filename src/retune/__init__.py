"""retune: adapt frozen medical vision-language models with small adaptors, exemplar-free, with honest evaluation.

The public API (documented in ``retune.api``)::

    import retune
    run = retune.train({"data": {"csv": "labels.csv"}}, out="runs/nih")
    retune.load_run("runs/nih").predict(["new.png"])
    retune.run_scenario("configs/nih-class-incremental.yaml", out="results/nih-class")
"""

from retune.version import __version__

__all__ = ["Run", "__version__", "load_run", "run_scenario", "train"]
_API = {"Run", "load_run", "run_scenario", "train"}


def __getattr__(name: str):
    """Import the API on first use, so ``import retune`` (and the CLI's start-up) stays fast."""
    if name in _API:
        from retune import api

        return getattr(api, name)
    raise AttributeError(f"module 'retune' has no attribute {name!r}")
