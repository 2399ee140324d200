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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.profiler import record_function  # named phases in profiler traces (bench/profile_step.py, GPU)

from ..spec import JobSpec, spec_to_dict
from . import outputs
from .conditioning import encode_sd, encode_sdxl, sdxl_time_ids
from .dataset_prep import LatentSource, PreparedData, captions_for, sample_latents
from .events import EventWriter
from .finetune import is_full_finetune, load_weights_state, trainable_components, weights_state
from .preflight import Resolved
from .prior import (
    DREAMBOOTH_MODES,
    LORA_OFF,
    TRIGGER_OFF,
    TriggerOffPrior,
    base_model_only,
    class_images_of,
    combine_prior_loss,
)
from .state import Progress, load_extra, load_state, save_state
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


def _encode(ctx: TrainContext, captions: list[str]):
    base, spec = ctx.base, ctx.spec
    trigger = base.trigger_embedding
    grads = spec.network.train_text_encoder or (trigger is not None and trigger.trainable)
    with contextlib.nullcontext() if grads else torch.no_grad():
        if base.arch.is_sdxl:
            return encode_sdxl(base.text_encoders, base.tokenizers, captions, ctx.device, trigger)
        return encode_sd(
            base.text_encoders[0], base.tokenizers[0], captions, spec.model.clip_skip, ctx.device, trigger
        ), None


def _half_loss(
    ctx: TrainContext,
    data: PreparedData,
    latent_source: LatentSource,
    entries: list[int],
    caption_fn: Callable[[list[int]], list[str]],
    *,
    base_model_target: bool = False,
    paired: TriggerOffPrior | None = None,
) -> torch.Tensor:
    """The diffusion loss of one batch of `data`. With `base_model_target` the target is the prediction of
    the base model (LoRA switched off) for the same input, instead of the noise/velocity. With `paired` the
    same noisy latents are denoised again with the prior's captions, towards the base model's prediction for
    them, and that loss joins with the prior's weight."""
    from .noise import diffusion_loss, sample_noise, sample_timesteps, training_target

    base, spec = ctx.base, ctx.spec
    flips = [spec.dataset.flip_aug and ctx.caption_rng.random() < 0.5 for _ in entries]
    sample_ids = [data.entries[e] for e in entries]
    params = torch.stack([latent_source.get(i, f) for i, f in zip(sample_ids, flips, strict=True)])
    latents = sample_latents(params, ctx.noise_generator, base.vae.config.scaling_factor).to(ctx.device)
    captions = caption_fn(entries)  # after the flips: the caption RNG's order is part of reproducibility
    noise = sample_noise(latents, ctx.noise_generator, spec.training.noise_offset)
    timesteps = sample_timesteps(len(entries), ctx.noise_generator).to(ctx.device)
    noisy = ctx.noise_scheduler.add_noise(latents, noise, timesteps)
    autocast = (
        torch.autocast(ctx.device.type, dtype=ctx.autocast_dtype)
        if ctx.autocast_dtype is not None
        else contextlib.nullcontext()
    )

    def predict(captions: list[str]) -> torch.Tensor:
        """The UNet's prediction for the noisy batch with `captions`; a whole multiple of the batch's
        captions denoises the same latents once per group of captions, in one forward pass."""
        copies = len(captions) // len(entries)
        with record_function("lora_trainer.encode_text"):
            context, pooled = _encode(ctx, captions)
        kwargs = {}
        if base.arch.is_sdxl:
            samples = [data.samples[i] for i in sample_ids]
            ids = sdxl_time_ids(
                [s.original_hw for s in samples],
                [s.crop_tl[f] for s, f in zip(samples, flips, strict=True)],
                [(s.bucket[1], s.bucket[0]) for s in samples],
                ctx.device,
                pooled.dtype,
            )
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": ids.repeat(copies, 1)}
        with record_function("lora_trainer.unet_forward"):
            return base.unet(
                noisy.repeat(copies, 1, 1, 1).to(ctx.weight_dtype),
                timesteps.repeat(copies),
                context.to(ctx.weight_dtype),
                **kwargs,
            ).sample

    def loss_of(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return diffusion_loss(
            pred.float(),
            target.float(),
            timesteps=timesteps,
            noise_scheduler=ctx.noise_scheduler,
            min_snr_gamma=spec.training.min_snr_gamma,
            prediction_type=base.arch.prediction_type,
        )

    other = paired.captions(captions) if paired is not None else []
    with autocast:
        # the pair shares the instance half's latents, noise and timesteps, so both go through the LoRA in
        # one batch: one UNet pass instead of two (a 240-step toy job on one CPU thread: 39.8 s -> 30.1 s)
        pred, pair_pred = predict(captions + other).split([len(entries), len(other)])
        if base_model_target:
            with torch.no_grad(), base_model_only(base):
                target = predict(captions).detach()
        if paired is not None:
            with torch.no_grad(), base_model_only(base):
                pair_target = predict(other).detach()
    if not base_model_target:
        target = training_target(ctx.noise_scheduler, latents, noise, timesteps)
    loss = loss_of(pred, target)
    if paired is None:
        return loss
    return combine_prior_loss(loss, loss_of(pair_pred, pair_target), paired.weight)


def instance_captions(ctx: TrainContext, entries: list[int]) -> list[str]:
    """The captions of an instance batch; DreamBooth's instance prompt, when given, replaces them."""
    prompt = ctx.spec.dreambooth.instance_prompt if ctx.spec.mode in DREAMBOOTH_MODES else ""
    if prompt:
        return [prompt.replace("{trigger}", ctx.spec.dataset.trigger_word)] * len(entries)
    return captions_for(entries, ctx.data, ctx.spec.dataset, ctx.caption_rng)


def compute_loss(ctx: TrainContext, entries: list[int]) -> torch.Tensor:
    prior = ctx.prior
    paired = prior if prior is not None and prior.kind == TRIGGER_OFF else None
    loss = _half_loss(ctx, ctx.data, ctx.latents, entries, lambda e: instance_captions(ctx, e), paired=paired)
    if prior is None:
        return loss
    if paired is not None:
        if paired.class_half is None:
            return loss
        prior = paired.class_half  # "trigger-off+class-images": a class batch joins the pair's loss
    if prior.kind == LORA_OFF:
        class_loss = _half_loss(
            ctx, ctx.data, ctx.latents, entries, lambda e: [prior.prompt] * len(e), base_model_target=True
        )
    else:
        class_entries = prior.next_batch()
        class_loss = _half_loss(ctx, prior.data, prior.latents, class_entries, prior.captions)
    return combine_prior_loss(loss, class_loss, prior.weight)


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
