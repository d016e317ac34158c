"""A tiny end-to-end `retune adaptor bench` on phantoms with a random token backbone (every task: zero-shot, probes,
retrieval, VQA with the adaptor as fusion module, Dice on its token states), then `retune adaptor caption` on one of
its runs; the bench's VQA answerer takes the adaptor's towers and its masks follow the towers' centre crop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from run_cards import card_row, mlflow_run
from typer.testing import CliRunner

from retune.cli import app
from retune.data.phantoms import write_mask_phantoms, write_phantom_dataset
from retune.experiments.adaptor_bench_tasks import adaptor_shape, centre_cropped
from retune.methods.xattn_adaptor import CrossAttentionAdaptor
from retune.report.text import format_interval
from retune.vqa import AnswerHead


def test_bench_prints_every_mix_and_caption_generates(tmp_path, registered_token_backbone):
    csv = write_phantom_dataset(tmp_path / "data", n=36, size=32)
    masks = write_mask_phantoms(tmp_path / "masks", n=20, size=32)
    config = tmp_path / "bench.yaml"
    config.write_text(
        f"backbone: {registered_token_backbone}\nstore: {tmp_path / 'store'}\n"
        f"data: {{csv: {csv}, classes: [Cardiomegaly, Effusion]}}\n"
        "layers: 1\nheads: 2\nwidth: 8\nembed_dim: 4\nimage_token_dim: 3\nn_bootstrap: 10\nmin_positives: 1\n"
        "label_fractions: [1.0]\nseeds: [0]\n"
        "optim: {lr: 0.001, epochs: 2, batch_size: 16, min_epochs: 1}\n"
        "mixes: {clip: {clip: 1.0}, captioned: {clip: 1.0, caption: {weight: 0.5, min_count: 1}}}\n"
        "vqa: {epochs: 1}\n"
        f"segmentation: {{csv: {masks}, structure: lungs, epochs: 2}}\n"
    )
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["adaptor", "bench", "--config", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output and "image→text R@10" in result.output and "Dice" in result.output
    bench = json.loads((out / "bench.json").read_text())
    assert [row[0] for row in bench["table"]["rows"]] == ["clip", "captioned", "no pre-training"]
    assert bench["not_run"] == {}
    for row, runs in (("clip", bench["runs"]["clip"]), ("no pre-training", bench["baselines"])):
        cells = bench["summary"][row]  # each cell is its runs' own score, with the first run's CI
        assert cells["vqa_accuracy"]["mean"] == runs[0]["vqa"]["accuracy"], row
        first_ci = runs[0]["vqa"]["accuracy_ci"]
        assert cells["vqa_accuracy"]["first_seed_ci"] == first_ci and len(first_ci) == 2, row
        assert cells["dice"]["mean"] == runs[0]["segmentation"]["dice"] and 0 < cells["dice"]["mean"] <= 1, row
    assert bench["data"]["vqa"]["n_questions"]["test"] > 0 and bench["data"]["segmentation"]["grid"] == [2, 2]
    clip = bench["summary"]["clip"]
    assert clip["zero_shot_auroc"]["n"] == 1 and clip["image_to_text.R@10"]["first_seed_ci"] is not None
    assert bench["runs"]["captioned"][0]["seconds_per_epoch"] > 0
    assert bench["data"]["text_source"] == "labels (synthetic)"
    runs = {name: out / "runs" / name / "seed0" for name in ("clip", "captioned")}
    for name, run in runs.items():  # a card and an MLflow run per bench run, with that run's own numbers
        card, metrics = (run / "RUN_CARD.md").read_text(), json.loads((run / "metrics.json").read_text())
        vqa, dice, retrieval = metrics["vqa"], metrics["segmentation"], metrics["retrieval"]
        assert f"objective mix `{name}`" in card and "Pair texts are SYNTHETIC" in card
        assert card_row(card, "VQA accuracy (adaptor as fusion module)") == [
            format_interval(vqa["accuracy"], vqa["accuracy_ci"])]
        assert card_row(card, "Dice (linear head on its image token states)") == [
            format_interval(dice["dice"], dice["dice_ci"])]
        assert card_row(card, "image→text R@5") == [
            format_interval(retrieval["image_to_text"]["R@5"], retrieval["image_to_text_ci"]["R@5"])]
        zero_shot = metrics["zero_shot"]
        assert f"| {format_interval(zero_shot['mean_auroc'], zero_shot['mean_auroc_ci'])} |" in card
        tracked, artifacts = mlflow_run(out / "mlruns", "adaptor-objectives", run)
        assert tracked.data.metrics["vqa.accuracy"] == pytest.approx(vqa["accuracy"])
        assert tracked.data.params["mix.clip"] == "1.0" and {"RUN_CARD.md", "metrics.json"} <= artifacts
        assert ("mix.caption.weight" in tracked.data.params) == (name == "captioned")

    image = str(csv.parent / "images" / "phantom_00000.png")
    captioned = CliRunner().invoke(app, ["adaptor", "caption", "--run", str(out / "runs" / "captioned" / "seed0"),
                                         image])
    assert captioned.exit_code == 0, captioned.output
    (line,) = captioned.output.splitlines()
    assert line.startswith(f"{image}: ") and len(line) > len(image) + 2
    refused = CliRunner().invoke(app, ["adaptor", "caption", "--run", str(out / "runs" / "clip" / "seed0"), image])
    assert refused.exit_code != 0 and "has no caption objective" in refused.output
    assert len(refused.output.strip().splitlines()) == 1


def test_caption_vocabulary_counts_every_training_image(tmp_path, token_backbone):
    """A sentence shared by several training images counts once per image (not once per distinct text)."""
    from retune.experiments.adaptor_bench import BenchData
    from retune.objectives import ObjectiveContext, ObjectivesBenchConfig
    from retune.objectives.caption import CaptionObjective
    from retune.objectives.config import parse_mix

    csv = write_phantom_dataset(tmp_path / "data", n=24, size=16)
    config = ObjectivesBenchConfig(store=tmp_path / "store", data={"csv": csv, "classes": ["Effusion"]},
                                   pairs={"phrasings": 1}, seeds=[0])
    data = BenchData(config, token_backbone, False, training_only=True)
    assert len(data.train_texts) == len(data.splits["train"]) > len(set(data.train_texts))
    context = ObjectiveContext(6, 5, 8, 4, 2, data.unique_texts, data.train_texts)
    vocabulary = CaptionObjective(parse_mix({"caption": 1.0})["caption"], context).vocabulary
    assert {"effusion", "acute"} <= set(vocabulary.entries)  # each sentence is one distinct text


def test_the_vqa_answerer_takes_every_tensor_of_a_bench_adaptor():
    adaptor = CrossAttentionAdaptor(6, 5, 8, 4, 1, 2, 0, 0.1)
    shape = adaptor_shape(adaptor)
    head = AnswerHead(6, 5, shape["width"], shape["layers"], shape["heads"], 1, 0.1, embed_dim=shape["embed_dim"])
    loaded = head.fusion.load_state_dict(adaptor.state_dict(), strict=False)
    assert loaded.unexpected_keys == []
    assert {key.split(".")[0] for key in loaded.missing_keys} == {"image_fusion", "text_fusion"}
    assert torch.equal(head.fusion.image_tower.project[1].weight, adaptor.image_tower.project[1].weight)


def test_a_mask_is_centre_cropped_as_the_tower_sees_its_image():
    mask = np.zeros((8, 16), dtype=np.int8)
    mask[:, :6] = 1  # the left 6 columns; resized to 4 x 8 and cropped to the middle 4 columns: only column 0 is left
    cropped = centre_cropped(mask, 4)
    assert cropped.shape == (4, 4) and cropped[:, 0].tolist() == [1] * 4 and int(cropped[:, 1:].sum()) == 0


class CentreCropBackbone:
    """The preprocessing of the default family: shorter side resized to 8, centre 8 x 8 kept (as a 3-channel tensor
    normalised to [-1, 1])."""

    spec = "centre-crop"

    def preprocess(self, image):
        from torchvision.transforms import functional

        image = functional.center_crop(functional.resize(image, 8), [8, 8])
        return functional.to_tensor(image) * 2 - 1


def test_a_backbone_that_squashes_instead_of_cropping_is_refused_and_a_cropping_one_kept(token_backbone):
    from retune.errors import ConfigError
    from retune.experiments.adaptor_bench_tasks import check_view

    mask = np.zeros((16, 32), dtype=np.int8)
    mask[:, :12] = 1  # a wide image: cropping keeps the middle half, squashing keeps all of it
    check_view(mask, centre_cropped(mask, 8), CentreCropBackbone(), "mask")
    with pytest.raises(ConfigError, match="backbone 'random-tokens' does not resize the shorter side and centre-crop"):
        check_view(mask, centre_cropped(mask, 16), token_backbone, "mask")


def test_a_segmentation_task_names_a_structure_the_mask_table_lacks(tmp_path, token_backbone):
    from retune.errors import ConfigError
    from retune.experiments.adaptor_bench_tasks import SegmentationTask
    from retune.objectives.config import BenchSegmentationTask
    from retune.store import EmbeddingStore

    masks = write_mask_phantoms(tmp_path / "masks", n=4, size=16)
    task = BenchSegmentationTask(csv=masks, structure="kidney")
    with pytest.raises(ConfigError, match=r"segmentation.structure: 'kidney' is not in .*masks.csv \(lungs, nodule\)"):
        SegmentationTask(task, token_backbone, EmbeddingStore(tmp_path / "store"), lambda tokens: tokens, False)
