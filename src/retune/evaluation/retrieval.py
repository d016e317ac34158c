"""Retrieval metrics: Recall@K for a similarity matrix, and image<->text R@K over unique texts (repeated texts
allowed)."""

from __future__ import annotations

import numpy as np


def recall_at_k(
    similarity: np.ndarray, ks: tuple[int, ...] = (1, 5, 10), positives: np.ndarray | None = None
) -> dict[str, float]:
    """Share of queries whose correct candidate is in the top k (ties counted against the query, so constant scores
    earn nothing).

    ``similarity`` is queries x candidates; query i's correct candidate is ``positives[i]`` (default i).
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim != 2 or not np.isfinite(similarity).all():
        raise ValueError("similarity must be a finite 2-D array (queries x candidates)")
    n_queries, n_candidates = similarity.shape
    positives = np.arange(n_queries) if positives is None else np.asarray(positives, dtype=int)
    if positives.shape != (n_queries,) or (positives < 0).any() or (positives >= n_candidates).any():
        raise ValueError("positives must give one candidate index per query, within range")
    correct = similarity[np.arange(n_queries), positives][:, None]
    rank = (similarity >= correct).sum(axis=1)  # 1-based rank, ties placed above the correct candidate
    return {f"R@{k}": float((rank <= k).mean()) for k in ks}


def retrieval_metrics(
    image: np.ndarray, text: np.ndarray, text_index: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)
) -> dict:
    """Image->text and text->image R@K over unique texts; a text query is right if any of its images is in the top
    k."""
    similarity = np.asarray(image, dtype=np.float64) @ np.asarray(text, dtype=np.float64).T  # N x U
    used = np.unique(text_index)  # texts without an image in this split are neither candidates nor queries
    similarity = similarity[:, used]
    column = np.searchsorted(used, text_index)
    text_to_image = similarity.T.copy()
    owners = column[None, :] == np.arange(len(used))[:, None]  # U' x N: image n belongs to text u
    best = np.where(owners, text_to_image, -np.inf).argmax(axis=1)
    floor = text_to_image.min() - 1.0
    text_to_image[owners & (np.arange(len(image))[None, :] != best[:, None])] = floor  # other own images never outrank
    i2t = recall_at_k(similarity, ks, column)
    t2i = recall_at_k(text_to_image, ks, best)
    return {
        "image_to_text": i2t,
        "text_to_image": t2i,
        "mean_recall": float(np.mean([*i2t.values(), *t2i.values()])),
        "n_images": int(len(image)),
        "n_texts": int(len(used)),
    }
