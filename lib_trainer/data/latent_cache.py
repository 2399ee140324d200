"""Cache of VAE encodings so each (image, bucket, flip, VAE) is encoded once, in memory and optionally on disk.

kohya names cache files after the image and checks little else, so editing an image, changing buckets or
swapping the VAE silently trains on stale latents. Here the key is the image's *content* hash plus bucket,
flip and VAE identity, and every disk entry carries metadata that is checked before use; anything that
does not match, or cannot be read, is deleted and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from .buckets import Size
from .errors import DatasetError

log = logging.getLogger("lib_trainer")

FORMAT_VERSION = "1"  # bump when what is stored changes meaning; old entries then fail the check
TENSOR_NAME = "latents"
_HASH_CHUNK = 1 << 20


class LatentCache:
    """Memory cache (always) backed by a folder of `<key>.safetensors` files (when `disk_dir` is set)."""

    def __init__(self, disk_dir: Path | None, vae_id: str, *, dtype: torch.dtype = torch.float32):
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self.vae_id = str(vae_id)
        self.dtype = dtype
        self._memory: dict[str, torch.Tensor] = {}
        self._bucket_of: dict[str, Size] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}
        self.stats = {"memory_hits": 0, "disk_hits": 0, "misses": 0, "discarded": 0}
        self.warnings: list[str] = []

    def file_hash(self, image_path: Path) -> str:
        """sha256 of the file's bytes, computed once per (path, mtime, size) for this cache's lifetime."""
        path = Path(image_path)
        try:
            info = path.stat()
            memo_key = (str(path.resolve()), info.st_mtime_ns, info.st_size)
            cached = self._hashes.get(memo_key)
            if cached is not None:
                return cached
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while chunk := handle.read(_HASH_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise DatasetError(
                f"{path} could not be read ({exc}); it may have been moved or deleted since the dataset was scanned."
            ) from exc
        self._hashes[memo_key] = digest.hexdigest()
        return self._hashes[memo_key]

    def key_for(self, image_path: Path, bucket: Size, flip: bool) -> str:
        """Cache key from image content (not path: renames keep, edits invalidate), bucket, flip and VAE."""
        width, height = int(bucket[0]), int(bucket[1])
        material = "|".join(
            [
                f"v{FORMAT_VERSION}",
                self.file_hash(image_path),
                f"{width}x{height}",
                f"flip={int(bool(flip))}",
                self.vae_id,
            ]
        )
        key = hashlib.sha256(material.encode("utf-8")).hexdigest()
        self._bucket_of[key] = (width, height)
        return key

    def path_for(self, key: str) -> Path | None:
        return self.disk_dir / f"{key}.safetensors" if self.disk_dir is not None else None

    def get(self, key: str, expected_shape: tuple[int, ...]) -> torch.Tensor | None:
        """The cached tensor, or None when it must be (re)encoded; bad disk entries are deleted."""
        shape = tuple(int(s) for s in expected_shape)
        tensor = self._memory.get(key)
        if tensor is not None:
            if tuple(tensor.shape) == shape:
                self.stats["memory_hits"] += 1
                return tensor
            del self._memory[key]
        path = self.path_for(key)
        if path is None or not path.is_file():
            self.stats["misses"] += 1
            return None
        tensor, problem = self._read_entry(path, key, shape)
        if tensor is None:
            log.info("latent cache entry %s discarded (%s); it will be rebuilt", path.name, problem)
            self._discard(path)
            self.stats["discarded"] += 1
            self.stats["misses"] += 1
            return None
        self._memory[key] = tensor
        self.stats["disk_hits"] += 1
        return tensor

    def put(self, key: str, tensor: torch.Tensor, *, bucket: Size) -> None:
        """Store in memory and, if enabled, on disk (atomically: a crash never leaves a half-written entry)."""
        tensor = tensor.detach().to("cpu", self.dtype).contiguous()
        bucket = (int(bucket[0]), int(bucket[1]))
        self._memory[key] = tensor
        self._bucket_of[key] = bucket
        path = self.path_for(key)
        if path is not None:
            self._write_entry(path, key, tensor, bucket)

    def __len__(self) -> int:
        return len(self._memory)

    def _metadata(self, key: str, shape: tuple[int, ...], bucket: Size) -> dict[str, str]:
        return {
            "format": f"lib_trainer.latents.v{FORMAT_VERSION}",
            "key": key,
            "vae_id": self.vae_id,
            "bucket": f"{bucket[0]}x{bucket[1]}",
            "shape": "x".join(str(s) for s in shape),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def _read_entry(self, path: Path, key: str, shape: tuple[int, ...]) -> tuple[torch.Tensor | None, str]:
        """Read fully into memory (no mmap left open: Windows could not replace the file later)."""
        try:
            data = path.read_bytes()
            metadata = _header_metadata(data)
            tensor = load_safetensors(data).get(TENSOR_NAME)
        except Exception as exc:  # truncated/garbled files raise assorted errors; all mean "rebuild"
            return None, f"unreadable: {exc}"
        if tensor is None:
            return None, f"no '{TENSOR_NAME}' tensor"
        bucket = self._bucket_of.get(key)
        if bucket is None:  # key never seen via key_for/put: accept the stored bucket, still check the rest
            bucket = _parse_size(metadata.get("bucket", ""))
        if bucket is None:
            return None, "no bucket in metadata"
        expected = self._metadata(key, shape, bucket)
        for name, value in expected.items():
            if metadata.get(name) != value:
                return None, f"{name} is {metadata.get(name)!r}, expected {value!r}"
        if tuple(tensor.shape) != shape or tensor.dtype != self.dtype:
            return None, f"tensor is {tuple(tensor.shape)} {tensor.dtype}, expected {shape} {self.dtype}"
        if not torch.isfinite(tensor).all():
            return None, "contains NaN/inf"
        return tensor, ""

    def _write_entry(self, path: Path, key: str, tensor: torch.Tensor, bucket: Size) -> None:
        tmp_name = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp_name = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=path.parent)
            os.close(handle)
            save_file(
                {TENSOR_NAME: tensor}, tmp_name, metadata=self._metadata(key, tuple(tensor.shape), bucket)
            )
            os.replace(tmp_name, path)
            tmp_name = None
        except OSError as exc:
            message = (
                f"could not write the latent cache to {path.parent} ({exc}); continuing with the in-memory cache "
                "only. Free disk space or choose another dataset.cache_dir to keep latents between runs."
            )
            log.warning(message)
            self.warnings.append(message)
            self.disk_dir = None
        finally:
            if tmp_name is not None:
                Path(tmp_name).unlink(missing_ok=True)

    @staticmethod
    def _discard(path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # read-only cache folder: the entry is still ignored, just not removed
            log.warning("could not delete stale latent cache entry %s: %s", path, exc)


def _header_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob (its header is an 8-byte length then JSON)."""
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise ValueError("header longer than file")
    header = json.loads(data[8 : 8 + length])
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError("metadata is not a mapping")
    return metadata


def _parse_size(text: str) -> Size | None:
    parts = text.split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return (int(parts[0]), int(parts[1]))
