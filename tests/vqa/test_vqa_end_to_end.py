"""A tiny VQA run end to end on phantoms with a tiny random backbone: train (frozen towers with the classifier
baseline; LoRA on both towers), what the run directory holds, evaluate, ask, and the bad inputs of the issue."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from run_cards import card_row, mlflow_run
from safetensors.numpy import load_file

from retune import api
from retune.errors import DataError
from retune.experiments.vqa import load_vqa_run, predicted_answers
from retune.report.text import format_interval


def test_frozen_run_reports_variant_table_fields_and_every_baseline(frozen_run):
    metrics = json.loads((frozen_run / "metrics.json").read_text())
    assert metrics["variant"] == "frozen"
    assert 0 < metrics["trainable_percent"] < 100 and metrics["peak_memory_mb"] > 0
    assert metrics["seconds_per_epoch"] > 0 and metrics["epochs_run"] == 2
    scores = metrics["test"]["scores"]
    assert set(scores) == {"vqa", "random", "majority", "classifier"}
    for name in ("accuracy", "accuracy_seen", "accuracy_unseen_phrasing", "paired_accuracy"):
        assert 0 <= scores["vqa"][name] <= 1 and scores["vqa"][f"{name}_ci"] is not None
    # the classifier does not answer findings it was not trained on (the held-out one)
    assert scores["classifier"]["accuracy_unseen_finding"] is None
    assert scores["vqa"]["n"]["accuracy_unseen_finding"] > 0
    classifier = json.loads((frozen_run / "classifier" / "config.json").read_text())
    facts = json.loads((frozen_run / "config.json").read_text())
    assert set(classifier["classes"]) == set(facts["questions"]["findings"])
    assert not set(facts["questions"]["built"]["held_out_findings"]) & set(classifier["classes"])


def test_the_run_card_and_mlflow_run_carry_the_runs_scores_beside_its_baselines(frozen_run):
    card = (frozen_run / "RUN_CARD.md").read_text()
    metrics = json.loads((frozen_run / "metrics.json").read_text())
    facts = json.loads((frozen_run / "config.json").read_text())
    scores = metrics["test"]["scores"]
    answerers = [cell.removesuffix(" answerer [CI]") for cell in card_row(card, "score", "questions the run answered")]
    assert answerers[0] == "vqa" and sorted(answerers) == sorted(scores) == ["classifier", "majority", "random", "vqa"]
    for label, score in (("all test questions", "accuracy"), ("unseen finding", "accuracy_unseen_finding"),
                         ("yes / no", "accuracy_yes_no"), ("paired (a yes and its adversarial no both right)",
                                                           "paired_accuracy")):
        expected = [format_interval(scores[name][score], scores[name][f"{score}_ci"]) for name in answerers]
        assert card_row(card, label)[1:] == expected, label
    assert card_row(card, "test")[-1] == str(metrics["test"]["n_questions"])
    assert f"{metrics['trainable_parameters']:,} of {metrics['total_parameters']:,}" in card
    assert all(name in card for name in facts["questions"]["built"]["held_out_findings"])
    assert "General-domain backbone" not in card  # a tiny random backbone, not the default one
    run, artifacts = mlflow_run(frozen_run / "mlruns", "vqa", frozen_run)
    assert run.data.metrics["test_accuracy"] == pytest.approx(scores["vqa"]["accuracy"])
    assert {"RUN_CARD.md", "metrics.json", "classifier/RUN_CARD.md"} <= artifacts
    assert not [path for path in artifacts if path.endswith("training_digests.json")]  # the classifier's stay out


def test_lora_run_saves_only_head_and_adapter_tensors_and_reloads_to_the_same_answers(lora_run, question_file):
    tensors = load_file(str(lora_run / "checkpoint.safetensors"))
    encoder = [key for key in tensors if "/encoder." in key]
    assert encoder and all("lora_" in key for key in encoder)
    assert any("image_model" in key for key in encoder) and any("text_model" in key for key in encoder)
    frame = pd.read_parquet(question_file)
    test = frame[frame["split"] == "test"].head(12).reset_index(drop=True)
    first = load_vqa_run(lora_run, test)
    second = load_vqa_run(lora_run, test)
    answers, p_yes = predicted_answers(first.network, test, first.prepared)
    again, p_again = predicted_answers(second.network, test, second.prepared)
    assert answers == again and np.allclose(p_yes, p_again, equal_nan=True)


def test_evaluate_scores_the_test_split_with_baselines(lora_run, question_file):
    result = api.vqa_evaluate(lora_run, question_file, n_bootstrap=10)
    frame = pd.read_parquet(question_file)
    assert result["split"] == "test" and result["n_questions"] == int((frame["split"] == "test").sum())
    assert {"vqa", "random", "majority"} <= set(result["scores"])


def test_ask_answers_yes_or_no_about_an_image(lora_run, question_file):
    image = pd.read_parquet(question_file)["image_path"].iloc[0]
    answer = api.vqa_ask(lora_run, image, "Is there an effusion?")
    assert answer["answer"] in ("yes", "no") and 0 <= answer["p_yes"] <= 1
    assert (answer["answer"] == "yes") == (answer["p_yes"] >= 0.5)


def test_bad_asks_are_one_line_errors(lora_run, question_file, tmp_path):
    image = pd.read_parquet(question_file)["image_path"].iloc[0]
    with pytest.raises(DataError, match="empty question"):
        api.vqa_ask(lora_run, image, "   ")
    with pytest.raises(DataError, match="5001 characters"):
        api.vqa_ask(lora_run, image, "x" * 5001)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(DataError, match="notes.png"):
        api.vqa_ask(lora_run, text, "Is there an effusion?")


def test_a_question_set_whose_image_is_missing_names_the_row(tiny_spec, small_config, question_file, tmp_path):
    frame = pd.read_parquet(question_file)
    frame.loc[4, "image_path"] = str(tmp_path / "gone.png")
    frame.to_parquet(tmp_path / "qa.parquet")
    with pytest.raises(DataError, match=rf"qa.parquet: row 4 \({frame.loc[4, 'question_id']}\): image .*gone.png not "
                                        "found"):
        api.vqa_train(small_config(tiny_spec, tmp_path / "qa.parquet", tmp_path / "store"), tmp_path / "run")


def test_a_vqa_run_predicts_like_a_classifier_through_the_run_kind_registry(lora_run, question_file):
    """`retune predict` on a VQA run: P(yes) to "Is there {finding}?" per finding the run was trained on."""
    frame = pd.read_parquet(question_file)
    image = frame["image_path"].iloc[0]
    predicted = api.load_run(lora_run).predict([image])
    trained = sorted(set(frame.loc[(frame["split"] == "train") & (frame["type"] == "yes_no"), "finding"]))
    assert sorted(predicted.columns[1:]) == trained
    effusion = api.vqa_ask(lora_run, image, "Is there pleural effusion?")["p_yes"]
    assert predicted["Effusion"].iloc[0] == pytest.approx(effusion, abs=1e-3)
