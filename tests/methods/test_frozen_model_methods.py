"""Frozen-model continual methods (simplecil, ranpac, gaussian, retune-prompt, retune-residual): what each promises, on
toy vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retune.config import AdaptorConfig, OptimConfig, ReTuneConfig
from retune.errors import ConfigError, StoreError
from retune.evaluation import fast_mean_auroc
from retune.methods import ranpac
from retune.methods.base import MethodContext, PromptBank, TaskData
from retune.methods.checkpoint import load_checkpoint, save_checkpoint
from retune.methods.registry import create_method
from retune.methods.statistics import unpack_symmetric

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


# SHA-256 of the seed-0 projection for 24-wide embeddings as RanPAC drew it before checkpoints stopped storing it
# (np.random.default_rng(0).standard_normal((24, 1024)).astype(np.float32), NumPy 2.4): a NumPy release that changed
# the stream would change every ranpac score, and fails here first.
SEED0_PROJECTION_SHA256 = "18e488528bd1336ae3c0671493eec761cb20cee0e6bbc5e76d6ce4b335071651"


@pytest.fixture
def narrow_ranpac(monkeypatch):
    """RanPAC with 128 random features instead of 1,024: the same code paths, 60x less linear algebra."""
    monkeypatch.setattr(ranpac, "PROJECTION_DIM", 128)


def test_ranpac_projection_is_the_one_earlier_versions_drew():
    assert ranpac.array_sha256(create_method("ranpac", context(), CONFIG).projection) == SEED0_PROJECTION_SHA256


def test_ranpac_regenerates_its_projection_from_the_seed_instead_of_storing_it(tmp_path, narrow_ranpac):
    method = create_method("ranpac", context(seed=3), CONFIG)
    method.learn(task(CLASSES, seed=1))
    tensors, facts = method.state()
    assert not any(DIM in value.shape for value in tensors.values())  # no image-width tensor: no projection
    save_checkpoint(tmp_path, {"ranpac": (tensors, facts)}, {})
    loaded, loaded_facts = load_checkpoint(tmp_path)
    reloaded = create_method("ranpac", context(seed=5), CONFIG)
    reloaded.load_state(loaded["ranpac"], loaded_facts["methods"]["ranpac"])
    np.testing.assert_array_equal(reloaded.projection, method.projection)


def test_ranpac_refuses_a_projection_that_regenerates_differently(narrow_ranpac):
    method = create_method("ranpac", context(), CONFIG)
    method.learn(task(CLASSES, seed=1))
    tensors, facts = method.state()
    facts["projection"] = {**facts["projection"], "sha256": "0" * 64}
    with pytest.raises(StoreError, match="regenerated from seed 0 differs"):
        create_method("ranpac", context(), CONFIG).load_state(tensors, facts)


def test_ranpac_checkpoint_stores_each_gram_once_as_a_triangle(tmp_path, narrow_ranpac):
    """Two tasks on different rows: two train and two validation Gram matrices, each n(n+1)/2 float64 values."""
    method = create_method("ranpac", context(), CONFIG)
    method.learn(task(CLASSES[:2], seed=1))
    method.learn(task(CLASSES[2:], seed=2))
    save_checkpoint(tmp_path, {"ranpac": method.state()}, {})
    width = ranpac.PROJECTION_DIM + 1
    grams = 4 * width * (width + 1) // 2 * 8
    assert (tmp_path / "checkpoint.safetensors").stat().st_size < grams + 20_000  # heads and cross sums are small


@pytest.mark.parametrize("name", ["ranpac", "gaussian"])
def test_checkpoints_saved_before_packing_still_load(name, narrow_ranpac):
    """Older checkpoints (square Gram / second-moment matrices, the projection stored) still load and predict."""
    test_x, _ = sample(100, seed=3)
    method = create_method(name, context(), CONFIG)
    method.learn(task(CLASSES, seed=1))
    tensors, facts = method.state()
    square = {
        key: unpack_symmetric(value) if "gram." in key or key == "second_moment" else value
        for key, value in tensors.items()
    }
    if name == "ranpac":
        square["projection"] = method.projection
        facts = {key: value for key, value in facts.items() if key != "projection"}
    older = create_method(name, context(), CONFIG)
    older.load_state(square, facts)
    np.testing.assert_array_equal(older.predict(test_x), method.predict(test_x))
