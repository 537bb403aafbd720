"""Vector index backends behind one small protocol, and the registry that names them.

A backend holds float32 L2-normalised vectors under int64 labels and answers nearest-neighbour
queries with ``distance = 1 - cosine similarity``. It knows nothing of SQLite, records or
models: the mixin keeps it current and decides when to rebuild it. ``exact.py`` holds the
brute-force top-k that the Annoy backend and the live index's delta share (numpy only).
"""

from __future__ import annotations

import importlib
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendUnavailableError


class VectorIndex(ABC):
    """An index built in bulk. ``can_add``: it takes adds in place now; ``can_remove``: it
    removes in place (and then adds too), so a delta can be folded into it without a rebuild."""

    name: ClassVar[str]
    can_add: ClassVar[bool] = False
    can_remove: ClassVar[bool] = False

    def __init__(self, dim: int) -> None:
        self.dim = dim

    @abstractmethod
    def build(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the contents with these (labels sorted ascending)."""

    def build_from(self, labels: np.ndarray, chunks: Iterable[np.ndarray]) -> None:
        """``build`` from the vectors in consecutive chunks (rows in ``labels``' order), so a
        rebuild of a large store never holds all of them twice; by default joined first."""
        parts = list(chunks)
        dim = self.dim
        self.build(labels, np.concatenate(parts) if parts else np.empty((0, dim), np.float32))

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        raise NotImplementedError(f"{self.name} cannot add after build")

    def remove(self, labels: np.ndarray) -> None:
        raise NotImplementedError(f"{self.name} cannot remove items")

    @abstractmethod
    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``k`` (labels, distances), best first."""

    @abstractmethod
    def save(self, path: str) -> None:
        """Write the index to exactly ``path`` (the caller makes it atomic)."""

    @abstractmethod
    def load(self, path: str, labels: np.ndarray) -> None:
        """Read an index written by ``save``; ``labels`` are the ones it holds, ascending."""

    @abstractmethod
    def __len__(self) -> int: ...

    def stored_items(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, vectors) as the index holds them, in any order: ``verify_index()`` compares
        them with SQLite, which catches a vector damaged inside the file."""
        raise NotImplementedError(f"{self.name} cannot read back its vectors")

    def vectors_of(self, labels: np.ndarray) -> np.ndarray | None:
        """The vectors of these labels (all held by the index), one row each, read in bulk:
        how a search within a small set of ids scores them exactly. None: not available."""
        return None

    @property
    def exact(self) -> bool:
        """True when search results equal a brute-force scan."""
        return False

    def params(self) -> dict[str, Any]:
        """Settings that change the file's content; a change means a rebuild."""
        return {}


def bounded_int(name: str, value: Any, low: int, high: int) -> int:
    """An int option within ``low..high``: options are checked when the store is constructed,
    not found out of range minutes into a build or at the first save."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (
        low <= value <= high
    ):
        raise ValueError(f"{name} must be an int from {low:,} to {high:,}, got {value!r}")
    return int(value)


_BACKENDS = {
    "annoy": ("embeddable_db.backends.annoy", "AnnoyVectorIndex", "annoy"),
    "faiss": ("embeddable_db.backends.faiss", "FaissVectorIndex", "faiss-cpu"),
}


def backend_names() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def get_backend(name: str) -> type[VectorIndex]:
    """The backend class for ``name``; a clear error for unknown names or missing libraries."""
    if not isinstance(name, str) or name not in _BACKENDS:
        raise BackendUnavailableError(
            f"unknown backend {name!r}: choose one of {', '.join(_BACKENDS)}"
        )
    module_name, class_name, package = _BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend {name!r} needs the {package!r} package, which is not installed "
            f"({exc}); install it with 'pip install {package}' or choose another backend"
        ) from exc
    return getattr(module, class_name)
