"""DDP helpers that need no process group: how training rows are sharded and how --nproc re-launches."""

from __future__ import annotations

import torch

from retune.distributed.ddp import drop_option
from retune.training.process_group import Group


def test_shards_are_equal_cover_every_row_and_overlap_only_by_padding():
    rows = torch.arange(100, 111)  # 11 rows over 3 ranks: padded to 12
    shards = [Group(rank, 3, rank, "gloo").shard_rows(rows, seed=5) for rank in range(3)]
    assert [len(shard) for shard in shards] == [4, 4, 4]
    together = torch.cat(shards).tolist()
    assert set(together) == set(rows.tolist()) and len(together) - len(set(together)) == 1
    assert torch.equal(shards[1], Group(1, 3, 1, "gloo").shard_rows(rows, seed=5))  # every rank agrees without talking


def test_the_launcher_drops_its_own_option():
    argv = ["peft", "run", "--nproc", "2", "--out", "run", "--nproc=3", "--epochs", "1"]
    assert drop_option(argv, "--nproc") == ["peft", "run", "--out", "run", "--epochs", "1"]
