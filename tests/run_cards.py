"""Reading back what a run folder says about itself: a row of its RUN_CARD.md tables and its MLflow run."""

from __future__ import annotations

from pathlib import Path


def card_row(card: str, *first_cells: str) -> list[str]:
    """The cells after ``first_cells`` of the one Markdown table row of ``card`` that starts with them."""
    start = "| " + " | ".join(first_cells) + " |"
    rows = [line for line in card.splitlines() if line.startswith(start)]
    assert len(rows) == 1, f"{len(rows)} rows start with {start!r}"
    return [cell.strip() for cell in rows[0][len(start):].strip().strip("|").split("|")]


def mlflow_run(store: Path, kind: str, run_dir: Path):
    """The MLflow run (experiment ``retune-<kind>`` in the file store ``store``) of the run folder ``run_dir``, and
    the paths of its artifacts, those in sub-folders included."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(Path(store).resolve().as_uri())
    runs = client.search_runs([client.get_experiment_by_name(f"retune-{kind}").experiment_id])
    (run,) = [run for run in runs if run.data.tags["retune.run_dir"] == str(Path(run_dir).resolve())]
    artifacts, folders = set(), [None]
    while folders:
        for item in client.list_artifacts(run.info.run_id, folders.pop()):
            if item.is_dir:
                folders.append(item.path)
            else:
                artifacts.add(item.path)
    return run, artifacts
