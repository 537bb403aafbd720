"""Which store class an embeddings table belongs to.

Two classes on one SQLite file that both kept the default ``embedding_table`` shared one vector
table and one pair of index files: each backfill overwrote the other's vectors and search
returned the other class's records. The table's ``<table>_meta`` therefore records an owner
name, and a class with another name is refused (``StoreConflictError``).

The owner is a class's ``__qualname__``, not its module: ``python app.py`` and ``import app``
name the same class ``__main__.NotesDB`` and ``app.NotesDB``, and moving a class to another
module must not orphan its store. The class that names it is the one defining
``iter_records()``, since that decides which records the vectors stand for: a subclass that
only changes options, an encoder or a helper method is the same store. A class renamed (or a
subclass with its own ``iter_records`` over the same records) sets ``embedding_owner`` to the
recorded name.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidInputError

MAX_OWNER_CHARS = 256


def store_owner(cls: type, mixin: type) -> str:
    """The owner name of store class ``cls`` (a subclass of ``mixin``): its ``embedding_owner``,
    else the qualified name of the nearest class defining ``iter_records``, else of its topmost
    store class."""
    explicit: Any = getattr(cls, "embedding_owner", None)
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit.strip() or len(explicit) > MAX_OWNER_CHARS:
            raise InvalidInputError(
                f"{cls.__qualname__}.embedding_owner must be a non-empty str of at most "
                f"{MAX_OWNER_CHARS} characters (the name of the class whose vectors the table "
                f"holds), got {explicit!r}"
            )
        return explicit
    for klass in cls.__mro__:
        if klass is mixin:
            break
        if "iter_records" in vars(klass):
            return klass.__qualname__
    stores = [k for k in cls.__mro__ if issubclass(k, mixin) and k is not mixin]
    return (stores[-1] if stores else cls).__qualname__
