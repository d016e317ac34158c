"""Dynamic batching with a stand-in scorer: concurrent images share one call, a bounded queue, errors stay local."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from retune.experiments.kinds import PixelScores
from retune.server.batching import DynamicBatcher, QueueFull


class RecordingScorer:
    """Scores each image by its first pixel and records the batch sizes it was called with."""

    def __init__(self, fail: bool = False) -> None:
        self.batch_sizes: list[int] = []
        self.fail = fail

    def __call__(self, images: list[torch.Tensor]) -> PixelScores:
        self.batch_sizes.append(len(images))
        if self.fail:
            raise RuntimeError("encoder exploded")
        return PixelScores(torch.stack(images)[:, :1, 0, 0].numpy().copy())


def run_concurrently(batcher: DynamicBatcher, n_requests: int) -> list[PixelScores]:
    async def main():
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit([torch.full((1, 2, 2), float(i))]) for i in range(n_requests))
            )
        finally:
            await batcher.stop()

    return [scores[0] for scores in asyncio.run(main())]


def test_concurrent_requests_share_encoder_batches_and_get_their_own_rows():
    scorer = RecordingScorer()
    results = run_concurrently(DynamicBatcher(scorer, window=0.05, max_batch=8, max_queue=64), 20)
    assert [float(r.probabilities[0]) for r in results] == list(range(20))
    assert sum(scorer.batch_sizes) == 20 and max(scorer.batch_sizes) == 8 and len(scorer.batch_sizes) == 3


def test_max_batch_one_scores_images_one_by_one():
    scorer = RecordingScorer()
    run_concurrently(DynamicBatcher(scorer, window=0.05, max_batch=1, max_queue=64), 5)
    assert scorer.batch_sizes == [1] * 5


def test_full_queue_refuses_at_once():
    async def main():
        batcher = DynamicBatcher(RecordingScorer(), window=0.0, max_batch=4, max_queue=3)
        batcher.start()
        try:
            with pytest.raises(QueueFull, match="limit 3"):
                await batcher.submit([torch.zeros(1, 2, 2)] * 4)
            return await batcher.submit([torch.zeros(1, 2, 2)] * 3)
        finally:
            await batcher.stop()

    assert len(asyncio.run(main())) == 3


def test_a_failing_batch_fails_its_requests_and_the_batcher_keeps_working():
    scorer = RecordingScorer(fail=True)

    async def main():
        batcher = DynamicBatcher(scorer, window=0.0, max_batch=4, max_queue=8)
        batcher.start()
        try:
            with pytest.raises(RuntimeError, match="exploded"):
                await batcher.submit([torch.zeros(1, 2, 2)])
            scorer.fail = False
            return await batcher.submit([torch.ones(1, 2, 2)])
        finally:
            await batcher.stop()

    assert np.asarray(asyncio.run(main())[0].probabilities).tolist() == [1.0]
