"""Sharing the GPU between the WebUI and a training job.

"exclusive": the job takes the WebUI's generation lock for its whole run (Generate then waits in line), and
the WebUI's model leaves VRAM while training runs; afterwards the model goes back and the lock is released,
so the WebUI generates again without a restart and its VRAM use is what it was. "shared": nothing is
touched; the job trains next to generation (only when the GPU has room for both).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..jobs import JobRecord
from ..spec.schema import FULL_FINETUNE
from .host_api import Host

log = logging.getLogger("lib_trainer.webui")

AUTO = "auto"
EXCLUSIVE = "exclusive"
SHARED = "shared"

GIB = 1024**3
# Rough peak VRAM of a LoRA run at batch 1 and the family's usual resolution (fp16/bf16 weights), from
# kohya users' reports; only used to decide whether "auto" can leave the WebUI's model on the GPU.
BASE_NEED_GIB = {"sd1": 6.0, "sd2": 7.0, "sd2-v": 7.0, "sdxl": 14.0}
HEADROOM = 1.25

# A full fine-tune (mode "dreambooth") keeps fp32 master weights and gradients of everything it trains
# (8 bytes per parameter) plus the optimizer's state, so it is counted from the parameter counts.
UNET_PARAMS = {"sd1": 0.86e9, "sd2": 0.87e9, "sd2-v": 0.87e9, "sdxl": 2.57e9}
TEXT_ENCODER_PARAMS = {"sd1": 0.12e9, "sd2": 0.34e9, "sd2-v": 0.34e9, "sdxl": 0.82e9}
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "prodigy": 16, "adafactor": 1}
# Activations at batch 1 with gradient checkpointing, and the frozen parts (VAE, the text encoder that is
# not trained, CUDA context); without checkpointing the activations take FULL_NO_CHECKPOINTING times more.
FULL_ACTIVATION_GIB = {"sd1": 3.0, "sd2": 3.5, "sd2-v": 3.5, "sdxl": 9.0}
FULL_FROZEN_GIB = {"sd1": 1.5, "sd2": 1.5, "sd2-v": 1.5, "sdxl": 4.0}
FULL_NO_CHECKPOINTING = 2.5


@dataclass(frozen=True)
class FullFineTune:
    """What makes a full fine-tune hungry: the optimizer, what is trained, and the EMA copy."""

    optimizer: str = "AdamW8bit"
    train_unet: bool = True
    train_text_encoder: bool = False
    ema: bool = False


def estimated_need_bytes(
    model_type: str | None,
    batch_size: int = 1,
    gradient_checkpointing: bool = False,
    mode: str = "lora",
    full: FullFineTune | None = None,
) -> int:
    """Peak VRAM of a run: a LoRA (or DreamBooth LoRA) from users' reports, a full fine-tune (mode
    "dreambooth", described by `full`) from what it keeps in memory."""
    if mode == FULL_FINETUNE:
        return estimated_full_need_bytes(model_type, batch_size, gradient_checkpointing, full)
    base = BASE_NEED_GIB.get(model_type or "sd1", 8.0)
    if gradient_checkpointing:
        base *= 0.7
    return int((base + 1.0 * max(0, batch_size - 1)) * GIB)


def estimated_full_need_bytes(
    model_type: str | None,
    batch_size: int = 1,
    gradient_checkpointing: bool = True,
    full: FullFineTune | None = None,
) -> int:
    """Peak VRAM of a full fine-tune: SD 1.5 with AdamW8bit and gradient checkpointing comes to about 13 GB,
    SDXL to about 40 GB; 32-bit AdamW, the text encoder, EMA or no checkpointing add to that."""
    full = full or FullFineTune()
    kind = model_type if model_type in UNET_PARAMS else "sd1"
    trained = UNET_PARAMS[kind] * full.train_unet + TEXT_ENCODER_PARAMS[kind] * full.train_text_encoder
    state = OPTIMIZER_STATE_BYTES.get(full.optimizer.lower(), OPTIMIZER_STATE_BYTES["adamw"])
    weights = trained * (8 + state + (4 if full.ema else 0))
    activations = FULL_ACTIVATION_GIB[kind] * (1 if gradient_checkpointing else FULL_NO_CHECKPOINTING)
    per_image = activations * max(1, batch_size)
    return int(weights + (per_image + FULL_FROZEN_GIB[kind]) * GIB)


def spec_need_bytes(spec: Mapping[str, Any]) -> int:
    """Peak VRAM of the job a complete spec dict describes, by its training type."""
    training, network = spec["training"], spec["network"]
    full = FullFineTune(
        optimizer=str(training.get("optimizer") or "AdamW"),
        train_unet=bool(network.get("train_unet", True)),
        train_text_encoder=bool(network.get("train_text_encoder", False)),
        ema=bool((spec.get("finetune") or {}).get("ema")),
    )
    return estimated_need_bytes(
        spec["model"].get("model_type"),
        training["batch_size"],
        training["gradient_checkpointing"],
        mode=str(spec.get("mode") or "lora"),
        full=full,
    )


def choose_gpu_mode(host: Host, requested: str, need_bytes: int) -> tuple[str, str]:
    """(mode, why) for a job: what the user asked for, or for "auto" exclusive unless the GPU has room for
    the job next to the WebUI's model."""
    if requested in (EXCLUSIVE, SHARED):
        return requested, "chosen in the job settings"
    memory = host.gpu_memory()
    if memory is None:
        return EXCLUSIVE, "no CUDA GPU: training and generating would compete for the same processor"
    free, _total = memory
    if free >= need_bytes * HEADROOM:
        return SHARED, f"the GPU has {free / GIB:.1f} GiB free, enough to train next to the WebUI"
    return (
        EXCLUSIVE,
        f"the GPU has {free / GIB:.1f} GiB free; training needs about {need_bytes / GIB:.0f} GiB",
    )


class GpuHandoff:
    """JobManager hooks that carry out the exclusive mode. Each job's lock is taken at most once and given
    back exactly once, whatever order start, finish and WebUI restarts happen in."""

    def __init__(self, host: Host):
        self.host = host
        self._held: set[str] = set()
        self._lock = threading.Lock()

    def holds(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._held

    def holder(self) -> str | None:
        """The job that holds the generation lock now (an exclusive run), if any."""
        with self._lock:
            return next(iter(self._held), None)

    def before_start(self, record: JobRecord) -> None:
        if record.mode != EXCLUSIVE:
            return
        self._take(record)

    def after_reattach(self, record: JobRecord) -> None:
        """After a WebUI restart the model is back in VRAM while the old job still trains: take it again."""
        if record.mode == EXCLUSIVE:
            self._take(record)

    def after_finish(self, record: JobRecord) -> None:
        with self._lock:
            if record.id not in self._held:
                return
            self._held.discard(record.id)
        try:
            self.host.restore_model()
            log.info("training job %s ended; the WebUI's model is back on its device", record.id)
        finally:
            self.host.release_generation_lock()

    def _take(self, record: JobRecord) -> None:
        with self._lock:
            if record.id in self._held:
                return
        log.info("training job %s waits for the WebUI to finish generating", record.id)
        self.host.acquire_generation_lock()
        try:
            self.host.unload_model()
        except BaseException:
            self.host.release_generation_lock()
            raise
        with self._lock:
            self._held.add(record.id)
        log.info("training job %s runs alone; the WebUI's model was moved out of VRAM", record.id)
