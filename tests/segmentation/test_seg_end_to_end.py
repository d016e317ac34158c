"""A tiny segmentation run on mask phantoms: dense maps cached once (the encoder never runs in decoder epochs), the
run folder, baselines beside the head, and masks predicted at the image's own size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from run_cards import card_row, mlflow_run

from retune.api import seg_evaluate, seg_predict
from retune.errors import ConfigError
from retune.report.text import format_interval
from retune.segmentation.heads import HEADS, HeadInputs, create_head


def test_maps_are_computed_once_and_decoder_epochs_never_run_the_encoder(phantom_run):
    _, _, _, first_calls, second_calls = phantom_run
    assert sum(first_calls) == 20  # each image once, although the head trained 6 epochs
    assert second_calls == []  # a second run reads every map from the store


def test_run_folder_and_baselines_in_the_same_command(phantom_run):
    root, _, metrics, _, _ = phantom_run
    for name in ("config.json", "checkpoint.safetensors", "metrics.json", "per_image.csv", "report.html",
                 "RUN_CARD.md"):
        assert (root / "run" / name).is_file(), name
    assert set(metrics["per_method"]) == {"fpn", "predict_nothing", "scratch_unet"}
    lungs = metrics["per_method"]["fpn"]["lungs"]
    nothing = metrics["per_method"]["predict_nothing"]
    assert nothing["lungs"]["dice"] == 0.0 and lungs["dice"] > 0.5
    nodule = nothing["nodule"]
    if nodule["n_empty"]:  # predict-nothing gets every empty image right: the convention's floor
        assert nodule["share_empty_predicted_empty"] == 1.0
        assert nodule["dice_empty_as_one"] == pytest.approx(nodule["n_empty"] / nodule["n_images"])
    facts = json.loads((root / "run" / "config.json").read_text())
    assert facts["kind"] == "segmentation" and facts["split"]["label_fraction"] == 1.0
    assert "<img" in (root / "run" / "report.html").read_text()


def test_the_run_card_and_mlflow_run_carry_each_methods_dice_and_never_the_digests(phantom_run):
    root, _, metrics, _, _ = phantom_run
    run = root / "run"
    card = (run / "RUN_CARD.md").read_text()
    for method, summary in metrics["per_method"].items():
        lungs = summary["lungs"]
        assert card_row(card, "lungs", method)[:3] == [f"{lungs['n_present']} / {lungs['n_images']}",
                                                       format_interval(lungs["dice"], lungs["dice_ci"]),
                                                       format_interval(lungs["iou"], lungs["iou_ci"])], method
    tracked, artifacts = mlflow_run(run / "mlruns", "segmentation", run)
    fpn = metrics["per_method"]["fpn"]["lungs"]
    assert tracked.data.metrics["fpn.lungs.dice"] == pytest.approx(fpn["dice"])
    assert tracked.data.metrics["scratch_unet.lungs.iou"] == pytest.approx(metrics["per_method"]["scratch_unet"]
                                                                           ["lungs"]["iou"])
    assert {"RUN_CARD.md", "report.html", "metrics.json", "config.json"} <= artifacts
    assert "training_digests.json" not in artifacts and (run / "training_digests.json").is_file()


def test_evaluate_warns_about_training_images_and_predict_writes_original_size(phantom_run, tmp_path):
    root, csv, _, _, _ = phantom_run
    evaluation = seg_evaluate(root / "run", csv, n_bootstrap=0)
    assert evaluation["overlap_with_training"]["n_images"] > 0 and evaluation["warnings"]
    assert set(evaluation["per_method"]) == {"fpn", "predict_nothing"}
    image = Image.open(root / "data" / "images" / "mask_phantom_00000.png").resize((80, 48))
    image.save(tmp_path / "wide.png")
    written = seg_predict(root / "run", [tmp_path / "wide.png"], tmp_path / "out", ["lungs"])
    mask = Image.open(written[0]["masks"]["lungs"])
    assert mask.size == (80, 48) and set(np.unique(np.asarray(mask))) <= {0, 255}
    assert Image.open(written[0]["overlay"]).size == (80, 48)
    with pytest.raises(ConfigError, match="unknown structure 'heart'"):
        seg_predict(root / "run", [tmp_path / "wide.png"], tmp_path / "out", ["heart"])


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_head_gives_one_logit_map_per_structure_at_the_finest_stride(name):
    maps = [torch.randn(2, channels, 16 // 2**k, 16 // 2**k) for k, channels in enumerate((4, 6, 8, 10))]
    head = create_head(name, HeadInputs((4, 6, 8, 10), 3, 8, torch.randn(3, 2, 5)))
    expected = (2, 3, 2, 2) if name == "linear" else (2, 3, 16, 16)
    assert tuple(head(maps).shape) == expected


def test_classification_commands_point_a_segmentation_run_to_retune_seg(phantom_run):
    from retune.experiments.inference import open_run

    with pytest.raises(ConfigError, match="a segmentation run; use 'retune seg evaluate'"):
        open_run(phantom_run[0] / "run")
