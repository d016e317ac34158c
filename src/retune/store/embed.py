"""The embedding job: every image through the frozen encoders once per backbone, ever.

Images are keyed by content hash, so renamed or duplicated files are not re-encoded; file hashes are themselves
cached by (path, size, mtime). Decoding runs in DataLoader workers, which on CPU also encode (one thread each)
unless decoding and encoding in turn here measures faster; on a GPU this process encodes whole batches (under
autocast on CUDA). Results are flushed in shards (every ``shard_size`` images or ``flush_seconds``, whichever
comes first), so a killed run resumes where it stopped and loses at most about ``flush_seconds`` of encoding.
Only regular files within ``DecodeLimits`` are read; every other row is recorded with its reason. Embedding on CPU
sets glibc's allocator to keep freed memory for reuse, for the rest of the process
(``retune.devices.keep_freed_memory_for_reuse``).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from retune.backbones.base import Backbone, Encoded
from retune.data.images import DEFAULT_LIMITS, DecodeLimits, file_content_hash, load_image
from retune.data.readers import missing_images_hint
from retune.data.table import ImageTable
from retune.devices import keep_freed_memory_for_reuse, usable_cores
from retune.errors import RetuneError, StoreError
from retune.io_utils import atomic_path
from retune.progress import progress_bar
from retune.store.store import EmbeddingStore, text_hash

CPU_ENCODE_CHUNK = 4
CALIBRATE_FROM = 256  # images in a CPU job from which the plan is chosen by measuring
PIPELINES_MARGIN = 1.1  # how much faster one-thread pipelines must look on the probe to be chosen
LOG = logging.getLogger(__name__)
FLUSH_SECONDS = 30.0



@dataclass
class EmbedSummary:
    """What one embedding run did; ``errors`` lists unreadable images with the reason."""

    n_rows: int
    n_unique_images: int
    n_cached: int
    n_computed: int
    seconds: float
    errors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))
    errors_file: Path | None = None

    @property
    def images_per_second(self) -> float:
        return self.n_computed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """One-line summary for the terminal."""
        text = (
            f"{self.n_rows} rows, {self.n_unique_images} unique images: {self.n_cached} cached, "
            f"{self.n_computed} computed ({self.images_per_second:.1f} images/s), {len(self.errors)} failed"
        )
        if self.errors_file is not None:
            text += f" (see {self.errors_file})"
        return text


def decode_image(
    content_hash: str, path: str, preprocess: Callable, limits: DecodeLimits = DEFAULT_LIMITS
) -> tuple[str, str, torch.Tensor | None, str | None]:
    """Decode and preprocess one image; a failure comes back as a reason, not a crash (shared by every engine)."""
    try:
        return content_hash, path, preprocess(load_image(path, limits)), None
    except RetuneError as error:
        return content_hash, path, None, str(error).removeprefix(f"{path}: ")
    except Exception as error:  # a decoder bug on one odd file must not stop the run
        return content_hash, path, None, f"{type(error).__name__}: {error}"


class _DecodeDataset(Dataset):
    """Decodes and preprocesses images in DataLoader workers."""

    def __init__(
        self, items: list[tuple[str, str]], preprocess: Callable, limits: DecodeLimits = DEFAULT_LIMITS
    ) -> None:
        self.items = items
        self.preprocess = preprocess
        self.limits = limits

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[str, str, torch.Tensor | None, str | None]:
        return decode_image(*self.items[index], self.preprocess, self.limits)


def _collate(batch: list) -> list:
    return batch


def _reuse_freed_memory_in_worker(_worker_id: int) -> None:
    """A worker started by spawn or forkserver (Python 3.14's default on Linux) does not inherit the parent's
    allocator setting: set it there too."""
    keep_freed_memory_for_reuse()


@dataclass
class EncodedBatch:
    """One batch back from an encoder: vectors of the images that decoded, reasons for those that did not."""

    keys: list[str]
    pooled: np.ndarray
    tokens: np.ndarray | None
    failed: list[tuple[str, str]]  # (content hash, reason)


# (items to do as (content hash, path), backbone, batch size, workers, tokens, limits) -> encoded batches, any order
BatchEncoder = Callable[
    [list[tuple[str, str]], Backbone, int, "int | None", bool, DecodeLimits], Iterator[EncodedBatch]
]


def hash_files(paths: list[str], store: EmbeddingStore, limits: DecodeLimits = DEFAULT_LIMITS,
                confine_to: Path | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Content hash per path (reusing the store's cache); also returns {path: reason} for unreadable files.

    With ``confine_to``, a path whose real location (symlinks followed) lies outside that folder is refused
    before it is read. Newly hashed files are added to the store's cache when the store is writable.
    """
    hashes, failures, fresh = _hash_paths(paths, store, limits, confine_to)
    store.record_file_hashes(fresh)
    return hashes, failures


def _hash_paths(paths: list[str], store: EmbeddingStore, limits: DecodeLimits,
                confine_to: Path | None) -> tuple[dict[str, str], dict[str, str], list[tuple[str, int, int, str]]]:
    """(hash per path, reason per failed path, newly hashed cache rows); writes nothing.

    Files the cache does not know are hashed in a thread per core (file reads and SHA-256 release the GIL), so
    hashing large DICOMs costs wall time divided by the cores, not their sum, before decoding starts."""
    cache = store.cached_file_hashes()
    root = str(confine_to).rstrip(os.sep) + os.sep if confine_to is not None else None
    failures: dict[str, str] = {}
    keys: dict[str, tuple[str, int, int]] = {}
    for path in dict.fromkeys(paths):
        if root is not None and not os.path.realpath(path).startswith(root):
            failures[path] = f"resolves outside the image root {confine_to} (a symlink or absolute path); not read"
            continue
        try:
            info = os.stat(path)
        except OSError as error:
            failures[path] = error.strerror or str(error)
            continue
        keys[path] = (path, info.st_size, info.st_mtime_ns)

    def content_hash(path: str) -> str | RetuneError:
        try:
            return file_content_hash(path, limits)
        except RetuneError as error:
            return error

    unknown = [path for path, key in keys.items() if key not in cache]
    fresh: list[tuple[str, int, int, str]] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="retune-hash") as pool:
        for path, digest in zip(unknown, pool.map(content_hash, unknown), strict=True):
            if isinstance(digest, RetuneError):
                failures[path] = str(digest).removeprefix(f"{path}: ")
                del keys[path]
            else:
                cache[keys[path]] = digest
                fresh.append((*keys[path], digest))
    hashes = {path: cache[key] for path, key in keys.items()}
    return hashes, failures, fresh


def encode_in_chunks(backbone: Backbone, pixels: torch.Tensor, tokens: bool) -> Encoded:
    """Encode a decoded batch; on CPU in chunks of ``CPU_ENCODE_CHUNK`` images, whose activations stay in cache
    (measured on 2 cores: faster per image than one batch of 32), on an accelerator in one call."""
    chunk = CPU_ENCODE_CHUNK if backbone.device.type == "cpu" else len(pixels)
    parts = [
        backbone.encode_images(pixels[start : start + chunk], tokens=tokens) for start in range(0, len(pixels), chunk)
    ]
    return Encoded(torch.cat([p.pooled for p in parts]), torch.cat([p.tokens for p in parts]) if tokens else None)


def default_workers() -> int:
    """DataLoader workers by default: one per usable core (at most 16); on CPU each decodes and encodes with one
    thread, unless the job's measured plan decodes and encodes in this process instead (``local_batches``)."""
    return min(16, usable_cores())


def encode_decoded(backbone: Backbone, decoded: list[tuple], tokens: bool) -> EncodedBatch:
    """Encode the images of a batch of ``decode_image`` results that decoded (shared by every engine)."""
    good = [item for item in decoded if item[2] is not None]
    failed = [(item[0], item[3]) for item in decoded if item[2] is None]
    if not good:
        return EncodedBatch([], np.zeros((0, backbone.image_dim), dtype=np.float32), None, failed)
    encoded = encode_in_chunks(backbone, torch.stack([item[2] for item in good]), tokens)
    token_matrix = encoded.tokens.float().cpu().numpy() if tokens else None
    return EncodedBatch([item[0] for item in good], encoded.pooled.float().cpu().numpy(), token_matrix, failed)


@dataclass(frozen=True)
class CpuCosts:
    """Milliseconds per image on the job's first images: decoding (in this process) and encoding with one torch
    thread and with every thread (wall time)."""

    decode_ms: float
    encode_one_thread_ms: float
    encode_all_threads_ms: float

    def __str__(self) -> str:
        return (f"per image: decoding {self.decode_ms:.1f} ms, encoding {self.encode_one_thread_ms:.1f} ms on one "
                f"thread, {self.encode_all_threads_ms:.1f} ms on all")

    def pipelines_win(self, pipelines: int) -> bool:
        """Whether ``pipelines`` one-thread decode-and-encode workers outrun decoding and encoding in turn here with
        every thread by ``PIPELINES_MARGIN``. They do when decoding is dear (large PNGs, DICOMs); with cheap
        decoding, one forward pass split over all cores can beat one per core, whose activations share less cache.
        The margin: the probe times one pipeline alone, while several at once share the cache and memory bandwidth
        (256 px PNGs on 2 cores: predicted equal, measured 124 vs 142 images/s)."""
        in_turn = 1 / (self.decode_ms + self.encode_all_threads_ms)
        return pipelines / (self.decode_ms + self.encode_one_thread_ms) > PIPELINES_MARGIN * in_turn


def measure_cpu_costs(
    probe: list[tuple[str, str]], backbone: Backbone, tokens: bool, limits: DecodeLimits
) -> tuple[CpuCosts | None, list[EncodedBatch]]:
    """Decode ``probe`` here and encode one half with every thread, the other with one: the costs (None if a half
    has no decodable image) and the batches, which are kept. Both halves are encoded once untimed with their
    thread counts before either is timed: in a fresh process the first setting timed would otherwise still pay
    for kernels set up (measured: every-thread encoding looked 20% dearer, and pipelines won where they lose).
    Two chunks suffice: the plans' speeds differ little where the measurement is close, and the probe runs on
    one core while the others wait."""
    started = time.perf_counter()
    decoded = [decode_image(*item, backbone.preprocess, limits) for item in probe]
    decode_ms = (time.perf_counter() - started) * 1000 / len(probe)
    threads = torch.get_num_threads()
    half = len(decoded) // 2
    halves = ((decoded[:half], threads), (decoded[half:], 1))
    batches, encode_ms = [], []
    try:
        for part, n_threads in halves + halves:
            torch.set_num_threads(n_threads)
            started = time.perf_counter()
            batches.append(encode_decoded(backbone, part, tokens))
            encode_ms.append((time.perf_counter() - started) * 1000 / max(1, len(batches[-1].keys)))
        batches, encode_ms = batches[len(halves):], encode_ms[len(halves):]  # the timed second round
    finally:
        torch.set_num_threads(threads)
    if not all(batch.keys for batch in batches):
        return None, batches
    return CpuCosts(decode_ms, encode_ms[1], encode_ms[0]), batches


def local_batches(
    items: list[tuple[str, str]], backbone: Backbone, batch_size: int, workers: int | None, tokens: bool,
    limits: DecodeLimits,
) -> Iterator[EncodedBatch]:
    """The local engine. On CUDA, DataLoader workers decode and this process encodes whole batches on the GPU.

    On CPU, one of two plans: each worker decodes and also encodes its own batches of ``CPU_ENCODE_CHUNK`` images
    with one torch thread (the DataLoader runs the collate function in the worker), so every core is a whole
    pipeline and no pixels cross processes; or, when decoding is cheap, this process decodes and encodes in turn
    with every thread. With ``workers=None`` a job of at least ``CALIBRATE_FROM`` images chooses by ``CpuCosts``
    measured on its first ``2 * CPU_ENCODE_CHUNK`` (logged at INFO); smaller jobs and an explicit ``workers > 0``
    take the first, ``workers=0`` the second. Either way glibc keeps freed activations for reuse, in this process
    and in every worker (``keep_freed_memory_for_reuse``).
    """
    chosen = workers is None
    workers = default_workers() if workers is None else workers
    on_cpu = backbone.device.type == "cpu"
    if on_cpu:
        keep_freed_memory_for_reuse()
        if chosen and workers and len(items) >= CALIBRATE_FROM:
            probe, items = items[: 2 * CPU_ENCODE_CHUNK], items[2 * CPU_ENCODE_CHUNK :]
            costs, batches = measure_cpu_costs(probe, backbone, tokens, limits)
            yield from batches
            if costs is not None and not costs.pipelines_win(min(workers, default_workers())):
                workers = 0
            LOG.info("CPU embedding plan: %s (%s)", f"{workers} one-thread pipelines" if workers else
                     "decode and encode in turn with every thread", costs)
    loader = DataLoader(
        _DecodeDataset(items, backbone.preprocess, limits),
        batch_size=min(batch_size, CPU_ENCODE_CHUNK) if on_cpu else batch_size,
        num_workers=workers,
        collate_fn=partial(encode_decoded, backbone, tokens=tokens) if on_cpu else _collate,
        pin_memory=backbone.device.type == "cuda",
        worker_init_fn=_reuse_freed_memory_in_worker if on_cpu else None,
    )
    batches = iter(loader)
    try:
        for batch in batches:
            yield batch if on_cpu else encode_decoded(backbone, batch, tokens)
    finally:  # also when the caller stops early (a worker died): the other workers and torch's SIGCHLD check go
        getattr(batches, "_shutdown_workers", lambda: None)()


def embed_table(
    table: ImageTable,
    backbone: Backbone,
    store: EmbeddingStore,
    batch_size: int = 32,
    workers: int | None = None,
    tokens: bool = False,
    shard_size: int = 512,
    show_progress: bool = True,
    limits: DecodeLimits = DEFAULT_LIMITS,
    flush_seconds: float = FLUSH_SECONDS,
    encoder: BatchEncoder | None = None,
) -> EmbedSummary:
    """Embed every image of ``table`` that the store lacks for this backbone; record failures.

    ``encoder`` turns the (content hash, path) pairs still to do into ``EncodedBatch``es: ``local_batches`` by
    default, or another engine's (``retune.distributed.ray_embed``); hashing, filtering and writing stay here.

    A table read with its paths confined (the default) has every path checked, symlinks followed, against its
    image root. Nothing is written (and no lock taken) when every image is already stored, so a read-only
    store serves fully cached tables. On CPU the local engine changes glibc's allocator settings for the rest of
    this process (``retune.devices.keep_freed_memory_for_reuse``: about twice the encoder's speed here).
    """
    started = time.perf_counter()
    fingerprint = backbone.fingerprint
    kinds = ["images", "tokens"] if tokens else ["images"]
    hashes, failures, fresh = _hash_paths(table.paths, store, limits, table.confined_root)
    todo = _missing(hashes, store, fingerprint, kinds)
    unique = set(hashes.values())
    computed = 0
    if not todo and not store.needs_backbone(backbone.describe()):
        store.record_file_hashes(fresh)
        todo_count = 0
    else:
        with store.lock():
            store.register_backbone(backbone.describe())
            store.record_file_hashes(fresh)
            todo = _missing(hashes, store, fingerprint, kinds)  # another writer may have stored some meanwhile
            todo_count = len(todo)
            computed = _embed_missing(todo, hashes, failures, backbone, store, kinds, batch_size, workers, shard_size,
                                      show_progress, limits, flush_seconds, encoder or local_batches)
    errors = pd.DataFrame(sorted(failures.items()), columns=["path", "reason"])
    summary = EmbedSummary(
        len(table), len(unique), len(unique) - todo_count, computed, time.perf_counter() - started, errors
    )
    if len(errors) and store.persistent:
        summary.errors_file = (
            store.root / "errors" / f"embed-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.csv"
        )
        try:
            with atomic_path(summary.errors_file) as temp:
                errors.to_csv(temp, index=False)
        except OSError:
            summary.errors_file = None  # a read-only store: the errors are still printed and returned
    return summary


def _missing(hashes: dict[str, str], store: EmbeddingStore, fingerprint: str, kinds: list[str]) -> dict[str, str]:
    """{content hash: first path} of the images the store lacks in any of ``kinds``."""
    stored = {kind: store.keys(kind, fingerprint) for kind in kinds}
    todo: dict[str, str] = {}
    for path, content_hash in hashes.items():
        if any(content_hash not in stored[kind] for kind in kinds):
            todo.setdefault(content_hash, path)
    return todo


def _worker_death(error: BaseException) -> str | None:
    """The reason when ``error`` is how a killed DataLoader worker surfaces in the main process, else None.

    torch raises RuntimeError naming the worker's pid (from the queue or from its SIGCHLD handler, at any point of
    the loop); a worker killed while handing over a batch can also surface as a reset connection. An exception
    raised inside a worker (an encoder's error, on CPU) is re-raised as "Caught ... in DataLoader worker process
    N": that is a failure of the job, not a death, and propagates."""
    if "in DataLoader worker process" in str(error):
        return None
    if isinstance(error, RuntimeError) and "DataLoader worker (pid" in str(error):
        return str(error).strip().splitlines()[0]
    if isinstance(error, (ConnectionError, EOFError)):
        return f"{type(error).__name__} while receiving a decoded batch"
    return None


def _embed_missing(todo: dict[str, str], hashes: dict[str, str], failures: dict[str, str], backbone: Backbone,
                   store: EmbeddingStore, kinds: list[str], batch_size: int, workers: int | None, shard_size: int,
                   show_progress: bool, limits: DecodeLimits, flush_seconds: float, encoder: BatchEncoder) -> int:
    """Decode, encode and store ``todo`` (under the store's lock); failures are added to ``failures``.

    Returns how many images were computed. An embedding worker that dies (the OOM killer's way) ends the job
    early with what was encoded so far stored and every image not yet done recorded, so a rerun resumes.
    """
    fingerprint = backbone.fingerprint
    tokens = "tokens" in kinds
    stored_images = store.keys("images", fingerprint)
    paths_of: dict[str, list[str]] = {}
    for path, content_hash in hashes.items():
        paths_of.setdefault(content_hash, []).append(path)
    pending: dict[str, list] = {"keys": [], "pooled": [], "tokens": []}
    computed = 0
    done: set[str] = set()
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        last_flush = time.monotonic()
        if not pending["keys"]:
            return
        pooled = np.concatenate(pending["pooled"])
        fresh = [row for row, key in enumerate(pending["keys"]) if key not in stored_images]
        if fresh:  # an image that only lacked tokens keeps its one pooled row
            store.write_vectors("images", fingerprint, [pending["keys"][row] for row in fresh], pooled[fresh])
        if tokens:
            token_matrix = np.concatenate(pending["tokens"])
            n_tokens = [token_matrix.shape[1]] * len(token_matrix)
            store.write_vectors("tokens", fingerprint, pending["keys"], token_matrix, n_tokens=n_tokens)
        for values in pending.values():
            values.clear()

    batches = encoder(list(todo.items()), backbone, batch_size, workers, tokens, limits)
    with progress_bar("embedding", total=len(todo), enabled=show_progress, unit="images") as advance:
        try:
            for batch in batches:
                if batch.keys:
                    pending["keys"].extend(batch.keys)
                    pending["pooled"].append(batch.pooled)
                    if tokens:
                        pending["tokens"].append(batch.tokens)
                    computed += len(batch.keys)
                done.update(batch.keys)
                for content_hash, reason in batch.failed:
                    done.add(content_hash)
                    failures.update(dict.fromkeys(paths_of[content_hash], reason))
                if len(pending["keys"]) >= shard_size or time.monotonic() - last_flush >= flush_seconds:
                    flush()
                advance(len(batch.keys) + len(batch.failed))
        except (RuntimeError, ConnectionError, EOFError) as error:
            death = _worker_death(error)
            if death is None:
                raise
            batches.close()  # stops the other workers; torch's SIGCHLD check goes with them
            reason = f"not embedded: an embedding worker died ({death}), e.g. killed for lack of memory; rerun"
            for content_hash in todo.keys() - done:
                failures.update(dict.fromkeys(paths_of[content_hash], reason))
        flush()
    return computed


def image_embeddings(table: ImageTable, fingerprint: str, store: EmbeddingStore) -> tuple[np.ndarray, np.ndarray]:
    """Pooled embeddings for the rows of ``table`` that are in the store, and those rows' positions.

    Rows whose image failed to embed are left out (their positions are absent from the result).
    """
    hashes, _ = hash_files(table.paths, store, confine_to=table.confined_root)
    stored = store.keys("images", fingerprint)
    rows = [row for row, path in enumerate(table.paths) if hashes.get(path) in stored]
    if not rows:
        raise StoreError(
            f"{store.root}: none of the {len(table)} images of {table.source} are embedded for backbone {fingerprint}"
            + missing_images_hint(table)
        )
    _, matrix = store.read_vectors("images", fingerprint, [hashes[table.paths[row]] for row in rows])
    return matrix, np.asarray(rows, dtype=int)


def text_embeddings(texts: list[str], backbone: Backbone, store: EmbeddingStore, batch_size: int = 64) -> np.ndarray:
    """Pooled text embeddings (rows match ``texts``), computing only texts the store lacks."""
    fingerprint = backbone.fingerprint
    keys = [text_hash(text) for text in texts]
    stored = store.keys("texts", fingerprint)
    missing = list(dict.fromkeys(text for text, key in zip(texts, keys) if key not in stored))
    if missing:
        store.register_backbone(backbone.describe())
        vectors = np.concatenate(
            [
                backbone.encode_texts(missing[start : start + batch_size]).pooled.float().cpu().numpy()
                for start in range(0, len(missing), batch_size)
            ]
        )
        store.write_vectors("texts", fingerprint, [text_hash(t) for t in missing], vectors, text=missing)
    return store.read_vectors("texts", fingerprint, keys)[1]


def text_token_embeddings(
    texts: list[str], backbone: Backbone, store: EmbeddingStore, max_tokens: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Text-tower token vectors (N x max_tokens x D, zero-padded) and their mask (N x max_tokens, True = real token).

    Only texts the store lacks are encoded, one at a time so that each text's token count is its own
    (encoders that always pad to a fixed length, like CLIP's 77, report that length). Longer texts keep
    their first ``max_tokens`` tokens. A store holds one ``max_tokens`` per backbone.
    """
    fingerprint = backbone.fingerprint
    shards = store.shards("text_tokens", fingerprint)
    if shards:
        stored_length = pq.read_table(shards[0], columns=["max_tokens"]).column("max_tokens")[0].as_py()
        if stored_length != max_tokens:
            raise StoreError(
                f"{store.root}: text tokens are stored padded to {stored_length} for backbone {fingerprint}, not "
                f"{max_tokens}; use max_tokens={stored_length} or another store"
            )
    keys = [text_hash(text) for text in texts]
    stored = store.keys("text_tokens", fingerprint)
    missing = list(dict.fromkeys(text for text, key in zip(texts, keys) if key not in stored))
    if missing:
        store.register_backbone(backbone.describe())
        padded, counts = [], []
        for text in missing:
            hidden = backbone.encode_texts([text], tokens=True).tokens[0, :max_tokens].float().cpu().numpy()
            row = np.zeros((max_tokens, hidden.shape[1]), dtype=np.float32)
            row[: len(hidden)] = hidden
            padded.append(row)
            counts.append(len(hidden))
        store.write_vectors(
            "text_tokens",
            fingerprint,
            [text_hash(t) for t in missing],
            np.stack(padded),
            n_tokens=counts,
            max_tokens=[max_tokens] * len(counts),
        )
    _, flat = store.read_vectors("text_tokens", fingerprint, keys)
    counts = store.read_column("text_tokens", fingerprint, "n_tokens", keys)
    tokens = flat.reshape(len(keys), max_tokens, -1)
    return tokens, np.arange(max_tokens)[None, :] < counts[:, None]
