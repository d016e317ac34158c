"""Class statistics that frozen-model continual methods accumulate instead of keeping images.

Each is a sum over rows (counts, sums of vectors, second-moment matrices): adding a task's rows
to the running sums gives exactly the sums over all rows seen, which is why a method built on
them behaves the same whether the data come in one task or in chunks. What they hold is
documented with each method; none stores a row.
"""

from __future__ import annotations

import numpy as np

from retune.errors import StoreError


def symmetric(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` with its lower triangle replaced by the upper one: exactly symmetric, so storing one triangle
    loses nothing (a product xᵀx is symmetric only up to rounding)."""
    upper = np.triu(matrix)
    return upper + np.triu(upper, 1).T


def pack_symmetric(matrix: np.ndarray) -> np.ndarray:
    """The upper triangle of a symmetric matrix, row by row: n(n+1)/2 values instead of n²."""
    return matrix[np.triu_indices(len(matrix))]


def unpack_symmetric(packed: np.ndarray) -> np.ndarray:
    """Inverse of ``pack_symmetric`` in float64; a square matrix (a checkpoint saved before packing) passes through."""
    packed = np.asarray(packed, dtype=np.float64)
    if packed.ndim == 2:
        return packed.copy()
    size = int(round((np.sqrt(8 * len(packed) + 1) - 1) / 2))
    if size * (size + 1) // 2 != len(packed):
        raise StoreError(f"a packed symmetric tensor of {len(packed)} values is not the triangle of a square matrix")
    matrix = np.zeros((size, size))
    matrix[np.triu_indices(size)] = packed
    return symmetric(matrix)


def masked_columns(labels: np.ndarray) -> list[tuple[np.ndarray, list[int]]]:
    """Group label columns by their mask: [(rows with a label, columns sharing exactly those rows)]."""
    known = ~np.isnan(labels)
    groups: dict[bytes, tuple[np.ndarray, list[int]]] = {}
    for column in range(labels.shape[1]):
        key = np.packbits(known[:, column]).tobytes()
        groups.setdefault(key, (np.flatnonzero(known[:, column]), []))[1].append(column)
    return list(groups.values())


class SharedGrams:
    """Per class, the sum of h hᵀ over the rows where that class was labelled, shared between classes with equal sums.

    Classes whose labelled rows have always been the same share one matrix (one per class-incremental
    task, one in all for data-incremental streams); an update that reaches only some of the classes
    sharing a matrix splits it (copy on write), so memory follows the number of distinct row sets.
    """

    def __init__(self) -> None:
        self.by_class: dict[str, np.ndarray] = {}

    def add(self, classes: list[str], gram: np.ndarray) -> None:
        """Add ``gram`` (the sum over one set of rows) to each of ``classes``' matrices."""
        gram = symmetric(gram)
        updated: dict[int, np.ndarray] = {}
        for name in classes:
            old = self.by_class.get(name)
            key = id(old) if old is not None else 0
            if key not in updated:
                updated[key] = gram.copy() if old is None else old + gram
            self.by_class[name] = updated[key]

    def groups(self, classes: list[str]) -> list[tuple[np.ndarray, list[str]]]:
        """[(matrix, classes sharing it)] for these classes, in first-appearance order."""
        found: dict[int, tuple[np.ndarray, list[str]]] = {}
        for name in classes:
            matrix = self.by_class[name]
            found.setdefault(id(matrix), (matrix, []))[1].append(name)
        return list(found.values())

    def state(self, prefix: str) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Tensors ``{prefix}{i}`` (each distinct matrix once, its upper triangle) and the class -> index map."""
        tensors, index = {}, {}
        for i, (matrix, names) in enumerate(self.groups(list(self.by_class))):
            tensors[f"{prefix}{i}"] = pack_symmetric(matrix)
            index.update(dict.fromkeys(names, i))
        return tensors, index

    def load(self, tensors: dict[str, np.ndarray], prefix: str, index: dict[str, int]) -> None:
        """Inverse of ``state``: classes that shared a matrix share it again."""
        matrices = {i: unpack_symmetric(tensors[f"{prefix}{i}"]) for i in set(index.values())}
        self.by_class = {name: matrices[i] for name, i in index.items()}


class LabelledSums:
    """Per class: labelled rows, Σ h·y and Σ y² over them (y ∈ {0, 1}, masked rows left out)."""

    def __init__(self) -> None:
        self.count: dict[str, float] = {}
        self.cross: dict[str, np.ndarray] = {}
        self.squares: dict[str, float] = {}
        self.grams = SharedGrams()

    def add(self, classes: tuple[str, ...] | list[str], features: np.ndarray, labels: np.ndarray) -> None:
        """Accumulate one task's rows: features (rows x M) in float64, labels (rows x classes, NaN = masked)."""
        for rows, columns in masked_columns(labels):
            if not len(rows):
                continue
            kept = features[rows]
            self.grams.add([classes[c] for c in columns], kept.T @ kept)
            for c in columns:
                name, y = classes[c], labels[rows, c].astype(np.float64)
                self.count[name] = self.count.get(name, 0.0) + len(rows)
                self.cross[name] = self.cross.get(name, 0.0) + kept.T @ y
                self.squares[name] = self.squares.get(name, 0.0) + float(y @ y)

    def has(self, name: str) -> bool:
        return self.count.get(name, 0.0) > 0

    def state(self, prefix: str) -> tuple[dict[str, np.ndarray], dict]:
        names = [n for n in self.count if self.has(n)]
        tensors, index = self.grams.state(prefix + "gram.")
        if names:
            tensors[prefix + "cross"] = np.stack([self.cross[n] for n in names])
        facts = {
            "classes": names,
            "gram_index": index,
            "count": [self.count[n] for n in names],
            "squares": [self.squares[n] for n in names],
        }
        return tensors, facts

    def load(self, tensors: dict[str, np.ndarray], prefix: str, facts: dict) -> None:
        names = facts["classes"]
        self.count = dict(zip(names, map(float, facts["count"])))
        self.squares = dict(zip(names, map(float, facts["squares"])))
        self.cross = dict(zip(names, np.array(tensors[prefix + "cross"], dtype=np.float64))) if names else {}
        self.grams.load(tensors, prefix + "gram.", facts["gram_index"])
