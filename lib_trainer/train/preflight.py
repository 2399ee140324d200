"""Checks that run before anything is loaded or written, so a mistake costs seconds, not a failed night.

Everything a user can get wrong in a job spec (paths, file types, optimizer/device combinations, bucket
settings, output folder) is checked here and reported as one `PreflightError` naming the field and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.arch import ArchInfo, ModelFormatError, analyse_checkpoint
from ..models.checkpoint_io import (
    CHECKPOINT_SUFFIXES,
    load_state_dict,
    read_safetensors_header,
    tensor_shapes,
)


class PreflightError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class Resolved:
    checkpoint: Path
    vae: Path | None
    arch: ArchInfo
    device: torch.device
    output_dir: Path
    dataset_dir: Path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PreflightError(
                "training.device",
                f"{name!r} was asked for but no CUDA GPU is usable by this Python (torch {torch.__version__}); "
                "use 'cpu' or 'auto'",
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise PreflightError(
                "training.device", f"there is no GPU {index}; this machine has {torch.cuda.device_count()}"
            )
    return torch.device(name)


def _model_file(value: str, field: str, what: str) -> Path:
    if value == "current":
        raise PreflightError(
            field,
            "'current' means the WebUI's loaded model and only works inside the WebUI; give a file path",
        )
    path = Path(value).expanduser()
    if not path.exists():
        raise PreflightError(field, f"{what} file not found: {path}")
    if path.is_dir():
        raise PreflightError(field, f"{path} is a folder; give the {what} file itself (.safetensors)")
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise PreflightError(field, f"{path.name} is not a model file (expected .safetensors or .ckpt)")
    return path


def check_model(spec) -> tuple[Path, Path | None, ArchInfo]:
    checkpoint = _model_file(spec.model.checkpoint, "model.checkpoint", "checkpoint")
    vae = None
    if spec.model.vae not in ("none", "", None):
        vae = _model_file(spec.model.vae, "model.vae", "VAE")
    try:
        if checkpoint.suffix.lower() == ".safetensors":
            shapes, metadata = read_safetensors_header(checkpoint)
        else:
            state, metadata = load_state_dict(checkpoint)
            shapes = tensor_shapes(state)
            del state
        arch = analyse_checkpoint(
            shapes, metadata, checkpoint, spec.model.prediction_type, spec.model.model_type
        )
    except ModelFormatError as exc:
        raise PreflightError("model.checkpoint", f"{checkpoint.name}: {exc}") from exc
    return checkpoint, vae, arch


def check_output_dir(value: str | None) -> Path:
    if not value:
        raise PreflightError("output.dir", "no output folder given")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise PreflightError("output.dir", f"{path} exists and is not a folder")
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), None)
    if probe is None or not os.access(probe, os.W_OK):
        raise PreflightError("output.dir", f"cannot write to {path}; choose a folder you can write to")
    return path


def check_dataset_dir(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise PreflightError("dataset.path", f"dataset folder not found: {path}")
    return path


def check_class_data(spec) -> None:
    """A user's class image folder must exist before minutes go into loading the model."""
    db = spec.dreambooth
    if spec.mode == "lora" or db.prior != "class-images" or not db.class_data:
        return
    path = Path(db.class_data).expanduser()
    if not path.is_dir():
        raise PreflightError(
            "dreambooth.class_data",
            f"class image folder not found: {path}; leave it empty to generate class images with the base model",
        )


def check_optimizer_device(spec, device: torch.device) -> None:
    if spec.training.optimizer == "AdamW8bit" and device.type != "cuda":
        raise PreflightError(
            "training.optimizer",
            "AdamW8bit needs an NVIDIA GPU (bitsandbytes' 8-bit optimizers run on CUDA only); "
            "use AdamW on the CPU",
        )
    if spec.training.attention == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError as exc:
            raise PreflightError(
                "training.attention", "xformers is not installed in the trainer environment; use 'sdpa'"
            ) from exc


def preflight(spec) -> Resolved:
    """Fail fast, in the order a user would fix things."""
    checkpoint, vae, arch = check_model(spec)
    dataset_dir = check_dataset_dir(spec.dataset.path)
    check_class_data(spec)
    device = resolve_device(spec.training.device)
    check_optimizer_device(spec, device)
    output_dir = check_output_dir(spec.output.dir)
    return Resolved(checkpoint, vae, arch, device, output_dir, dataset_dir)
