"""Content-keyed embedding store and the embedding job that fills it."""

from retune.store.embed import EmbedSummary, embed_table, hash_files, image_embeddings, text_embeddings
from retune.store.store import EmbeddingStore, purge_store, text_hash

__all__ = [
    "EmbedSummary",
    "EmbeddingStore",
    "embed_table",
    "hash_files",
    "image_embeddings",
    "purge_store",
    "text_embeddings",
    "text_hash",
]
