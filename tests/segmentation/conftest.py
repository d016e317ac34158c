"""One tiny segmentation run on mask phantoms, trained once per session for the end-to-end and server tests."""

from __future__ import annotations

import pytest

from retune.api import seg_train
from retune.backbones.families.default import DefaultBackbone
from retune.data.phantoms import write_mask_phantoms


@pytest.fixture(scope="session")
def phantom_run(tmp_path_factory):
    """(root, masks.csv, fpn run metrics, dense_features batch sizes of that run, those of a second run on the same
    store): 20 phantoms at 64 px, 6 epochs."""
    root = tmp_path_factory.mktemp("seg")
    csv = write_mask_phantoms(root / "data", n=20, size=64)
    config = {"data": {"csv": str(csv)}, "store": str(root / "store"), "image_size": 64, "width": 16,
              "optim": {"epochs": 6, "batch_size": 4, "lr": 3e-3}, "n_bootstrap": 20,
              "split": {"fractions": [0.6, 0.2, 0.2]}}
    calls = []
    original = DefaultBackbone.dense_features

    def counted(self, pixels):
        calls.append(len(pixels))
        return original(self, pixels)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DefaultBackbone, "dense_features", counted)
        metrics = seg_train(config, root / "run")
        first_calls = list(calls)
        calls.clear()
        seg_train({**config, "head": "linear", "baselines": ["predict_nothing"]}, root / "run-linear")
    return root, csv, metrics, first_calls, list(calls)
