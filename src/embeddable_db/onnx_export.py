"""Exporting :mod:`onnx_encoder`'s model to ONNX, and the integrity records of the exports.

Apart from ``onnx_encoder.py`` so that module holds only what runs an existing file: this one
holds the only code that imports torch (:func:`export_onnx`, lazily) and the records that say
whether a cached file is a genuine export. It imports ``onnx_encoder`` for the locations, model
identity and metadata keys, which are the runtime's; ``onnx_encoder`` imports it back only when
a file must be checked or made, so importing the runtime never loads this module.

The cache path is predictable, so nothing in it is believed unchecked: each export writes an
integrity record beside it (``<file>.sha256.json``: the sha256 of the graph and of its weights,
and of the model files it was made from, tokenizer included). A cached file whose record is
missing or does not match is exported again, with a warning (:func:`_ensure_trusted_export`).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

if __package__:
    from . import onnx_encoder as runtime
else:  # stand-alone: beside onnx_encoder.py, which loads this file (see its _export_module)
    import onnx_encoder as runtime

__all__ = ["check_export", "export_onnx", "integrity_path"]

#: The encoder's logger, as before the split: its level still governs the re-export warning.
log = runtime.log

#: Bump when the integrity record (``<export>.sha256.json``) changes shape.
INTEGRITY_FORMAT = 1
INTEGRITY_SUFFIX = ".sha256.json"
#: Seconds to wait for another process's export of the same cache file.
EXPORT_LOCK_TIMEOUT = 900.0
#: Cosine the exported graph must reach against torch on the probe texts, or the export fails.
EXPORT_MIN_COSINE = 0.9999
_PROBE_TEXTS = [
    "",
    "hello",
    "A short sentence about SQLite databases and vector search.",
    "Ünïcödé text, 日本語のテキスト, emoji 🙂 and punctuation!?",
    " ".join(["a longer input that needs truncation"] * 80),
]


# --------------------------------------------------------------------------- integrity


def integrity_path(onnx_path: str | os.PathLike[str]) -> Path:
    """The integrity record of an export: ``<file>.sha256.json`` beside it."""
    path = Path(onnx_path)
    return path.with_name(path.name + INTEGRITY_SUFFIX)


def _sha256(path: Path) -> str:
    """sha256 of a regular file (a FIFO or device planted in the cache would block or never end)."""
    with open(path, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _source_files(model_dir: Path) -> list[tuple[str, Path]]:
    """The model files an export is made from and the encoder reads: config, tokenizer, weights."""
    tdir = runtime._transformer_dir(model_dir)
    files = [model_dir / "modules.json"] + [
        tdir / name for name in ("config.json", "tokenizer.json", "model.safetensors",
                                 "pytorch_model.bin")
    ]
    return [(path.relative_to(model_dir).as_posix(), path) for path in files if path.is_file()]


def _describe_source(model_dir: Path, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each source file's sha256, size and mtime. A large file (the weights) whose size and
    mtime match ``known`` keeps its recorded hash: the installed model is trusted, the cache is
    not, and hashing 90 MB of weights again would double the cost of opening an export."""
    out: dict[str, Any] = {}
    for name, path in _source_files(model_dir):
        info = path.stat()
        entry: dict[str, Any] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
        old = (known or {}).get(name)
        if (
            info.st_size > 1 << 20
            and isinstance(old, dict)
            and old.get("size") == info.st_size
            and old.get("mtime_ns") == info.st_mtime_ns
            and isinstance(old.get("sha256"), str)
        ):
            entry["sha256"] = old["sha256"]
        else:
            entry["sha256"] = _sha256(path)
        out[name] = entry
    return out


def _write_integrity(onnx_path: Path, data_files: list[Path], model_dir: Path) -> None:
    """Record the hashes of a fresh export, atomically (temporary file, fsync, rename)."""
    record = {
        "format": INTEGRITY_FORMAT,
        "files": {path.name: _sha256(path) for path in [onnx_path, *data_files]},
        "source": _describe_source(model_dir),
    }
    target = integrity_path(onnx_path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def check_export(
    onnx_path: str | os.PathLike[str], model_dir: str | os.PathLike[str] | None = None
) -> str | None:
    """Why the export at ``onnx_path`` cannot be trusted as made from ``model_dir`` by
    :func:`export_onnx`, or None when its integrity record matches the files byte for byte."""
    path = Path(onnx_path)
    mdir = Path(model_dir) if model_dir is not None else runtime.default_model_dir()
    record_file = integrity_path(path)
    try:
        with open(record_file, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return f"{record_file.name} is not a regular file"
            record = json.loads(handle.read(1 << 20))
    except FileNotFoundError:
        return f"its integrity record {record_file.name} is missing"
    except (OSError, ValueError) as exc:
        return f"its integrity record {record_file.name} is unreadable ({exc})"
    if not isinstance(record, dict):
        record = {}
    files, source = record.get("files"), record.get("source")
    if (
        record.get("format") != INTEGRITY_FORMAT
        or not isinstance(files, dict)
        or not isinstance(source, dict)
        or path.name not in files
    ):
        return f"{record_file.name} is not an integrity record of {path.name}"
    now = _describe_source(mdir, source)
    recorded = {name: entry.get("sha256") for name, entry in source.items() if isinstance(entry, dict)}
    if {name: entry["sha256"] for name, entry in now.items()} != recorded:
        return f"it was exported from other model files than those in {mdir}"
    for name, digest in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            return f"{record_file.name} names a file outside the cache folder: {name!r}"
        try:
            actual = _sha256(path.parent / name)
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as exc:
            return f"{name} cannot be read ({exc})"
        if actual != digest:
            return f"{name} differs from the file that was exported (sha256 mismatch)"
    return None


def _ensure_trusted_export(model_dir: Path, path: Path) -> None:
    """Make sure the cache file at ``path`` is a verified export of ``model_dir``: export it if
    it is missing, and again, with a warning, if it does not match its integrity record."""
    if path.exists() and check_export(path, model_dir) is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with _export_lock(path):  # one export per cache file at a time; then look again
        problem = check_export(path, model_dir) if path.exists() else "missing"
        if problem is None:
            return  # another process exported it meanwhile
        if path.exists():
            log.warning(
                "the cached ONNX export %s cannot be trusted: %s; exporting it again from %s",
                path, problem, model_dir,
            )
        export_onnx(model_dir, path)


def _export_lock(path: Path) -> Any:
    try:
        from filelock import FileLock
    except ImportError:  # pragma: no cover - stand-alone use without filelock
        return contextlib.nullcontext()
    return FileLock(str(path.with_name(f".{path.name}.lock")), timeout=EXPORT_LOCK_TIMEOUT)


# --------------------------------------------------------------------------- export


def export_onnx(
    model_dir: str | os.PathLike[str] | None = None,
    out_path: str | os.PathLike[str] | None = None,
    *,
    model_name: str | None = None,
    verify: bool = True,
) -> Path:
    """Export a sentence-transformers mean-pooling model to ONNX; returns the graph's path.

    The graph takes ``input_ids`` and ``attention_mask`` (int64, ``(batch, seq)``, both axes
    dynamic) and returns ``sentence_embedding`` ``(batch, dim)``: the transformer, mean pooling
    over the mask and L2 normalisation, all in the graph. ``model_name`` (default: the model's
    identity, ``"sentence-transformers/all-MiniLM-L6-v2"`` for the packaged model) is stored in
    the file's metadata. With ``verify`` the file is checked against torch on a few probe texts
    and rejected below cosine 0.9999.

    The weights go to a uniquely named ``<out_path name>.<pid>.<random>.data`` next to
    ``out_path``, and the hashes of both (and of the model files) to ``<out_path
    name>.sha256.json`` (copy all three files to move an export); the graph is written under a temporary
    name and moved onto ``out_path`` with ``os.replace`` once its weights are complete, so a
    reader never sees a partial export, and concurrent exports cannot clobber each other's
    weights. Weight files of replaced exports are removed once they are an hour old.

    Imports torch and transformers (lazily; only here). Needs ``onnx`` and, for the default
    dynamo exporter, ``onnxscript``; without onnxscript the TorchScript exporter is used.
    No network access: the weights are read from ``model_dir`` only.
    """
    mdir = Path(model_dir) if model_dir is not None else runtime.default_model_dir()
    out = Path(out_path) if out_path is not None else runtime.default_onnx_path(mdir)
    tdir = runtime._transformer_dir(mdir)
    _check_mean_pooling(mdir)
    identity = model_name or runtime._model_identity(mdir)

    import torch

    try:
        from transformers import AutoModel
    except ImportError as exc:  # pragma: no cover - comes with sentence-transformers
        raise runtime.OnnxExportError("export_onnx needs the 'transformers' package") from exc

    with _quiet_export_logs():
        model = AutoModel.from_pretrained(
            str(tdir), local_files_only=True, attn_implementation="eager"
        )
    model.eval()
    wrapper = _mean_pooled_model_class()(model).eval()
    max_positions = int(getattr(model.config, "max_position_embeddings", 512))

    out.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    raw = out.with_name(f".{out.name}.{token}.raw.tmp")  # single-file export, before metadata
    tmp = out.with_name(f".{out.name}.{token}.tmp")  # the final graph, renamed to ``out``
    data = out.with_name(f"{out.name}.{token}.data")  # its weights; unique, never rewritten
    keep_data = False
    try:
        with _quiet_export_logs(), torch.no_grad():
            _torch_export(torch, wrapper, raw, max_positions)
        _save_with_metadata(
            raw, tmp, data, {runtime.METADATA_MODEL_NAME: identity, runtime.METADATA_VARIANT: "fp32"}
        )
        if verify:
            _verify_export(torch, wrapper, tmp, tdir)
        os.replace(tmp, out)
        keep_data = True
        _write_integrity(out, [data], mdir)
    finally:
        leftovers = [raw, raw.with_name(raw.name + ".data"), tmp]
        if not keep_data:
            leftovers.append(data)
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
    _remove_stale_data_files(out, keep=data)
    return out


@contextlib.contextmanager
def _quiet_export_logs():
    """Silence the exporter's chatter (missing torchvision ops, loading bars) for one export."""
    import warnings

    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except (ImportError, AttributeError):  # pragma: no cover - older/newer transformers
        hf_logging, bars = None, False
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if hf_logging is not None and bars:
            hf_logging.enable_progress_bar()


def _remove_stale_data_files(out: Path, keep: Path, min_age_s: float = 3600.0) -> None:
    """Delete weight files of earlier exports to ``out`` (an hour old, so never a live export's)."""
    now = time.time()
    for path in out.parent.glob(f"{glob.escape(out.name)}.*.data"):
        if path == keep:
            continue
        try:
            if now - path.stat().st_mtime > min_age_s:
                path.unlink()
        except OSError:
            pass


def _check_mean_pooling(model_dir: Path) -> None:
    modules = model_dir / "modules.json"
    if not modules.is_file():
        return
    for module in json.loads(modules.read_text(encoding="utf-8")):
        if str(module.get("type", "")).endswith("models.Pooling"):
            cfg = runtime._read_json(model_dir / module.get("path", "") / "config.json")
            modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
            if modes and modes != ["pooling_mode_mean_tokens"]:
                raise runtime.OnnxExportError(f"only mean pooling is supported, {model_dir} uses {modes}")


def _mean_pooled_model_class():
    import torch

    class MeanPooledModel(torch.nn.Module):
        """Transformer -> mean pooling over the mask -> L2 normalise, as sentence-transformers."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            summed = (states * mask).sum(dim=1)
            pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
            return pooled / pooled.norm(p=2, dim=1, keepdim=True).clamp(min=1e-12)

    return MeanPooledModel


def _torch_export(torch: Any, wrapper: Any, path: Path, max_positions: int) -> None:
    input_ids = torch.tensor([[101, 7592, 2088, 102, 0, 0], [101, 7592, 2088, 2003, 2307, 102]])
    attention_mask = (input_ids != 0).long()
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["sentence_embedding"]}
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it

        use_dynamo = True
    except ImportError:
        use_dynamo = False
    if use_dynamo:
        try:
            from torch.export import Dim

            batch, seq = Dim("batch"), Dim("seq", max=max_positions)
            program = torch.onnx.export(
                wrapper,
                (input_ids, attention_mask),
                dynamo=True,
                dynamic_shapes={
                    "input_ids": {0: batch, 1: seq},
                    "attention_mask": {0: batch, 1: seq},
                },
                verbose=False,
                **names,
            )
            program.save(str(path), external_data=False)
            return
        except Exception as exc:  # fall back to the TorchScript exporter below
            log.info("dynamo ONNX export failed (%s); using the TorchScript exporter", exc)
            for leftover in (path, path.with_name(path.name + ".data")):
                leftover.unlink(missing_ok=True)
    torch.onnx.export(
        wrapper,
        (input_ids, attention_mask),
        str(path),
        dynamo=False,
        opset_version=17,
        dynamic_axes={
            "input_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "seq"},
            "sentence_embedding": {0: "batch"},
        },
        **names,
    )


def _save_with_metadata(src: Path, dst: Path, data: Path, values: dict[str, str]) -> None:
    """Copy the graph ``src`` to ``dst`` with ``values`` as metadata and weights in ``data``.

    Weights in a separate file load about twice as fast as weights inside the protobuf, which
    matters for a fresh process's first query; ``data`` must sit next to ``dst``.
    """
    try:
        import onnx
    except ImportError as exc:
        raise runtime.OnnxExportError("export_onnx needs the 'onnx' package (pip install onnx)") from exc
    model = onnx.load(str(src))
    del model.metadata_props[:]
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(
        model,
        str(dst),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    os.chmod(data, os.stat(dst).st_mode & 0o777)


def _verify_export(torch: Any, wrapper: Any, path: Path, tdir: Path) -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.enable_truncation(max_length=256)
    tokenizer.no_padding()
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0)
    encodings = tokenizer.encode_batch(_PROBE_TEXTS)
    input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
    attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    with torch.no_grad():
        expected = wrapper(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]
    cosine = float((got * expected).sum(axis=1).min())
    if not cosine >= EXPORT_MIN_COSINE:
        raise runtime.OnnxExportError(f"exported model diverges from torch: min cosine {cosine:.6f}")
