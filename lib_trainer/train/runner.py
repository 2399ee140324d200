"""Run one training job in the foreground: preflight, load, cache, train, sample, save, report.

Everything a front end needs to follow the run goes to the job folder (job.json, events.jsonl, log,
samples/, state/); finished LoRA files go to the output folder through temp names. A stop request (signal
or a `stop` file in the job folder) ends the current step, saves a resumable state and exits cleanly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.profiler import record_function  # named phases in profiler traces (bench/profile_step.py, GPU)

from ..spec import JobSpec, spec_to_dict
from . import outputs
from .dataset_prep import LatentSource, PreparedData
from .events import EventWriter
from .finetune import is_full_finetune, load_weights_state, trainable_components, weights_state
from .preflight import Resolved
from .prior import class_images_of
from .state import Progress, load_extra, load_state, save_state
from .step_loss import compute_loss
from .trigger_embedding import embedding_steps

log = logging.getLogger("lib_trainer")

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED, EXIT_BAD_INPUT = 0, 1, 3, 2


class StopRequested(Exception):
    pass


@dataclass
class TrainContext:
    spec: JobSpec
    resolved: Resolved
    job_dir: Path
    events: EventWriter
    base: object = None  # models.loader.BaseModel
    data: PreparedData | None = None
    latents: LatentSource | None = None
    noise_scheduler: object = None
    optimizer: torch.optim.Optimizer | None = None
    lr_scheduler: object = None
    noise_generator: torch.Generator = field(default_factory=torch.Generator)
    caption_rng: random.Random = field(default_factory=random.Random)
    progress: Progress = field(default_factory=Progress)
    total_steps: int = 0
    steps_per_epoch: int = 0
    num_epochs: int = 0
    weight_dtype: torch.dtype = torch.float32
    autocast_dtype: torch.dtype | None = None
    trainable_params: list[torch.nn.Parameter] = field(default_factory=list)  # all LoRA weights, for clipping
    grad_scaler: torch.amp.GradScaler | None = None  # fp16 only: bf16 has fp32's range and needs none
    stop_reason: str | None = None
    stop_at_step: int | None = None  # tests: behave as if cancelled after this step
    saved_files: list[str] = field(default_factory=list)
    scan: object = None  # data.scan.DatasetScan
    last_samples: list[Path] = field(default_factory=list)
    prior: object = None  # prior.ClassImagePrior / LoraOffPrior / TriggerOffPrior for the DreamBooth modes
    bucket_manager: object = None  # data.buckets.BucketManager of the instance data (class images reuse it)
    ema: object = None  # diffusers EMAModel of a full fine-tune with finetune.ema

    @property
    def device(self) -> torch.device:
        return self.resolved.device

    @property
    def stop_file(self) -> Path:
        return self.job_dir / "stop"


def precision_dtypes(mixed_precision: str, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(frozen weight dtype, autocast dtype). The CPU always trains in fp32: bf16 there is slower, not faster."""
    if device.type != "cuda" or mixed_precision == "no":
        return torch.float32, None
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return dtype, dtype


class StopSignals:
    """First SIGINT/SIGTERM asks for a graceful stop; a second one falls through to the default (kill)."""

    def __init__(self, ctx: TrainContext):
        self.ctx = ctx
        self.previous: dict[int, object] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.ctx.stop_reason is not None:
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.ctx.stop_reason = "signal"

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def stop_requested(ctx: TrainContext) -> bool:
    if ctx.stop_reason is None and ctx.stop_file.exists():
        ctx.stop_reason = "stop file"
    if (
        ctx.stop_reason is None
        and ctx.stop_at_step is not None
        and ctx.progress.global_step >= ctx.stop_at_step
    ):
        ctx.stop_reason = "test stop"
    return ctx.stop_reason is not None


def _optimizer_step(ctx: TrainContext) -> None:
    clip = ctx.spec.training.max_grad_norm
    if ctx.grad_scaler is not None:
        ctx.grad_scaler.unscale_(ctx.optimizer)
    if clip and clip > 0:
        torch.nn.utils.clip_grad_norm_(ctx.trainable_params, clip)
    if ctx.grad_scaler is not None:
        ctx.grad_scaler.step(ctx.optimizer)  # skips the step when fp16 gradients overflowed
        ctx.grad_scaler.update()
    else:
        ctx.optimizer.step()
    if ctx.ema is not None:
        ctx.ema.step(ctx.trainable_params)
    ctx.lr_scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.progress.global_step += 1


class _ProgressReporter:
    def __init__(self, ctx: TrainContext):
        self.ctx = ctx
        self.smoothed: float | None = None
        self.last_emit = 0.0
        self.window: list[tuple[float, int]] = []

    def step(self, loss: float) -> None:
        ctx = self.ctx
        self.smoothed = loss if self.smoothed is None else 0.95 * self.smoothed + 0.05 * loss
        now = time.time()
        self.window.append((now, ctx.progress.global_step))
        self.window = self.window[-50:]
        span = self.window[-1][0] - self.window[0][0]
        its = (self.window[-1][1] - self.window[0][1]) / span if span > 0 else 0.0
        step, total = ctx.progress.global_step, ctx.total_steps
        if now - self.last_emit < 0.5 and step not in (1, total):
            return
        self.last_emit = now
        ctx.events.emit(
            "progress",
            step=step,
            total_steps=total,
            epoch=ctx.progress.epoch + 1,
            total_epochs=ctx.num_epochs,
            loss=round(loss, 6),
            smoothed_loss=round(self.smoothed, 6),
            lr=ctx.lr_scheduler.get_last_lr()[0],
            it_per_s=round(its, 3),
            eta_s=round((total - step) / its, 1) if its > 0 else None,
        )


def _set_embedding_trainable(ctx: TrainContext) -> None:
    """A learnt trigger word trains for the first network.trigger_train_fraction of the steps only."""
    trigger = ctx.base.trigger_embedding
    if trigger is None:
        return
    wanted = ctx.progress.global_step < embedding_steps(
        ctx.spec.network.trigger_train_fraction, ctx.total_steps
    )
    if trigger.trainable != wanted:
        trigger.set_trainable(wanted)


def train_loop(ctx: TrainContext) -> None:
    accum = ctx.spec.training.gradient_accumulation_steps
    reporter = _ProgressReporter(ctx)
    for module in trainable_components(ctx).values():
        module.train()
    while ctx.progress.global_step < ctx.total_steps:
        epoch = ctx.progress.epoch
        batches = ctx.data.batches(epoch)
        start = ctx.progress.batch_in_epoch * accum
        micro = 0
        epoch_losses: list[float] = []
        for index in range(start, len(batches)):
            _set_embedding_trainable(ctx)
            loss = compute_loss(ctx, batches[index])
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss.item()} at step {ctx.progress.global_step + 1}; lower "
                    "training.learning_rate, or use bf16 instead of fp16 (training.mixed_precision)"
                )
            scaled = loss / accum
            if ctx.grad_scaler is not None:
                scaled = ctx.grad_scaler.scale(scaled)
            with record_function("lora_trainer.backward"):
                scaled.backward()
            micro += 1
            last_batch = index == len(batches) - 1
            if micro % accum and not last_batch:
                continue
            with record_function("lora_trainer.optimizer_step"):
                _optimizer_step(ctx)
            ctx.progress.batch_in_epoch += 1
            epoch_losses.append(loss.item())
            reporter.step(epoch_losses[-1])
            if ctx.progress.global_step >= ctx.total_steps:
                break
            if stop_requested(ctx):
                raise StopRequested
        ctx.progress.epoch += 1
        if (
            epoch_losses
        ):  # every step counts here, unlike the throttled progress events (kohya: loss/epoch_average)
            mean = sum(epoch_losses) / len(epoch_losses)
            ctx.events.emit(
                "info",
                message=f"epoch {ctx.progress.epoch} average loss {mean:.4f}",
                epoch=ctx.progress.epoch,
                epoch_loss=mean,
            )
        ctx.progress.batch_in_epoch = 0
        finished = ctx.progress.global_step >= ctx.total_steps
        outputs.end_of_epoch(ctx, finished)
        if not finished and stop_requested(ctx):
            raise StopRequested


def _weights_file(ctx: TrainContext) -> str:
    return "weights.safetensors" if is_full_finetune(ctx.spec) else "lora.safetensors"


def save_resume_state(ctx: TrainContext) -> Path:
    full = is_full_finetune(ctx.spec)
    extras: dict[str, object] = {}
    if ctx.ema is not None:
        ema = ctx.ema.state_dict()
        extras["ema"] = {**ema, "shadow_params": [p.detach().cpu() for p in ema["shadow_params"]]}
    class_half = class_images_of(ctx.prior)
    if class_half is not None:
        extras["prior"] = class_half.position()
    return save_state(
        ctx.job_dir / "state",
        weights=weights_state(ctx) if full else outputs.collect_lora_state(ctx),
        weights_file=_weights_file(ctx),
        extras=extras,
        optimizer=ctx.optimizer,
        scheduler=ctx.lr_scheduler,
        noise_generator=ctx.noise_generator,
        caption_rng=ctx.caption_rng,
        progress=ctx.progress,
        grad_scaler=ctx.grad_scaler,
    )


def restore(ctx: TrainContext) -> None:
    state_dir = ctx.job_dir / "state"
    tensors, progress = load_state(
        state_dir,
        optimizer=ctx.optimizer,
        scheduler=ctx.lr_scheduler,
        noise_generator=ctx.noise_generator,
        caption_rng=ctx.caption_rng,
        grad_scaler=ctx.grad_scaler,
        weights_file=_weights_file(ctx),
    )
    if is_full_finetune(ctx.spec):
        load_weights_state(ctx, tensors)
    else:
        outputs.apply_lora_state(ctx, tensors)
    if ctx.ema is not None:
        saved = load_extra(state_dir, "ema")
        if saved is None:
            raise ValueError(f"the saved state in {state_dir} has no EMA; resume with finetune.ema off")
        ctx.ema.load_state_dict(saved)
        ctx.ema.to(ctx.device)
    class_half = class_images_of(ctx.prior)
    if class_half is not None:
        class_half.restore(load_extra(state_dir, "prior"))
    ctx.progress = progress


def write_job_file(job_dir: Path, spec: JobSpec) -> None:
    job_dir.mkdir(parents=True, exist_ok=True)
    tmp = job_dir / ".job.json.tmp"
    tmp.write_text(json.dumps(spec_to_dict(spec), indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(job_dir / "job.json")


def steps_plan(spec: JobSpec, batches_per_epoch: int) -> tuple[int, int, int]:
    """(steps per epoch, total steps, epochs); max_steps wins over epochs, as in kohya."""
    per_epoch = max(1, math.ceil(batches_per_epoch / spec.training.gradient_accumulation_steps))
    total = spec.training.max_steps or per_epoch * spec.training.epochs
    return per_epoch, total, math.ceil(total / per_epoch)
