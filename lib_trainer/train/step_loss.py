"""The loss of one training step: the instance batch and the DreamBooth prior's halves.

A step is made of halves: the instance batch towards its noise (or velocity), and with a prior one or two
more, each with its own captions, target and weight (prior.py says which). Every half draws its random
numbers (flips, latents, noise, timesteps, captions) in a fixed order, then all halves whose latents share a
shape go through the UNet with the LoRA in ONE forward pass, and the halves whose target is the base model's
prediction go through it in one more, with the LoRA off. Fewer, larger passes are what the hardware wants:
on the 2-core CPU of the quality tests the trigger-off pair in the instance pass took a 240-step job from
39.8 s to 30.1 s, and diffusers' DreamBooth script batches its class images with the instance images for the
same reason. Halves of different shapes (an instance bucket that is not the class images' size) get a pass
each; the losses are the same either way, up to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.profiler import record_function  # named phases in profiler traces (bench/profile_step.py, GPU)

from .conditioning import encode_sd, encode_sdxl, sdxl_time_ids
from .dataset_prep import LatentSource, PreparedData, captions_for, sample_latents
from .prior import DREAMBOOTH_MODES, LORA_OFF, TRIGGER_OFF, base_model_only, combine_prior_loss

if TYPE_CHECKING:
    from .runner import TrainContext


@dataclass
class NoisyBatch:
    """One batch of `data`, noised: what the UNet is asked to denoise, and what it takes to score it."""

    data: PreparedData
    sample_ids: list[int]
    flips: list[bool]
    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    noisy: torch.Tensor
    captions: list[str]


@dataclass
class Half:
    """A part of the step's loss: `batch` denoised with `captions`, towards the batch's own noise or, with
    `base_model_target`, towards the base model's prediction for the same input (LoRA off)."""

    batch: NoisyBatch
    captions: list[str]
    weight: float = 1.0
    base_model_target: bool = False


def noisy_batch(
    ctx: TrainContext,
    data: PreparedData,
    latent_source: LatentSource,
    entries: list[int],
    caption_fn: Callable[[list[int]], list[str]],
) -> NoisyBatch:
    """Draw a batch's flips, latents, captions, noise and timesteps, in this order (the order of the two
    random generators is part of a job's reproducibility, and of resuming it)."""
    from .noise import sample_noise, sample_timesteps

    spec = ctx.spec
    flips = [spec.dataset.flip_aug and ctx.caption_rng.random() < 0.5 for _ in entries]
    sample_ids = [data.entries[e] for e in entries]
    params = torch.stack([latent_source.get(i, f) for i, f in zip(sample_ids, flips, strict=True)])
    latents = sample_latents(params, ctx.noise_generator, ctx.base.vae.config.scaling_factor).to(ctx.device)
    captions = caption_fn(entries)  # after the flips: the caption RNG's order is part of reproducibility
    noise = sample_noise(latents, ctx.noise_generator, spec.training.noise_offset)
    timesteps = sample_timesteps(len(entries), ctx.noise_generator).to(ctx.device)
    noisy = ctx.noise_scheduler.add_noise(latents, noise, timesteps)
    return NoisyBatch(data, sample_ids, flips, latents, noise, timesteps, noisy, captions)


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


def _time_ids(ctx: TrainContext, batch: NoisyBatch, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's size and crop conditioning of each picture in the batch."""
    samples = [batch.data.samples[i] for i in batch.sample_ids]
    return sdxl_time_ids(
        [s.original_hw for s in samples],
        [s.crop_tl[f] for s, f in zip(samples, batch.flips, strict=True)],
        [(s.bucket[1], s.bucket[0]) for s in samples],
        ctx.device,
        dtype,
    )


def _forward(ctx: TrainContext, halves: list[Half]) -> list[torch.Tensor]:
    """The UNet's prediction for each half; halves whose latents share a shape run in one forward pass."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, half in enumerate(halves):
        groups.setdefault(tuple(half.batch.noisy.shape[1:]), []).append(index)
    preds: list[torch.Tensor | None] = [None] * len(halves)
    for members in groups.values():
        group = [halves[i] for i in members]
        with record_function("lora_trainer.encode_text"):
            context, pooled = _encode(ctx, [c for half in group for c in half.captions])
        kwargs = {}
        if ctx.base.arch.is_sdxl:
            ids = torch.cat([_time_ids(ctx, half.batch, pooled.dtype) for half in group])
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": ids}
        with record_function("lora_trainer.unet_forward"):
            out = ctx.base.unet(
                torch.cat([half.batch.noisy for half in group]).to(ctx.weight_dtype),
                torch.cat([half.batch.timesteps for half in group]),
                context.to(ctx.weight_dtype),
                **kwargs,
            ).sample
        for index, pred in zip(members, out.split([len(half.captions) for half in group]), strict=True):
            preds[index] = pred
    return preds


def _diffusion_loss(ctx: TrainContext, batch: NoisyBatch, pred: torch.Tensor, target: torch.Tensor):
    from .noise import diffusion_loss

    return diffusion_loss(
        pred.float(),
        target.float(),
        timesteps=batch.timesteps,
        noise_scheduler=ctx.noise_scheduler,
        min_snr_gamma=ctx.spec.training.min_snr_gamma,
        prediction_type=ctx.base.arch.prediction_type,
    )


def halves_loss(ctx: TrainContext, halves: list[Half]) -> torch.Tensor:
    """The first half's loss plus each further half's loss times its weight (diffusers' DreamBooth formula,
    each half averaged over its own samples)."""
    from .noise import training_target

    autocast = (
        torch.autocast(ctx.device.type, dtype=ctx.autocast_dtype)
        if ctx.autocast_dtype is not None
        else contextlib.nullcontext()
    )
    distilled = [half for half in halves if half.base_model_target]
    base_preds: list[torch.Tensor] = []
    with autocast:
        preds = _forward(ctx, halves)
        if distilled:
            with torch.no_grad(), base_model_only(ctx.base):
                base_preds = _forward(ctx, distilled)
    base_targets = iter(base_preds)
    total = None
    for half, pred in zip(halves, preds, strict=True):
        if half.base_model_target:
            target = next(base_targets)
        else:
            target = training_target(
                ctx.noise_scheduler, half.batch.latents, half.batch.noise, half.batch.timesteps
            )
        loss = _diffusion_loss(ctx, half.batch, pred, target)
        total = loss if total is None else combine_prior_loss(total, loss, half.weight)
    return total


def half_loss(
    ctx: TrainContext,
    data: PreparedData,
    latent_source: LatentSource,
    entries: list[int],
    caption_fn: Callable[[list[int]], list[str]],
    *,
    base_model_target: bool = False,
) -> torch.Tensor:
    """The loss of one batch of `data` on its own (a step's halves, one at a time: what the tests compare
    the batched step against)."""
    batch = noisy_batch(ctx, data, latent_source, entries, caption_fn)
    return halves_loss(ctx, [Half(batch, batch.captions, base_model_target=base_model_target)])


def instance_captions(ctx: TrainContext, entries: list[int]) -> list[str]:
    """The captions of an instance batch; DreamBooth's instance prompt, when given, replaces them."""
    prompt = ctx.spec.dreambooth.instance_prompt if ctx.spec.mode in DREAMBOOTH_MODES else ""
    if prompt:
        return [prompt.replace("{trigger}", ctx.spec.dataset.trigger_word)] * len(entries)
    return captions_for(entries, ctx.data, ctx.spec.dataset, ctx.caption_rng)


def step_halves(ctx: TrainContext, entries: list[int]) -> list[Half]:
    """The halves of a step on the instance batch `entries`, their random numbers drawn in the order the
    trainer has always drawn them (instance batch first, then the prior's class batch)."""
    instance = noisy_batch(ctx, ctx.data, ctx.latents, entries, lambda e: instance_captions(ctx, e))
    halves = [Half(instance, instance.captions)]
    prior = ctx.prior
    if prior is None:
        return halves
    if prior.kind == TRIGGER_OFF:
        # the pair: the same noisy latents with the captions minus the trigger, towards the base model
        halves.append(Half(instance, prior.captions(instance.captions), prior.weight, base_model_target=True))
        prior = prior.class_half  # "trigger-off+class-images": a class batch joins the pair
        if prior is None:
            return halves
    if prior.kind == LORA_OFF:
        batch = noisy_batch(ctx, ctx.data, ctx.latents, entries, lambda e: [prior.prompt] * len(e))
        halves.append(Half(batch, batch.captions, prior.weight, base_model_target=True))
    else:
        batch = noisy_batch(ctx, prior.data, prior.latents, prior.next_batch(), prior.captions)
        halves.append(Half(batch, batch.captions, prior.weight))
    return halves


def compute_loss(ctx: TrainContext, entries: list[int]) -> torch.Tensor:
    """The loss of a training step on the instance batch `entries`, with the job's prior if it has one."""
    return halves_loss(ctx, step_halves(ctx, entries))
