"""Frozen-model continual methods (simplecil, ranpac, gaussian, retune-prompt, retune-residual): what each promises, on
toy vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retune.config import AdaptorConfig, OptimConfig, ReTuneConfig
from retune.errors import ConfigError
from retune.evaluation import fast_mean_auroc
from retune.methods.base import MethodContext, PromptBank, TaskData
from retune.methods.checkpoint import load_checkpoint, save_checkpoint
from retune.methods.registry import create_method

DIM = 24
TEXT_DIM = 12
CLASSES = [f"class{i}" for i in range(4)]
STATISTICS_METHODS = ("simplecil", "ranpac", "gaussian")
CONFIG = ReTuneConfig(
    adaptor=AdaptorConfig(image="dense", text="dense", shared_dim=16, dropout=0.0),
    optim=OptimConfig(lr=1e-2, epochs=60, min_epochs=5, patience=60),
)


def context(seed: int = 0) -> MethodContext:
    rng = np.random.default_rng(99)
    bank = PromptBank({c: rng.normal(size=TEXT_DIM) for c in CLASSES}, {c: rng.normal(size=TEXT_DIM) for c in CLASSES})
    return MethodContext(DIM, TEXT_DIM, False, bank, fast_mean_auroc, seed)


def sample(n: int, seed: int, mask_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose label c shifts the embedding along direction c; a share of labels masked (NaN)."""
    rng = np.random.default_rng(seed)
    directions = np.random.default_rng(7).normal(size=(len(CLASSES), DIM))
    labels = (rng.random((n, len(CLASSES))) < 0.4).astype(np.float32)
    images = (rng.normal(size=(n, DIM)) + 1.5 * labels @ directions + 3.0).astype(np.float32)
    labels[rng.random(labels.shape) < mask_share] = np.nan
    return images, labels


def task(classes: list[str], seed: int, n: int = 120, mask_share: float = 0.0) -> TaskData:
    columns = [CLASSES.index(c) for c in classes]
    train_x, train_y = sample(n, seed, mask_share)
    val_x, val_y = sample(n // 3, seed + 1000, mask_share)
    return TaskData(tuple(classes), train_x, train_y[:, columns], val_x, val_y[:, columns])


@pytest.mark.parametrize("name", STATISTICS_METHODS + ("retune-prompt", "retune-residual"))
def test_learns_the_signal_and_reloads_identically(name, tmp_path):
    method = create_method(name, context(), CONFIG)
    method.learn(task(CLASSES[:2], seed=1))
    method.learn(task(CLASSES[2:], seed=2))
    test_x, test_y = sample(400, seed=3)
    scores = method.predict(test_x)
    assert scores.shape == (400, 4) and np.all((scores >= 0) & (scores <= 1))
    assert fast_mean_auroc(scores, test_y) > 0.8
    save_checkpoint(tmp_path, {name: method.state()}, {})
    tensors, facts = load_checkpoint(tmp_path)
    reloaded = create_method(name, context(), CONFIG)
    reloaded.load_state(tensors[name], facts["methods"][name])
    np.testing.assert_allclose(reloaded.predict(test_x), scores, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("name", "tolerance"), [("ranpac", 0.0), ("retune-residual", 0.0), ("retune-prompt", 1e-6)])
def test_earlier_classes_outputs_do_not_move_in_a_class_incremental_stream(name, tolerance):
    """No such method can change a class's scores once a task without that class is learned.

    RanPAC and retune-residual score each class with its own products, so bit for bit; retune-prompt up to float32
    rounding of batched products over more prompt rows (its parameters are compared exactly below).
    """
    method = create_method(name, context(), CONFIG)
    method.learn(task(CLASSES[:2], seed=1))
    test_x, _ = sample(200, seed=3)
    before = method.predict(test_x)
    method.learn(task(CLASSES[2:], seed=2))
    after = method.predict(test_x)
    np.testing.assert_allclose(after[:, :2], before, rtol=0, atol=tolerance)
    assert not np.allclose(after[:, 2:], 0.5)  # the new classes did learn something


def test_retune_prompt_trains_only_new_classes_offsets_after_the_first_task():
    method = create_method("retune-prompt", context(), CONFIG)
    method.learn(task(CLASSES[:2], seed=1))
    adaptors = {
        k: v.clone()
        for k, v in method.model.state_dict().items()
        if not k.startswith("offsets") and k not in ("positive", "negative")
    }
    method.learn(task(CLASSES[2:], seed=2))
    after = method.model.state_dict()
    assert all(np.array_equal(value.numpy(), after[key].numpy()) for key, value in adaptors.items())
    assert all(float(method.model.offsets[i].detach().abs().sum()) > 0 for i in (2, 3))


def test_retune_residual_trains_only_the_new_classes_parameters_and_beats_its_prompt_part():
    """After task 1 nothing shared moves and a later task trains only its own classes' offsets and residuals; on the
    toy problem the residual adds to the prompt score it starts from (retune-prompt is that prompt part alone)."""
    method = create_method("retune-residual", context(), CONFIG)
    method.learn(task(CLASSES[:2], seed=1))
    before = {key: value.clone() for key, value in method.model.state_dict().items()}
    method.learn(task(CLASSES[2:], seed=2))
    after = method.model.state_dict()
    own = {f"{kind}.{index}" for kind in ("offsets", "residuals") for index in (2, 3)}
    assert all(torch.equal(before[key], after[key]) for key in before if key not in ("positive", "negative"))
    assert all(float(after[key].abs().sum()) > 0 for key in own)
    test_x, test_y = sample(400, seed=3)
    prompt_only = create_method("retune-prompt", context(), CONFIG)
    prompt_only.learn(task(CLASSES[:2], seed=1))
    prompt_only.learn(task(CLASSES[2:], seed=2))
    residual_auroc = fast_mean_auroc(method.predict(test_x)[:, 2:], test_y[:, 2:])
    assert residual_auroc > fast_mean_auroc(prompt_only.predict(test_x)[:, 2:], test_y[:, 2:]) + 0.01


def test_retune_residual_refuses_contrastive_objectives():
    with pytest.raises(ConfigError, match="retune-residual trains with objective bce only"):
        create_method("retune-residual", context(), CONFIG.model_copy(update={"objective": "clip"}))


def test_ranpac_chunked_data_equal_the_joint_solution():
    """Data-incremental: two chunks give the same heads (ridge strengths included) as all rows in one task."""
    first, second = task(CLASSES, seed=1, mask_share=0.1), task(CLASSES, seed=2, mask_share=0.1)
    chunked = create_method("ranpac", context(), CONFIG)
    chunked.learn(first)
    chunked.learn(second)
    joint = create_method("ranpac", context(), CONFIG)
    joint.learn(
        TaskData(
            tuple(CLASSES),
            *(
                np.concatenate([getattr(first, f), getattr(second, f)])
                for f in ("train_x", "train_y", "val_x", "val_y")
            ),
        )
    )
    assert chunked.ridge == joint.ridge
    test_x, _ = sample(200, seed=3)
    np.testing.assert_allclose(
        chunked.predict(test_x), joint.predict(test_x), rtol=1e-5, atol=1e-8
    )  # float rounding of sums in another order


def test_ranpac_masked_labels_give_each_mask_its_own_gram():
    method = create_method("ranpac", context(), CONFIG)
    method.learn(task(CLASSES, seed=1, mask_share=0.2))
    assert len(method.train_sums.grams.groups(CLASSES)) == len(CLASSES)  # random masks differ per class
    method.learn(task(CLASSES[:2], seed=2))
    assert len(method.train_sums.grams.groups(CLASSES)) == len(CLASSES)


@pytest.mark.parametrize("name", STATISTICS_METHODS + ("retune-residual",))
@pytest.mark.parametrize("case", ["three_rows", "duplicates", "constant", "one_sided_labels"])
def test_degenerate_statistics_never_give_nan(name, case):
    """Few rows, duplicated or constant embeddings, a class without positives: regularised, finite scores."""
    images, labels = sample(30, seed=5)
    if case == "three_rows":
        images, labels = images[:3], labels[:3]
    elif case == "duplicates":
        images, labels = np.repeat(images[:2], 15, axis=0), np.repeat(labels[:2], 15, axis=0)
    elif case == "constant":
        images = np.ones_like(images)
    else:
        labels[:, 0] = 0.0
    method = create_method(name, context(), CONFIG)
    method.learn(TaskData(tuple(CLASSES), images, labels, images[:2], labels[:2]))
    scores = method.predict(sample(50, seed=6)[0])
    assert np.isfinite(scores).all()
