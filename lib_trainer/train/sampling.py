"""Sample images during training with diffusers' own pipelines, built from the modules being trained.

The pipelines are assembled from the in-memory UNet (with its live LoRA layers), text encoders and VAE, so
a sample shows exactly what the current weights do; nothing is loaded or fetched.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

SAMPLERS = {
    "euler_a": "EulerAncestralDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
}


@dataclass
class SampleRequest:
    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    cfg_scale: float
    steps: int


def make_sampler(name: str, training_scheduler):
    import diffusers

    cls = getattr(diffusers, SAMPLERS[name])
    return cls.from_config(training_scheduler.config)


def build_pipeline(base, sampler_name: str, training_scheduler):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = make_sampler(sampler_name, training_scheduler)
    if base.arch.is_sdxl:
        pipe = StableDiffusionXLPipeline(
            vae=base.vae,
            text_encoder=base.text_encoders[0],
            text_encoder_2=base.text_encoders[1],
            tokenizer=base.tokenizers[0],
            tokenizer_2=base.tokenizers[1],
            unet=base.unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=False,
        )
        return pipe
    pipe = StableDiffusionPipeline(
        vae=base.vae,
        text_encoder=base.text_encoders[0],
        tokenizer=base.tokenizers[0],
        unet=base.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe


def text_inputs(
    base, prompt: str, negative_prompt: str, n: int, clip_skip: int, device: torch.device
) -> dict:
    """Pipeline text inputs for n images, as embeddings from training's own text path: CLIP skip means
    exactly what it means in training (diffusers' own clip_skip wants a `text_model` level that transformers
    5's CLIPTextModel no longer has), and a learnt trigger embedding (`base.trigger_embedding`) replaces the
    trigger word as it did in training. SDXL's pipeline would use the same penultimate layers and pooled
    projection."""
    from .conditioning import encode_sd, encode_sdxl

    texts = [prompt, negative_prompt or ""]
    trigger = base.trigger_embedding
    if base.arch.is_sdxl:
        embeds, pooled = encode_sdxl(base.text_encoders, base.tokenizers, texts, device, trigger)
        return {
            "prompt_embeds": embeds[:1].expand(n, -1, -1),
            "negative_prompt_embeds": embeds[1:].expand(n, -1, -1),
            "pooled_prompt_embeds": pooled[:1].expand(n, -1),
            "negative_pooled_prompt_embeds": pooled[1:].expand(n, -1),
        }
    embeds = encode_sd(base.text_encoders[0], base.tokenizers[0], texts, clip_skip, device, trigger)
    return {
        "prompt_embeds": embeds[:1].expand(n, -1, -1),
        "negative_prompt_embeds": embeds[1:].expand(n, -1, -1),
    }


def generate_samples(
    base,
    requests: list[SampleRequest],
    out_dir: Path,
    stem: str,
    *,
    sampler_name: str,
    training_scheduler,
    clip_skip: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> list[Path]:
    """Render each request with its own seed; returns the written PNG paths."""
    pipe = build_pipeline(base, sampler_name, training_scheduler)
    pipe.set_progress_bar_config(disable=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    cpu_rng_state = torch.get_rng_state()  # sampling must not shift the training random streams
    with torch.no_grad(), autocast:
        for index, req in enumerate(requests):
            generator = torch.Generator(device="cpu").manual_seed(req.seed)
            image = pipe(
                **text_inputs(base, req.prompt, req.negative_prompt, 1, clip_skip, device),
                width=req.width,
                height=req.height,
                guidance_scale=req.cfg_scale,
                num_inference_steps=req.steps,
                generator=generator,
            ).images[0]
            path = out_dir / f"{stem}_{index:02d}.png"
            tmp = path.with_name(f".{path.name}.tmp")
            image.save(tmp, format="PNG")
            tmp.replace(path)
            written.append(path)
    torch.set_rng_state(cpu_rng_state)
    return written
