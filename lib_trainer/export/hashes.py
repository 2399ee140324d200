"""The hashes WebUIs and kohya tools use to identify models, computed exactly as they compute them.

A1111 shows a LoRA's "addnet" hash (sha256 of the tensor bytes only, so editing metadata keeps it stable)
and trusts `sshs_model_hash` from the metadata instead of hashing the file itself. Base models are named
by the old 8-hex hash, the full sha256 and its 10-hex prefix ("AutoV2", what the WebUI and Civitai show).
A wrong value here means the WebUI cannot match a LoRA to its base model, so every formula is kohya's.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import BinaryIO, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]

LEGACY_OFFSET = 0x100000  # 1 MiB: the old A1111 / AddNet hash reads 64 KiB from here
LEGACY_LENGTH = 0x10000
_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")

# (resolved path, size, mtime_ns) -> hashes; a 7 GB checkpoint takes tens of seconds to hash and every
# epoch save records it, so one job must hash each base model file once.
_CHECKPOINT_CACHE: dict[tuple[str, int, int], dict[str, str]] = {}


def _stream_sha256(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    while True:
        n = stream.readinto(buffer)
        if not n:
            break
        digest.update(view[:n])
    return digest.hexdigest()


def _tensor_data_offset(header8: bytes, total_size: int, name: str) -> int:
    """Where the tensor bytes start: after the 8-byte little-endian length and the JSON header."""
    if len(header8) < 8:
        raise ValueError(f"{name} is not a safetensors file: it is only {total_size} bytes long")
    offset = 8 + int.from_bytes(header8[:8], "little")
    if offset > total_size:
        raise ValueError(
            f"{name} is not a valid safetensors file: its header claims {offset - 8} bytes but the file has "
            f"{total_size}. The file is probably truncated (an interrupted download or copy)."
        )
    return offset


def addnet_hash_safetensors(data: bytes | bytearray | memoryview | PathLike) -> str:
    """sha256 of a safetensors file's tensor payload: A1111's "addnet" hash and kohya's `sshs_model_hash`."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B")
        offset = _tensor_data_offset(bytes(view[:8]), len(view), "the serialized data")
        return hashlib.sha256(view[offset:]).hexdigest()
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"cannot hash {path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        offset = _tensor_data_offset(f.read(8), size, str(path))
        f.seek(offset)
        return _stream_sha256(f)


def legacy_hash_bytes(data: bytes | bytearray | memoryview) -> str:
    """kohya's `sshs_legacy_hash`: first 8 hex of sha256 of the 64 KiB at 1 MiB (less, or nothing, if shorter)."""
    view = memoryview(data).cast("B")
    return hashlib.sha256(view[LEGACY_OFFSET : LEGACY_OFFSET + LEGACY_LENGTH]).hexdigest()[:8]


def old_model_hash(path: PathLike) -> str:
    """A1111's old 8-hex checkpoint hash (`ss_sd_model_hash`): the same 64 KiB window, read from the file."""
    with open(path, "rb") as f:
        f.seek(LEGACY_OFFSET)
        return hashlib.sha256(f.read(LEGACY_LENGTH)).hexdigest()[:8]


def file_sha256(path: PathLike) -> str:
    """Full-file sha256, streamed so multi-GB checkpoints never sit in memory."""
    with open(path, "rb") as f:
        return _stream_sha256(f)


def kohya_lora_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) the way kohya computes them before saving.

    Only the `ss_*` keys go into the in-memory file, as in kohya: user-editable keys (modelspec, ssmd_*)
    must not change the recorded hashes. The model hash equals the addnet hash of the final file because
    metadata only changes the header; the legacy hash depends on the header length, so it does not.
    """
    from safetensors.torch import save

    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    data = save(dict(tensors), ss_only)
    return addnet_hash_safetensors(data), legacy_hash_bytes(data)


def _checked_sha256(value: str) -> str:
    if not isinstance(value, str) or not _SHA256_RE.match(value.strip()):
        raise ValueError(f"a precomputed sha256 must be 64 hexadecimal characters, got {value!r}")
    return value.strip().lower()


def checkpoint_hashes(
    path: PathLike,
    *,
    sha256: str | None = None,
    cache: MutableMapping[tuple[str, int, int], dict[str, str]] | None = None,
) -> dict[str, str]:
    """Hashes of a base model (or VAE) file: `ss_sd_model_hash`, `ss_new_sd_model_hash` and `autov2`.

    Pass `sha256` when it is already known (the WebUI keeps it in its cache.json) to skip the slow full
    read. Results are memoized by path, size and mtime (in `cache`, or a process-wide one), so a job that
    records the hash at every epoch hashes the file once and a replaced file is hashed again.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"cannot hash the model file {p}: it does not exist or is not a file")
    known = _checked_sha256(sha256) if sha256 is not None else None
    stat = p.stat()
    key = (str(p.resolve()), stat.st_size, stat.st_mtime_ns)
    store = _CHECKPOINT_CACHE if cache is None else cache
    cached = store.get(key)
    if cached is not None and (known is None or cached["ss_new_sd_model_hash"] == known):
        return dict(cached)
    full = known if known is not None else file_sha256(p)
    result = {"ss_sd_model_hash": old_model_hash(p), "ss_new_sd_model_hash": full, "autov2": full[:10]}
    store[key] = dict(result)
    return result
