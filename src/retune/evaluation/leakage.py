"""The leakage guard: does an evaluation set contain images the run was trained or validated on (by content)?

A run records ``training_digests.json``: a random per-run salt and, for every training and validation
image, the first 16 hex digits of SHA-256(salt + the image's content hash). Nothing else: no paths, no
labels, no embeddings. Evaluation hashes its images the same way and counts matches, so a copy of a
training image under another name or folder is still caught.

Privacy trade-off: the salt makes the digests useless for joining runs with each other or with public
hash lists, but whoever holds both the run directory and an image can test whether that image was in
training (membership). That is the price of the check; delete ``training_digests.json`` before sharing a
run outside the institution (the guard then says it cannot check). The alternative, re-reading the
training CSV, needs the CSV and its images at evaluation time and misses renamed copies.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from retune.data.images import file_content_hash
from retune.errors import DataError
from retune.io_utils import read_json, write_json_atomic

DIGESTS_FILE = "training_digests.json"
_DIGEST_HEX = 16  # 64 bits: a chance collision among a million images is ~3e-8


def _digest(salt: str, content_hash: str) -> str:
    return hashlib.sha256(f"{salt}:{content_hash}".encode()).hexdigest()[:_DIGEST_HEX]


def write_training_digests(run_dir: str | Path, content_hashes: Iterable[str]) -> int:
    """Record salted digests of the run's training and validation images; returns how many distinct images."""
    salt = secrets.token_hex(16)
    digests = sorted({_digest(salt, value) for value in content_hashes})
    write_json_atomic(
        Path(run_dir) / DIGESTS_FILE,
        {
            "about": "salted SHA-256 digests of the training and validation images' content (leakage guard only)",
            "salt": salt,
            "digests": digests,
        },
    )
    return len(digests)


def file_hashes(paths: list[str]) -> list[str | None]:
    """Content hash of each file (None for an unreadable one), read without touching any store."""
    hashes = []
    for path in paths:
        try:
            hashes.append(file_content_hash(path))
        except DataError:  # unreadable files are reported by the scorer; here they simply cannot overlap
            hashes.append(None)
    return hashes


def overlapping_rows(run_dir: str | Path, content_hashes: list[str | None]) -> np.ndarray | None:
    """Boolean mask of the rows whose image the run trained or validated on; None when the run has no digests."""
    path = Path(run_dir) / DIGESTS_FILE
    if not path.exists():
        return None
    recorded = read_json(path)
    digests, salt = (recorded.get("digests"), recorded.get("salt")) if isinstance(recorded, dict) else (None, None)
    if not isinstance(digests, list) or not isinstance(salt, str) or not all(isinstance(d, str) for d in digests):
        raise DataError(f"{path}: malformed (expected a salt string and a list of digest strings)")
    known = set(digests)
    return np.array([value is not None and _digest(salt, value) in known for value in content_hashes], dtype=bool)


def overlap_warning(n_overlap: int, n_images: int, excluded: bool) -> str:
    """The loud line a user sees when evaluation images overlap the run's training or validation images."""
    action = (
        "they were EXCLUDED from the metrics"
        if excluded
        else "metrics are OPTIMISTIC; rerun with --exclude-overlap to drop them"
    )
    return (
        f"LEAKAGE: {n_overlap} of {n_images} evaluation images are (by content) training or validation images "
        "of this run; "
        f"{action}"
    )
