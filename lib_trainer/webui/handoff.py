"""Sharing the GPU between the WebUI and a training job.

"exclusive": the job takes the WebUI's generation lock for its whole run (Generate then waits in line), and
the WebUI's model leaves VRAM while training runs; afterwards the model goes back and the lock is released,
so the WebUI generates again without a restart and its VRAM use is what it was. "shared": nothing is
touched; the job trains next to generation (only when the GPU has room for both).
"""

from __future__ import annotations

import logging
import threading

from ..jobs import JobRecord
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


def estimated_need_bytes(
    model_type: str | None, batch_size: int = 1, gradient_checkpointing: bool = False
) -> int:
    base = BASE_NEED_GIB.get(model_type or "sd1", 8.0)
    if gradient_checkpointing:
        base *= 0.7
    return int((base + 1.0 * max(0, batch_size - 1)) * GIB)


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
