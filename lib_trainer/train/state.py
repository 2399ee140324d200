"""Resumable training state: trained weights, optimizer, scheduler, every random stream and the step counters.

A resumed run must continue as if it had never stopped (kohya's users report wrong steps and epochs after
resuming), so the state holds the exact position inside the epoch and the states of all random generators
the loop draws from. It is written to a temp folder and renamed, so a crash mid-save keeps the old state.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

STATE_VERSION = 1


@dataclass
class Progress:
    global_step: int = 0
    epoch: int = 0  # zero-based epoch being trained
    batch_in_epoch: int = 0  # batches of that epoch already consumed
    output_name: str = ""
    training_started_at: float = 0.0
    finished: bool = False


WEIGHT_FILES = ("lora.safetensors", "weights.safetensors")  # LoRA layers / a full fine-tune's modules


def save_state(
    state_dir: Path,
    *,
    weights: dict[str, torch.Tensor],
    weights_file: str = "lora.safetensors",
    extras: dict[str, object] | None = None,
    optimizer: torch.optim.Optimizer,
    scheduler,
    noise_generator: torch.Generator,
    caption_rng: random.Random,
    progress: Progress,
    grad_scaler=None,
) -> Path:
    from safetensors.torch import save_file

    state_dir = Path(state_dir)
    tmp = state_dir.with_name(state_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if weights_file not in WEIGHT_FILES:
        raise ValueError(f"unknown weights file {weights_file!r}")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / weights_file))
    for name, value in (extras or {}).items():  # e.g. the EMA, the class-image batch position
        torch.save(value, tmp / f"extra-{name}.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if grad_scaler is not None:
        torch.save(grad_scaler.state_dict(), tmp / "grad_scaler.pt")
    rng = {
        "noise": noise_generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "caption": _python_state_to_list(caption_rng.getstate()),
    }
    torch.save(rng, tmp / "rng.pt")
    (tmp / "progress.json").write_text(json.dumps({"version": STATE_VERSION, **asdict(progress)}, indent=1))
    old = state_dir.with_name(state_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if state_dir.exists():
        state_dir.rename(old)
    tmp.rename(state_dir)
    shutil.rmtree(old, ignore_errors=True)
    return state_dir


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def read_progress(state_dir: Path) -> Progress:
    data = json.loads((Path(state_dir) / "progress.json").read_text())
    if data.pop("version", None) != STATE_VERSION:
        raise ValueError(
            f"the saved state in {state_dir} was written by another version and cannot be resumed"
        )
    return Progress(**data)


def load_state(
    state_dir: Path,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler,
    noise_generator: torch.Generator,
    caption_rng: random.Random,
    grad_scaler=None,
    weights_file: str = "lora.safetensors",
) -> tuple[dict[str, torch.Tensor], Progress]:
    """Restore optimizer, scheduler and random streams; returns the trained weights and the progress."""
    from safetensors.torch import load_file

    state_dir = Path(state_dir)
    if not (state_dir / weights_file).is_file():
        raise ValueError(
            f"the saved state in {state_dir} has no {weights_file}: it was made by another kind of job "
            "(LoRA vs full fine-tune); start the job again instead of resuming"
        )
    lora = load_file(str(state_dir / weights_file))
    optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(state_dir / "scheduler.pt", weights_only=True))
    if grad_scaler is not None and (state_dir / "grad_scaler.pt").is_file():
        grad_scaler.load_state_dict(torch.load(state_dir / "grad_scaler.pt", weights_only=True))
    rng = torch.load(state_dir / "rng.pt", weights_only=True)
    noise_generator.set_state(rng["noise"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss = rng["caption"]
    caption_rng.setstate((version, tuple(internal), gauss))
    return lora, read_progress(state_dir)


def load_extra(state_dir: Path, name: str) -> object | None:
    """An extra saved with the state (None when the state has none, e.g. written by an older version)."""
    path = Path(state_dir) / f"extra-{name}.pt"
    return torch.load(path, weights_only=True) if path.is_file() else None
