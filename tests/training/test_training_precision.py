"""Training-step speed work: block-shared dropout masks, bf16 autocast steps and the loop's gather."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from toy_tasks import config, context, mean_auroc, toy_data, toy_task

from retune.devices import bf16_supported, training_autocast
from retune.methods import torch_method
from retune.methods.adaptors import BlockDropout
from retune.methods.base import TaskData
from retune.methods.retune import ReTune, ReTuneModel
from retune.training.loop import fit


def test_block_dropout_small_batches_draw_what_nn_dropout_draws():
    """Under 2 * MIN_MASKS rows every row has its own mask: the very numbers nn.Dropout gives for one seed."""
    features = torch.randn(2 * BlockDropout.MIN_MASKS - 1, 24)
    torch.manual_seed(3)
    expected = nn.Dropout(0.3).train()(features)
    torch.manual_seed(3)
    assert torch.equal(BlockDropout(0.3).train()(features), expected)


@pytest.mark.slow  # seconds of work: make test and CI run it, make test-fast does not
def test_block_dropout_large_batches_share_masks_within_blocks_and_stay_unbiased():
    """At batch 4096 rows share masks in blocks of 8 (so 512 masks), each entry kept with probability 1 - p
    and scaled by 1 / (1 - p): the mean over many draws is the input. A ragged tail gets a mask of its own."""
    rows, width, p = 4096 + 3, 64, 0.5
    layer = BlockDropout(p).train()
    torch.manual_seed(0)
    draws = torch.stack([layer(torch.ones(rows, width)) for _ in range(200)])
    blocks = draws[:, :4096].reshape(200, 512, 8, width)
    assert torch.equal(blocks, blocks[:, :, :1].expand_as(blocks))
    assert not torch.equal(blocks[:, 0, 0], blocks[:, 1, 0])
    assert set(draws.unique().tolist()) == {0.0, 2.0}
    assert draws.mean().item() == pytest.approx(1.0, abs=0.01)
    kept_per_row = (draws[:, :4096] > 0).float().mean(dim=(0, 2))
    assert kept_per_row.min() > 0.4 and kept_per_row.max() < 0.6
    tail = draws[:, 4096:]
    assert torch.equal(tail, tail[:, :1].expand_as(tail))


def test_block_dropout_is_the_identity_in_eval_mode():
    features = torch.randn(5000, 8)
    assert torch.equal(BlockDropout(0.5).eval()(features), features)


def test_precision_fp32_adds_no_autocast_and_bf16_casts_matmuls():
    layer = nn.Linear(4, 3)
    with training_autocast(torch.device("cpu"), "fp32"):
        assert layer(torch.randn(2, 4)).dtype == torch.float32
    with training_autocast(torch.device("cpu"), "bf16"):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with training_autocast(torch.device("cpu"), "auto"):
        expected = torch.bfloat16 if bf16_supported(torch.device("cpu")) else torch.float32
        assert layer(torch.randn(2, 4)).dtype == expected


def test_retune_similarities_stay_fp32_under_bf16_autocast():
    """Only the adaptors run in bf16: cosine similarities (and so the logits) are computed in fp32."""
    model = ReTuneModel(32, 16, config())
    model.add_prompts(np.random.default_rng(0).normal(size=(2, 16)), np.random.default_rng(1).normal(size=(2, 16)))
    images = torch.randn(6, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, model(images), atol=0.2)


def test_bf16_training_learns_like_fp32():
    """Same seeds, same toy task: bf16 steps reach the fp32 test AUROC within 0.02 and keep fp32 weights."""
    test_x, test_y = toy_data(400, seed=3)
    aurocs = {}
    for precision in ("fp32", "bf16"):
        method = ReTune(context(), config(epochs=60, precision=precision, batch_size=64))
        method.learn(toy_task())
        assert all(p.dtype == torch.float32 for p in method.model.parameters())
        aurocs[precision] = mean_auroc(method.predict(test_x), test_y)
    assert aurocs["fp32"] > 0.9
    assert aurocs["bf16"] == pytest.approx(aurocs["fp32"], abs=0.02)



def test_a_float16_training_matrix_trains_without_a_float32_copy_and_like_float32(monkeypatch):
    """A float16 matrix (``read_vectors(dtype=np.float16)``) reaches ``fit`` as it is (same memory, no float32
    copy) and each batch is widened: same seeds give the float32 matrix's test AUROC within 0.02."""
    task = toy_task()
    test_x, test_y = toy_data(400, seed=3)
    seen = []

    def recording_fit(module, parameters, loss_fn, train_x, *args, **kwargs):
        seen.append((train_x.dtype, train_x.data_ptr()))
        return fit(module, parameters, loss_fn, train_x, *args, **kwargs)

    monkeypatch.setattr(torch_method, "fit", recording_fit)
    aurocs = {}
    for dtype in (np.float32, np.float16):
        method = ReTune(context(), config(epochs=60, precision="bf16", batch_size=64))
        train_x = task.train_x.astype(dtype)
        method.learn(TaskData(task.classes, train_x, task.train_y, task.val_x, task.val_y))
        aurocs[dtype] = mean_auroc(method.predict(test_x), test_y)
    assert seen[-1] == (torch.float16, train_x.ctypes.data)
    assert aurocs[np.float16] == pytest.approx(aurocs[np.float32], abs=0.02)
