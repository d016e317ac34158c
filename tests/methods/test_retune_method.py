"""RE-tune, the linear probe, adaptors, masked BCE and safetensors checkpoints on synthetic vectors (no backbone)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from toy_tasks import CLASSES, IMAGE_DIM, TEXT_DIM, config, context, mean_auroc, toy_data, toy_task

from retune.config import OptimConfig
from retune.errors import ConfigError, StoreError
from retune.losses import masked_bce, prompt_objective
from retune.methods.adaptors import make_adaptor
from retune.methods.base import TaskData
from retune.methods.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from retune.methods.linear_probe import LinearProbe
from retune.methods.registry import available_methods, create_method
from retune.methods.retune import ReTune


def test_retune_learns_separable_problem():
    """RE-tune reaches test AUROC > 0.9 on a linearly separable toy problem; probabilities lie in [0, 1]."""
    method = ReTune(context(), config())
    facts = method.learn(toy_task())
    test_x, test_y = toy_data(400, seed=3)
    scores = method.predict(test_x)
    assert scores.shape == (400, len(CLASSES))
    assert ((scores >= 0) & (scores <= 1)).all()
    assert mean_auroc(scores, test_y) > 0.9
    assert method.classes == list(CLASSES)
    assert facts["tau"] > 0 and facts["epochs_run"] >= 1


def seeded_predictions(seed: int, global_seed: int = 0, advance: int = 0, dropout: float = 0.0) -> np.ndarray:
    """Test-set predictions of RE-tune trained with context ``seed`` after the global torch RNG was seeded with
    ``global_seed`` and advanced by ``advance`` draws."""
    torch.manual_seed(global_seed)
    torch.rand(advance)
    method = ReTune(context(seed=seed), config(epochs=40, dropout=dropout))
    method.learn(toy_task())
    return method.predict(toy_data(50, seed=3)[0])


def test_retune_same_seed_same_predictions():
    """Two methods trained with the same seed from the same global RNG state predict identically."""
    np.testing.assert_array_equal(seeded_predictions(7, dropout=0.2), seeded_predictions(7, dropout=0.2))


def test_retune_seed_independent_of_global_rng():
    """Same context seed gives identical predictions even if the global torch RNG was advanced before creating the
    method."""
    np.testing.assert_array_equal(
        seeded_predictions(7, global_seed=123, advance=0), seeded_predictions(7, global_seed=123, advance=1000)
    )


def test_retune_different_seeds_differ():
    """Different seeds (same global RNG state) give different models: the seed really matters."""
    assert not np.array_equal(seeded_predictions(1, dropout=0.2), seeded_predictions(2, dropout=0.2))


def test_masked_bce_ignores_nan_labels():
    """masked_bce equals BCE over labelled entries; logits under NaN labels get no gradient."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=generator, requires_grad=True)
    labels = torch.tensor(
        [[1, 0, float("nan")], [0, float("nan"), 1], [1, 1, 0], [float("nan")] * 3, [0, 0, 0], [1, float("nan"), 0]]
    )
    loss = masked_bce(logits, labels)
    valid = ~torch.isnan(labels)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], labels[valid])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.all(logits.grad[~valid] == 0)
    assert torch.all(logits.grad[valid] != 0)
    changed = logits.detach().clone()
    changed[~valid] = 50.0
    torch.testing.assert_close(masked_bce(changed, labels), expected.detach())
    empty = masked_bce(logits, torch.full_like(labels, float("nan")))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_prompt_objectives_on_a_hand_worked_example():
    """bce is a 2-way softmax over a class's prompts; clip adds the prompt -> image softmax; siglip scores every
    pair."""
    pos, neg = torch.tensor([[0.9, 0.1], [0.2, 0.4]]), torch.tensor([[0.1, 0.3], [0.6, 0.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, float("nan")]])
    scale, bias = torch.tensor(10.0), torch.tensor(-1.0)
    two_way = torch.stack(
        [
            torch.nn.functional.cross_entropy(
                10 * torch.stack([pos[i, c], neg[i, c]])[None], torch.tensor([0 if labels[i, c] else 1])
            )
            for i, c in [(0, 0), (0, 1), (1, 0)]
        ]
    ).mean()
    torch.testing.assert_close(prompt_objective("bce", pos, neg, labels, scale, bias), two_way)
    # prompt -> image over the images labelled for that class:
    # p0+ matches image 0, p0- image 1, p1- image 0 (image 1 unlabelled)
    log_softmax = torch.log_softmax
    to_image = (
        -torch.stack([log_softmax(10 * pos[:, 0], 0)[0], log_softmax(10 * neg[:, 0], 0)[1], torch.tensor(0.0)]).sum()
        / 3
    )
    torch.testing.assert_close(prompt_objective("clip", pos, neg, labels, scale, bias), (two_way + to_image) / 2)
    logsig = torch.nn.functional.logsigmoid
    pairs = [
        (10 * pos[0, 0] - 1, 1),
        (10 * neg[0, 0] - 1, -1),
        (10 * pos[0, 1] - 1, -1),
        (10 * neg[0, 1] - 1, 1),
        (10 * pos[1, 0] - 1, -1),
        (10 * neg[1, 0] - 1, 1),
    ]
    siglip = -sum(logsig(sign * logit) for logit, sign in pairs) / 2
    torch.testing.assert_close(prompt_objective("siglip", pos, neg, labels, scale, bias), siglip)
    with pytest.raises(ValueError, match="bce, clip, siglip"):
        prompt_objective("triplet", pos, neg, labels, scale, bias)


@pytest.mark.parametrize("objective", ["clip", "siglip"])
def test_retune_learns_with_contrastive_objectives(objective):
    """The contrastive objectives train RE-tune to the same quality on the separable toy problem; siglip learns its
    bias."""
    method = ReTune(context(), config().model_copy(update={"objective": objective}))
    method.learn(toy_task())
    test_x, test_y = toy_data(400, seed=3)
    assert mean_auroc(method.predict(test_x), test_y) > 0.9
    bias = float(method.model.logit_bias.detach())
    assert (bias != 0.0) == (objective == "siglip")


@pytest.mark.parametrize("objective", ["bce", "clip", "siglip"])
def test_masked_rows_do_not_change_training(objective):
    """Adding rows whose labels are all NaN (with arbitrary vectors) leaves the trained RE-tune model unchanged."""
    task = toy_task()
    junk_x = np.random.default_rng(9).normal(scale=5.0, size=(60, IMAGE_DIM)).astype(np.float32)
    junk_y = np.full((60, len(CLASSES)), np.nan, dtype=np.float32)
    padded = TaskData(
        CLASSES, np.concatenate([task.train_x, junk_x]), np.concatenate([task.train_y, junk_y]), task.val_x, task.val_y
    )
    test_x, _ = toy_data(50, seed=3)
    runs = []
    for data in (task, padded):
        torch.manual_seed(0)
        method = ReTune(context(), config(epochs=40).model_copy(update={"objective": objective}))
        method.learn(data)
        runs.append(method.predict(test_x))
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-4, atol=1e-5)


def test_adaptors_map_different_widths():
    """Dense and mlp adaptors bridge 1280-d images and 384-d texts; the model trains and predicts."""
    rng = np.random.default_rng(0)
    train_x = rng.normal(size=(40, 1280)).astype(np.float32)
    train_y = (rng.random((40, len(CLASSES))) < 0.5).astype(np.float32)
    for image, text in (("dense", "dense"), ("mlp", "dense"), ("dense", "mlp"), ("identity", "dense")):
        method = ReTune(context(1280, 384), config(epochs=3, image=image, text=text))
        method.learn(TaskData(CLASSES, train_x, train_y))
        assert method.predict(train_x[:5]).shape == (5, len(CLASSES))
        image_out = method.model.image_adaptor(torch.zeros(1, 1280)).shape[-1]
        text_out = method.model.text_adaptor(torch.zeros(1, 384)).shape[-1]
        assert image_out == text_out == (1280 if image == "identity" else 256)


def test_identity_adaptors_when_widths_match():
    """Identity on both sides works when image and text widths match (and learns the toy problem)."""
    method = ReTune(context(TEXT_DIM, TEXT_DIM), config(image="identity", text="identity"))
    x, y = toy_data(300, image_dim=TEXT_DIM, seed=1)
    method.learn(TaskData(CLASSES, x, y))
    assert isinstance(method.model.image_adaptor, torch.nn.Identity)
    test_x, test_y = toy_data(300, image_dim=TEXT_DIM, seed=3)
    assert mean_auroc(method.predict(test_x), test_y) > 0.6


def test_identity_adaptor_with_mismatched_widths_raises():
    """Identity adaptors cannot bridge 1280 and 384: ConfigError, from make_adaptor and from ReTune."""
    with pytest.raises(ConfigError, match="identity"):
        make_adaptor("identity", 1280, 384)
    with pytest.raises(ConfigError, match="1280"):
        ReTune(context(1280, 384), config(image="identity", text="identity"))


def test_unknown_adaptor_kind_lists_valid_ones():
    """An unknown adaptor kind is a ConfigError naming the valid kinds."""
    with pytest.raises(ConfigError) as error:
        make_adaptor("transformer", 8, 8)
    assert all(kind in str(error.value) for kind in ("identity", "dense", "mlp"))


def trained_pair(n_train: int = 300) -> tuple[ReTune, LinearProbe]:
    task = toy_task(n_train=n_train)
    retune = ReTune(context(), config(epochs=40))
    retune.learn(task)
    probe = LinearProbe(context(), config())
    probe.learn(task)
    return retune, probe


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    """save_checkpoint / load_checkpoint restore RE-tune and the linear probe exactly."""
    retune, probe = trained_pair()
    save_checkpoint(tmp_path, {"retune": retune.state(), "linear_probe": probe.state()}, {"note": "test"})
    tensors, facts = load_checkpoint(tmp_path)
    assert facts["note"] == "test" and set(facts["methods"]) == {"retune", "linear_probe"}
    test_x, _ = toy_data(64, seed=3)
    restored_retune = ReTune(context(), config(epochs=40))
    restored_retune.load_state(tensors["retune"], facts["methods"]["retune"])
    restored_probe = LinearProbe(context(), config())
    restored_probe.load_state(tensors["linear_probe"], facts["methods"]["linear_probe"])
    np.testing.assert_array_equal(restored_retune.predict(test_x), retune.predict(test_x))
    np.testing.assert_array_equal(restored_probe.predict(test_x), probe.predict(test_x))
    assert restored_retune.classes == list(CLASSES)


def test_checkpoint_from_before_the_siglip_bias_still_loads_but_a_missing_adaptor_does_not():
    """A RE-tune state without ``logit_bias`` (saved by an earlier version) loads with the bias at 0; other gaps are
    StoreError."""
    retune, _ = trained_pair()
    tensors, facts = retune.state()
    older = {name: value for name, value in tensors.items() if name != "logit_bias"}
    restored = ReTune(context(), config(epochs=40))
    restored.load_state(older, facts)
    test_x, _ = toy_data(64, seed=3)
    np.testing.assert_array_equal(restored.predict(test_x), retune.predict(test_x))
    broken = {name: value for name, value in tensors.items() if not name.startswith("image_adaptor")}
    with pytest.raises(StoreError, match="lacks tensor.*image_adaptor"):
        ReTune(context(), config(epochs=40)).load_state(broken, facts)


def test_checkpoint_holds_no_per_image_data(tmp_path):
    """Trained on 137 rows, no tensor in the safetensors file has a dimension of 137."""
    n_rows = 137
    retune, probe = trained_pair(n_train=n_rows)
    save_checkpoint(tmp_path, {"retune": retune.state(), "linear_probe": probe.state()}, {})
    flat = load_file(str(tmp_path / CHECKPOINT))
    assert flat, "checkpoint holds no tensors"
    shapes = {name: tensor.shape for name, tensor in flat.items()}
    assert not [name for name, shape in shapes.items() if n_rows in shape], shapes
    assert sum(tensor.size for tensor in flat.values()) > 0


class _Booby:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_checkpoint_refuses_pickles(tmp_path):
    """A folder holding only model.pt / a pickle is refused with 'pickled files are never loaded'; nothing is
    unpickled."""
    marker = tmp_path / "unpickled.txt"
    (tmp_path / "model.pt").write_bytes(pickle.dumps(_Booby(str(marker))))
    (tmp_path / "extra.pkl").write_bytes(pickle.dumps(_Booby(str(marker))))
    with pytest.raises(StoreError) as error:
        load_checkpoint(tmp_path)
    message = str(error.value)
    assert "pickled files are never loaded" in message and "model.pt" in message
    assert not marker.exists()


def test_load_checkpoint_corrupt_safetensors(tmp_path):
    """A corrupt checkpoint.safetensors is a StoreError naming the folder, not a crash."""
    import hashlib

    corrupt = b"\x00" * 20
    (tmp_path / CHECKPOINT).write_bytes(corrupt)  # its recorded hash matches: reading it is what fails
    digest = hashlib.sha256(corrupt).hexdigest()
    (tmp_path / "config.json").write_text(json.dumps({"methods": {}, "weights_sha256": digest}))
    with pytest.raises(StoreError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_zero_shot_needs_aligned_backbone():
    """create_method('zero_shot') on an unaligned context raises ConfigError; on an aligned one it works."""
    with pytest.raises(ConfigError, match="aligned"):
        create_method("zero_shot", context(aligned=False))
    method = create_method("zero_shot", context(TEXT_DIM, TEXT_DIM, aligned=True))
    method.learn(TaskData(CLASSES, *toy_data(10, image_dim=TEXT_DIM)))
    assert method.predict(toy_data(4, image_dim=TEXT_DIM)[0]).shape == (4, len(CLASSES))


def test_unknown_method_lists_valid_names():
    """An unknown method name is a ConfigError listing every registered method."""
    with pytest.raises(ConfigError) as error:
        create_method("retunez", context())
    message = str(error.value)
    assert "retunez" in message
    for name in available_methods():
        assert name in message
    assert {"retune", "linear_probe", "zero_shot"} <= set(available_methods())


def test_linear_probe_trains_and_predicts_probabilities():
    """LinearProbe learns the toy problem with C chosen on validation; outputs lie in [0, 1]."""
    probe = create_method("linear_probe", context())
    facts = probe.learn(toy_task())
    assert set(facts["C"]) == set(CLASSES)
    test_x, test_y = toy_data(400, seed=3)
    scores = probe.predict(test_x)
    assert scores.shape == (400, len(CLASSES))
    assert np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()
    assert mean_auroc(scores, test_y) > 0.9


def test_linear_probe_single_class_column_predicts_prevalence():
    """A class with only negatives in training gets a constant low probability instead of an error."""
    task = toy_task()
    train_y = task.train_y.copy()
    train_y[:, 1] = 0.0
    probe = LinearProbe(context(), config())
    facts = probe.learn(TaskData(CLASSES, task.train_x, train_y, task.val_x, task.val_y))
    assert facts["C"]["Effusion"] is None
    scores = probe.predict(toy_data(20, seed=3)[0])
    assert np.ptp(scores[:, 1]) == 0 and scores[0, 1] < 0.01


def test_zero_shot_confident_negative_without_overflow_warning():
    """A zero-shot image identical to the negative prompt gets probability ~0 without a numpy overflow warning."""
    import warnings

    method = create_method("zero_shot", context(TEXT_DIM, TEXT_DIM, aligned=True))
    negative = np.eye(TEXT_DIM, dtype=np.float32)[0]
    method.context.prompts.positive["Cardiomegaly"] = -negative
    method.context.prompts.negative["Cardiomegaly"] = negative
    method.learn(TaskData(("Cardiomegaly",), np.zeros((0, TEXT_DIM), np.float32), np.zeros((0, 1), np.float32)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probability = method.predict(negative[None, :])
    assert probability.shape == (1, 1) and probability[0, 0] < 1e-6


@pytest.mark.parametrize("batch_size", [0, 64])
def test_fit_reports_every_trained_row_to_the_progress_callback(batch_size):
    """progress(n) sums to epochs_run x rows, for full batch and minibatches alike."""
    from retune.training.loop import fit

    task = toy_task()
    model = torch.nn.Linear(IMAGE_DIM, len(CLASSES))
    seen = []
    result = fit(
        model,
        model.parameters(),
        lambda x, y: masked_bce(model(x), y),
        torch.as_tensor(task.train_x),
        torch.as_tensor(task.train_y),
        OptimConfig(epochs=7, batch_size=batch_size),
        progress=seen.append,
    )
    assert result.epochs_run == 7 and sum(seen) == 7 * len(task.train_x)
    assert len(seen) == 7 * (1 if batch_size == 0 else -(-len(task.train_x) // batch_size))


def test_early_stopping_on_validation_loss():
    """early_stopping: loss keeps the epoch with the lowest validation loss (reported as its negative) and still
    learns."""
    method = ReTune(context(), config(epochs=120, early_stopping="loss", min_epochs=5, patience=10))
    facts = method.learn(toy_task())
    assert facts["best_val_score"] < 0 and 5 <= facts["best_epoch"] <= facts["epochs_run"]
    test_x, test_y = toy_data(400, seed=3)
    assert mean_auroc(method.predict(test_x), test_y) > 0.9
