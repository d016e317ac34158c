"""A tiny end-to-end `retune adaptor bench` on phantoms with a random token backbone, then `retune adaptor caption`
on one of its runs."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from retune.cli import app
from retune.data.phantoms import write_phantom_dataset


def test_bench_prints_every_mix_and_caption_generates(tmp_path, registered_token_backbone):
    csv = write_phantom_dataset(tmp_path / "data", n=36, size=32)
    config = tmp_path / "bench.yaml"
    config.write_text(
        f"backbone: {registered_token_backbone}\nstore: {tmp_path / 'store'}\n"
        f"data: {{csv: {csv}, classes: [Cardiomegaly, Effusion]}}\n"
        "layers: 1\nheads: 2\nwidth: 8\nembed_dim: 4\nimage_token_dim: 3\nn_bootstrap: 10\nmin_positives: 1\n"
        "label_fractions: [1.0]\nseeds: [0]\n"
        "optim: {lr: 0.001, epochs: 2, batch_size: 16, min_epochs: 1}\n"
        "mixes: {clip: {clip: 1.0}, captioned: {clip: 1.0, caption: {weight: 0.5, min_count: 1}}}\n"
    )
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["adaptor", "bench", "--config", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "not run here" in result.output and "SYNTHETIC" in result.output and "image→text R@10" in result.output
    bench = json.loads((out / "bench.json").read_text())
    assert [row[0] for row in bench["table"]["rows"]] == ["clip", "captioned", "frozen features (no adaptor)"]
    clip = bench["summary"]["clip"]
    assert clip["zero_shot_auroc"]["n"] == 1 and clip["image_to_text.R@10"]["first_seed_ci"] is not None
    assert bench["runs"]["captioned"][0]["seconds_per_epoch"] > 0
    assert bench["data"]["text_source"] == "labels (synthetic)"

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
