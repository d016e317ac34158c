"""MLflow logging of scenario results is idempotent: one run per method, found again after a kill or a rerun."""

from __future__ import annotations

import json

import pytest

from retune.report import tracking

pytest.importorskip("mlflow")


def fake_results(out_dir, methods=("naive", "lwf")) -> dict[str, dict]:
    results = {}
    for name in methods:
        result = {
            "method": name,
            "scenario": "toy",
            "backbone": "fake",
            "kind": "class",
            "exemplar_free": True,
            "final_mean_auroc": 0.7,
            "forgetting": 0.1,
            "bwt": -0.1,
            "average_incremental_auroc": 0.75,
            "mean_auroc_per_task": [0.8, 0.7],
        }
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        (out_dir / name / "results.json").write_text(json.dumps(result))
        results[name] = result
    return results


def store_uri(out_dir) -> str:
    return (out_dir / "mlruns").resolve().as_uri()


def active_runs(out_dir) -> list:
    import mlflow

    experiment = mlflow.get_experiment_by_name("retune-scenario-toy")
    return mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="list")


def test_rerun_and_interrupted_logging_leave_one_run_per_method(tmp_path, monkeypatch):
    import mlflow

    results = fake_results(tmp_path)
    tracking.log_scenario_results(results, tmp_path, store_uri(tmp_path))
    first_ids = sorted(run.info.run_id for run in active_runs(tmp_path))
    tracking.log_scenario_results(results, tmp_path, store_uri(tmp_path))  # rerun of a finished scenario: nothing new
    assert sorted(run.info.run_id for run in active_runs(tmp_path)) == first_ids

    # a kill during logging of changed results: the half-logged run is left without its completion tag
    (tmp_path / "lwf" / "results.json").write_text(json.dumps({**results["lwf"], "final_mean_auroc": 0.71}))
    original = mlflow.log_artifact

    def dies_on_lwf(path, *args, **kwargs):
        if "lwf" in str(path):
            raise KeyboardInterrupt
        return original(path, *args, **kwargs)

    monkeypatch.setattr(mlflow, "log_artifact", dies_on_lwf)
    with pytest.raises(KeyboardInterrupt):
        tracking.log_scenario_results(results, tmp_path, store_uri(tmp_path))
    monkeypatch.setattr(mlflow, "log_artifact", original)
    half_logged = [run for run in active_runs(tmp_path) if tracking.COMPLETE_TAG not in run.data.tags]
    assert [run.data.tags["mlflow.runName"] for run in half_logged] == ["lwf"]
    tracking.log_scenario_results(results, tmp_path, store_uri(tmp_path))
    runs = active_runs(tmp_path)
    assert sorted(run.data.tags["mlflow.runName"] for run in runs) == ["lwf", "naive"]
    assert all(run.data.tags[tracking.COMPLETE_TAG] == "true" for run in runs)


def test_a_run_folder_killed_while_mlflow_created_it_is_dropped_and_logging_goes_on(tmp_path):
    """A kill between MLflow creating a run's folder and writing its meta.yaml leaves an empty meta.yaml, on which
    MLflow's file store fails every later search: the next logging removes that folder and logs both methods."""
    import mlflow

    results = fake_results(tmp_path)
    tracking.log_scenario_results(results, tmp_path, store_uri(tmp_path))
    experiment = mlflow.get_experiment_by_name("retune-scenario-toy")
    killed = tmp_path / "mlruns" / experiment.experiment_id / ("f" * 32)
    killed.mkdir()
    (killed / "meta.yaml").write_text("")
    (tmp_path / "lwf" / "results.json").write_text(json.dumps({**results["lwf"], "final_mean_auroc": 0.71}))
    tracking.log_scenario_results(results, tmp_path, store_uri(tmp_path))
    assert not killed.exists()
    assert sorted(run.data.tags["mlflow.runName"] for run in active_runs(tmp_path)) == ["lwf", "naive"]


def test_a_run_killed_before_its_results_key_was_written_is_dropped_not_kept_beside_the_new_one(tmp_path):
    """MLflow writes a run's meta.yaml, then its tags: a kill in between leaves a run of that method without the
    results key, which a search by key never finds; the next logging removes it, so one run per method remains."""
    import mlflow

    results = fake_results(tmp_path)
    mlflow.set_tracking_uri(store_uri(tmp_path))
    experiment_id = mlflow.set_experiment("retune-scenario-toy").experiment_id
    orphan = mlflow.MlflowClient().create_run(experiment_id, run_name="lwf")  # meta.yaml and name, no results key
    tracking.log_scenario_results(results, tmp_path, store_uri(tmp_path))
    runs = active_runs(tmp_path)
    assert orphan.info.run_id not in {run.info.run_id for run in runs}
    assert sorted(run.data.tags["mlflow.runName"] for run in runs) == ["lwf", "naive"]
