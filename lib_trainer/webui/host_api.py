"""What the WebUI side needs from its host, as a small interface.

Everything on the WebUI side (the tab, the job service, the GPU handoff) talks to the host through an object
with these methods. `host.py` implements it for AUTOMATIC1111 (and the Forge / reForge variants); tests hand
in their own object. This keeps `modules.*` imports in one file and everything else testable without a
WebUI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .compare import CompareRequest, GridResult

CURRENT = "current"  # the checkpoint (or VAE) the WebUI has loaded right now


@dataclass(frozen=True)
class ModelInfo:
    """The checkpoint the WebUI uses, with what the host knows about it (passed to the trainer so it does not
    have to guess: the host has already decided, e.g. from a sidecar .yaml, that a model is v-prediction)."""

    checkpoint: str  # file path
    title: str  # as the WebUI shows it, e.g. "model.safetensors [6ce0161689]"
    vae: str | None = None  # VAE file in use; None = the one baked into the checkpoint
    model_type: str | None = None  # "sd1", "sd2", "sd2-v", "sdxl" (the job spec's model.model_type)
    prediction_type: str | None = None  # "epsilon" or "v_prediction"
    loaded: bool = True  # False: selected in the WebUI but not loaded yet

    @property
    def name(self) -> str:
        return Path(self.checkpoint).name


@dataclass(frozen=True)
class CheckpointChoice:
    title: str
    path: str


@runtime_checkable
class Host(Protocol):
    """The host WebUI, seen from the extension."""

    kind: str  # "a1111", "forge", "reforge" (or anything for tests)

    def loaded_model(self) -> ModelInfo | None:
        """The checkpoint in use (without loading one as a side effect); None if there is none."""

    def checkpoints(self) -> list[CheckpointChoice]:
        """The WebUI's checkpoint list, as its checkpoint dropdown shows it."""

    def lora_dir(self) -> Path:
        """Where the WebUI looks for LoRAs (`--lora-dir`, default models/Lora)."""

    def checkpoint_dir(self) -> Path:
        """Where a full fine-tune saves its checkpoints: the WebUI's checkpoint folder (`--ckpt-dir`, default
        models/Stable-diffusion)."""

    def data_dir(self) -> Path:
        """The WebUI's data folder (`--data-dir`); job folders and presets live under it."""

    def trainer_venv(self) -> Path | None:
        """`--lora-trainer-venv`, or None for the extension's own .venv."""

    def trainer_gpu(self) -> str | None:
        """`--lora-trainer-gpu`: the GPU index the trainer uses, or None for the default one."""

    def gpu_memory(self) -> tuple[int, int] | None:
        """(free, total) bytes on the trainer's GPU, or None when there is no CUDA GPU."""

    def acquire_generation_lock(self) -> None:
        """Wait for and take the WebUI's generation queue lock (image generation then waits for us)."""

    def release_generation_lock(self) -> None:
        """Give the lock back."""

    def unload_model(self) -> None:
        """Move the WebUI's model out of VRAM (to RAM), so training has the GPU to itself."""

    def restore_model(self) -> None:
        """Bring the model back to the GPU (A1111 does not do it by itself before the next generation)."""

    def refresh_loras(self) -> None:
        """Rescan the LoRA folder so new files show up in the WebUI's Lora list."""

    def refresh_checkpoints(self) -> None:
        """Rescan the checkpoint folders so a new checkpoint shows up in the WebUI's checkpoint list (never
        loads a model)."""

    def lora_names(self, refresh: bool = False) -> list[str]:
        """The names (file stems) in the WebUI's Lora list; `refresh` rescans the folder first."""

    def run_lora_grid(self, request: CompareRequest) -> GridResult:
        """Make an epoch x strength grid with the WebUI's txt2img and X/Y/Z plot (the caller holds the
        generation lock). Raises with a message for the user when it cannot."""
