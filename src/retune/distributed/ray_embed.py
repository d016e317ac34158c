"""``retune embed --engine ray``: Ray Data decodes in CPU tasks and encodes in an actor pool of frozen encoders.

Only the middle of the embedding job moves to Ray. ``retune.store.embed.embed_table`` still hashes the files,
filters out what the store already holds (before anything is decoded), writes the shards, the manifest and the
error table, and holds the store's lock; this module supplies its ``encoder``: the same ``decode_image`` in Ray
tasks, the same ``encode_decoded`` in Ray actors. Shards are flushed by the driver as results stream back, so a
run killed at any moment resumes like a local one. Workers need the image paths (a shared filesystem on a
cluster); only the driver touches the store.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from retune.backbones.base import Backbone
from retune.data.images import DecodeLimits
from retune.data.pixels import pixel_shape
from retune.devices import keep_freed_memory_for_reuse
from retune.distributed.cluster import connect
from retune.store.embed import BatchEncoder, EncodedBatch, decode_image, encode_decoded
from retune.verbosity import third_party_output_shown


def preprocessor(backbone: Backbone) -> Backbone:
    """A shallow copy of ``backbone`` without its weighted torch modules (transforms, which are modules too, stay):
    it preprocesses like the original and is cheap to ship to every decode task (weights go to the encoder actors)."""
    light = copy.copy(backbone)
    for name, value in vars(backbone).items():
        if (
            isinstance(value, torch.nn.Module)
            and next(itertools.chain(value.parameters(), value.buffers()), None) is not None
        ):
            setattr(light, name, None)
    return light


def decode_batch(
    batch: dict[str, np.ndarray], preprocessing: Backbone, shape: tuple[int, ...], limits: DecodeLimits
) -> dict[str, np.ndarray]:
    """Ray task: decode a batch of (content_hash, path) rows; an unreadable image gets zero pixels and its reason."""
    decoded = [
        decode_image(str(key), str(path), preprocessing.preprocess, limits)
        for key, path in zip(batch["content_hash"], batch["path"])
    ]
    pixels = np.stack([np.zeros(shape, np.float32) if item[2] is None else item[2].numpy() for item in decoded])
    return {
        "content_hash": batch["content_hash"],
        "pixels": pixels,
        "reason": np.array([item[3] or "" for item in decoded], dtype=object),
    }


class EncoderActor:
    """Ray actor: one frozen copy of the backbone (weights from the object store), encoding decoded batches."""

    def __init__(self, backbone_ref: list, device: str, threads: int, tokens: bool, shape: tuple[int, ...]) -> None:
        import ray

        if device == "cpu":
            torch.set_num_threads(threads)
            keep_freed_memory_for_reuse()  # as the local engine: activations reused, not page-faulted in per call
        self.backbone = ray.get(backbone_ref[0]).to(device)
        self.tokens = tokens
        # rows of failed images need zero tokens of the right shape even in a batch where nothing decoded
        self.token_shape = (
            encode_decoded(self.backbone, [("", "", torch.zeros(shape), None)], True).tokens.shape[1:]
            if tokens
            else ()
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        failed = batch["reason"] != ""
        decoded = [
            (key, "", None if bad else torch.from_numpy(np.ascontiguousarray(pixels)), reason or None)
            for key, pixels, reason, bad in zip(batch["content_hash"], batch["pixels"], batch["reason"], failed)
        ]
        encoded = encode_decoded(self.backbone, decoded, self.tokens)
        rows = np.flatnonzero(~failed)
        pooled = np.zeros((len(failed), self.backbone.image_dim), np.float32)
        pooled[rows] = encoded.pooled
        result = {"content_hash": batch["content_hash"], "embedding": pooled, "reason": batch["reason"]}
        if self.tokens:
            result["tokens"] = np.zeros((len(failed), *self.token_shape), np.float32)
            result["tokens"][rows] = encoded.tokens
        return result


@contextmanager
def ray_data_quieted(context) -> Iterator[None]:
    """Ray Data's progress bars off (``embed_table`` shows one bar for the whole job) and, unless --verbose, its
    execution-plan, start and finish lines (its log file keeps them); each setting restored afterwards, so a Python
    process that goes on using Ray Data gets its own settings back."""
    consoles = [handler for handler in logging.getLogger("ray.data").handlers if handler.name == "console"]
    saved = context.enable_progress_bars, context.print_on_execution_start, [h.level for h in consoles]
    context.enable_progress_bars = False
    if not third_party_output_shown():
        context.print_on_execution_start = False
        for handler in consoles:
            handler.setLevel(logging.ERROR)
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start, levels = saved
        for handler, level in zip(consoles, levels):
            handler.setLevel(level)


def ray_encoder(address: str | None = None, actors: int | None = None) -> BatchEncoder:
    """An ``embed_table`` encoder that runs on Ray (joining ``address``, else a local instance) with ``actors``
    encoder actors: one GPU each when the cluster has GPUs (default: one per GPU), else CPU actors sharing half of
    the cluster's cores (default: one per 8 cores, at least one); decode tasks get the other half. The driver's
    backbone is moved to the CPU and shipped once through Ray's object store (the driver only hashes and writes)."""

    def encode(
        items: list[tuple[str, str]],
        backbone: Backbone,
        batch_size: int,
        workers: int | None,
        tokens: bool,
        limits: DecodeLimits,
    ) -> Iterator[EncodedBatch]:
        if not items:
            return
        ray = connect(address)
        with ray_data_quieted(ray.data.DataContext.get_current()):
            resources = ray.cluster_resources()
            cpus, gpus = resources.get("CPU", 1.0), int(resources.get("GPU", 0))
            pool = actors or (gpus if gpus else max(1, int(cpus) // 8))
            actor_cpus = 1.0 if gpus else max(0.25, cpus / 2 / pool)
            device = "cuda" if gpus else "cpu"
            rows = [{"content_hash": key, "path": path} for key, path in items]
            dataset = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch_size)))
            shape = pixel_shape(backbone)
            dataset = dataset.map_batches(
                decode_batch,
                batch_size=batch_size,
                num_cpus=min(1.0, cpus / 2),
                fn_kwargs={"preprocessing": preprocessor(backbone), "shape": shape, "limits": limits},
            )
            dataset = dataset.map_batches(
                EncoderActor,
                batch_size=batch_size,
                compute=ray.data.ActorPoolStrategy(size=pool),
                num_cpus=actor_cpus,
                num_gpus=1 if gpus else 0,
                fn_constructor_kwargs={
                    "backbone_ref": [ray.put(backbone.to("cpu"))],
                    "device": device,
                    "threads": max(1, int(actor_cpus)),
                    "tokens": tokens,
                    "shape": shape,
                },
            )
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                kept = batch["reason"] == ""
                keys = [str(key) for key in batch["content_hash"]]
                yield EncodedBatch(
                    keys=[key for key, keep in zip(keys, kept) if keep],
                    pooled=batch["embedding"][kept],
                    tokens=batch["tokens"][kept] if tokens else None,
                    failed=[(key, str(reason)) for key, reason, keep in zip(keys, batch["reason"], kept) if not keep],
                )

    return encode
