"""Site-incremental scenarios on two phantom "sites": tasks, per-site scores and forgetting, bad inputs."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

import retune
from retune.cli import app
from retune.errors import ConfigError, DataError
from retune.report.scenario_report import site_comparison
from retune.scenarios.spec import ScenarioConfig

METHODS = ["retune", "simplecil", "gaussian", "lwf", "joint"]


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory) -> dict:
    """Site "adults" labels every phantom finding; site "children" (other images, smaller) only Effusion and Mass."""
    from retune.data.phantoms import write_phantom_dataset

    root = tmp_path_factory.mktemp("sites")
    adults = write_phantom_dataset(root / "adults", n=48, seed=11, size=64)
    children_csv = write_phantom_dataset(root / "children", n=48, seed=12, size=48)
    frame = pd.read_csv(children_csv, dtype=str, keep_default_na=False)
    children = root / "children" / "partial.csv"
    frame[["path", "patient_id", "Effusion", "Mass"]].to_csv(children, index=False)
    return {"root": root, "adults": adults, "children": children}


def site_config(two_sites: dict, **changes) -> dict:
    config = {
        "name": "phantom-sites",
        "kind": "site",
        "store": str(two_sites["root"] / "store"),
        "sites": [{"name": "adults", "csv": str(two_sites["adults"])},
                  {"name": "children", "csv": str(two_sites["children"])}],
        "split": {"fractions": [0.6, 0.2, 0.2], "seed": 0},
        "methods": METHODS,
        "seeds": [0, 1],
        "min_positives": 1,
        "n_bootstrap": 20,
        "retune": {"optim": {"epochs": 3, "patience": 2, "min_epochs": 1}},
    }
    return {**config, **changes}


@pytest.fixture(scope="module")
def site_results(two_sites, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("site-out")
    return {"out": out, **retune.run_scenario(site_config(two_sites), out=out, track=False)}


def test_each_site_is_a_task_with_the_classes_it_labels_and_only_its_rows(site_results):
    result = site_results["lwf"]
    adults, children = result["tasks"]
    assert adults["site"] == "adults" and len(adults["classes"]) == 6
    assert children["site"] == "children" and children["classes"] == ["Effusion", "Mass"]
    assert 0 < adults["n_train_rows"] < 48 and 0 < children["n_train_rows"] < 48  # one site's rows, never both
    assert result["kind"] == "site"


def test_every_method_is_scored_per_site_with_forgetting_of_the_first_site(site_results):
    for name in METHODS:
        per_site = site_results[name]["per_site"]
        assert per_site["adults"]["own_task"] == 1 and per_site["children"]["own_task"] == 2
        first = per_site["adults"]
        after_own, final = first["mean_auroc_per_task"]
        assert first["forgetting"] == pytest.approx(after_own - final)  # two tasks: best earlier is the own task
        assert per_site["children"]["forgetting"] is None  # the last site has nothing after its own task
        matrix = per_site["children"]["auroc_matrix"]
        labelled = [site_results[name]["classes"].index(c) for c in ("Effusion", "Mass")]
        assert all(value is None for c, value in enumerate(matrix[-1]) if c not in labelled)
        assert site_results[name]["per_site_over_runs"]["adults"]["final_mean_auroc"]["n"] == 2


def test_site_comparison_has_a_row_per_method_and_columns_per_site(site_results):
    results = {name: site_results[name] for name in METHODS}
    table = site_comparison(results)
    assert table["sites"] == ["adults", "children"]
    assert [row[0] for row in table["rows"]] == [*METHODS[:-1], "joint (keeps rows)"]
    assert len(table["columns"]) == 1 + 3 * 2 and all(len(row) == len(table["columns"]) for row in table["rows"])
    printed = CliRunner().invoke(app, ["scenario", "compare", str(site_results["out"]), "--markdown"])
    assert printed.exit_code == 0, printed.output
    assert "| method | adults after own task |" in printed.output and "| joint (keeps rows) |" in printed.output


def test_one_csv_with_a_site_column_gives_the_same_tasks(two_sites, tmp_path):
    adults = pd.read_csv(two_sites["adults"], dtype=str, keep_default_na=False)
    children = pd.read_csv(two_sites["children"], dtype=str, keep_default_na=False)
    adults["path"] = [str(two_sites["adults"].parent / p) for p in adults["path"]]
    children["path"] = [str(two_sites["children"].parent / p) for p in children["path"]]
    adults["site"], children["site"] = "adults", "children"
    combined = tmp_path / "both.csv"
    pd.concat([adults, children]).fillna("").to_csv(combined, index=False)
    config = site_config(two_sites, sites=[], data={"csv": str(combined), "allow_outside_root": True},
                         methods=["simplecil"], seeds=[0])
    results = retune.run_scenario(config, out=tmp_path / "out", track=False)
    assert [task["site"] for task in results["simplecil"]["tasks"]] == ["adults", "children"]
    assert results["simplecil"]["tasks"][1]["classes"] == ["Effusion", "Mass"]

    one_site = tmp_path / "one.csv"
    adults.to_csv(one_site, index=False)
    config["data"]["csv"] = str(one_site)
    with pytest.raises(DataError, match=r"one.csv: column 'site' has one value \('adults'\)"):
        retune.run_scenario(config, out=tmp_path / "one", track=False)


def test_a_site_without_test_patients_is_refused_naming_it(two_sites, tmp_path):
    tiny = tmp_path / "tiny.csv"
    frame = pd.read_csv(two_sites["children"], dtype=str, keep_default_na=False).head(1)
    frame["path"] = [str(two_sites["children"].parent / p) for p in frame["path"]]
    frame.to_csv(tiny, index=False)
    sites = [{"name": "adults", "csv": str(two_sites["adults"])}, {"name": "tiny", "csv": str(tiny)}]
    config = site_config(two_sites, sites=sites, data={"allow_outside_root": True}, methods=["simplecil"])
    with pytest.raises(DataError, match="site 'tiny': no test patients"):
        retune.run_scenario(config, out=tmp_path / "out", track=False)


def test_site_lists_are_checked_when_the_config_is_read(two_sites):
    with pytest.raises(ConfigError, match="give every site a csv, or none"):
        retune.api.as_config(site_config(two_sites, sites=[{"name": "a", "csv": "a.csv"}, {"name": "b"}]),
                             ScenarioConfig)
    with pytest.raises(ConfigError, match="set kind: site"):
        retune.api.as_config(site_config(two_sites, kind="data"), ScenarioConfig)


def test_a_task_naming_an_unknown_site_is_refused():
    from retune.scenarios.spec import TaskSpec, validate_tasks

    with pytest.raises(ConfigError, match=r"task 1: site 'clinic' is not one of the data's sites \(adults, child"):
        validate_tasks([TaskSpec(classes=["Mass"], site="clinic")], "site", ["Mass"], ["adults", "children"])
