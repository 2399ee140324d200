"""Read single-file checkpoints and VAEs safely: safetensors directly, pickles only with weights_only.

A `.ckpt` is a Python pickle that can run code when loaded. We never unpickle arbitrary objects: torch's
`weights_only=True` loader accepts plain tensors and containers and refuses anything else, and we turn that
refusal into advice (convert the file to .safetensors in the WebUI's Checkpoint Merger).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from .arch import ModelFormatError

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def _check_path(path: Path, what: str) -> None:
    if not path.exists():
        raise ModelFormatError(f"{what} file not found: {path}")
    if path.is_dir():
        raise ModelFormatError(
            f"{what} path is a folder: {path}. Give the single .safetensors file the WebUI loads "
            "(diffusers folders are not supported)"
        )
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ModelFormatError(
            f"{what} file {path.name} has the extension {path.suffix!r}; expected .safetensors or .ckpt"
        )


def read_safetensors_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Shapes and metadata without reading tensor data (cheap even for 7 GB files)."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelFormatError(
            f"{path.name} is not a valid .safetensors file ({exc}); is the download complete?"
        ) from exc
    metadata = header.pop("__metadata__", {}) or {}
    shapes = {k: tuple(v["shape"]) for k, v in header.items()}
    return shapes, metadata


def load_state_dict(path: Path, what: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a checkpoint on the CPU, plus its safetensors metadata (empty for pickles)."""
    path = Path(path)
    _check_path(path, what)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        _, metadata = read_safetensors_header(path)
        try:
            return load_file(str(path), device="cpu"), metadata
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for damaged files
            raise ModelFormatError(f"could not read {path.name}: {exc}; is the file complete?") from exc
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors come in many types
        raise ModelFormatError(
            f"{path.name} is a pickle (.ckpt) file that contains more than plain weights, so it was not "
            "loaded (loading it could run code). Convert it to .safetensors (for example with the WebUI's "
            f"Checkpoint Merger, 'safetensors' format) and train on that. Details: {str(exc)[:200]}"
        ) from exc
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path.name} does not contain a state dict")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    return tensors, {}


def tensor_shapes(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}
