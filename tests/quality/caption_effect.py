"""Where, over the noise levels, does a model's denoising depend on the caption? (issue 8 diagnostics)

For pictures of one shape it measures the denoising loss with the right caption and with one word swapped
("circle" -> "square", or the subject's "ohwx shape" -> "shape"), at evenly spread timesteps, with the
same noise for both captions. A positive relative change means the swapped word made denoising worse, so
the model reads that word at that noise level. It explains what sampling does: the shape of a picture is
settled at the high timesteps, so a LoRA whose trigger only matters below them denoises the subject well
once it is there but never starts drawing it (docs/quality.md, "Why the trigger does not bind").

    .venv/bin/python -m tests.quality.caption_effect [--model FILE] [--lora FILE]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lib_trainer.models.loader import BaseModel
from lib_trainer.train.conditioning import encode_sd
from lib_trainer.train.noise import make_noise_scheduler, training_target

from . import harness as h
from . import toyworld as tw
from .make_toy_model import render_all, to_pixels

TIMESTEPS: tuple[int, ...] = tuple(range(50, 1000, 100))


@dataclass
class CaptionEffect:
    timesteps: tuple[int, ...]
    loss: list[float]
    """The mean denoising loss with the pictures' own captions, per timestep."""
    relative: dict[str, list[float]]
    """Per swap: (loss with the swapped caption - loss) / loss, per timestep."""


def _latents(base: BaseModel, scenes: Sequence[tw.Scene]) -> torch.Tensor:
    pixels = to_pixels(render_all(list(scenes)))
    return base.vae.encode(pixels).latent_dist.mean * base.vae.config.scaling_factor


@torch.no_grad()
def denoising_loss(
    base: BaseModel,
    latents: torch.Tensor,
    captions: list[str],
    timesteps: Sequence[int] = TIMESTEPS,
    draws: int = 4,
) -> list[float]:
    """Mean loss against the training target per timestep; the noise depends only on (timestep, draw),
    so two calls with different captions compare like with like."""
    scheduler = make_noise_scheduler(base.arch.prediction_type)
    context = encode_sd(base.text_encoders[0], base.tokenizers[0], captions, 1, torch.device("cpu"))
    out = []
    for t in timesteps:
        generator = torch.Generator().manual_seed(int(t))
        steps = torch.full((len(captions),), int(t))
        total = 0.0
        for _ in range(draws):
            noise = torch.randn(latents.shape, generator=generator)
            noisy = scheduler.add_noise(latents, noise, steps)
            target = training_target(scheduler, latents, noise, steps)
            total += torch.mean((base.unet(noisy, steps, context).sample - target) ** 2).item()
        out.append(total / draws)
    return out


def caption_effect(
    base: BaseModel, scenes: Sequence[tw.Scene], swaps: dict[str, tuple[str, str]], **kwargs
) -> CaptionEffect:
    """`swaps`: name -> (old, new) text replaced in every canonical caption."""
    captions = [tw.caption(s) for s in scenes]
    latents = _latents(base, scenes)
    loss = denoising_loss(base, latents, captions, **kwargs)
    relative = {}
    for name, (old, new) in swaps.items():
        swapped = [c.replace(old, new) for c in captions]
        if swapped == captions:
            raise ValueError(f"swap {name!r}: {old!r} is in none of the captions")
        other = denoising_loss(base, latents, swapped, **kwargs)
        relative[name] = [(b - a) / a for a, b in zip(loss, other, strict=True)]
    return CaptionEffect(tuple(kwargs.get("timesteps", TIMESTEPS)), loss, relative)


def _print(title: str, effect: CaptionEffect) -> None:
    print(f"{title:28s}" + "".join(f"{t:>7d}" for t in effect.timesteps))
    print(f"{'  loss':28s}" + "".join(f"{x:7.4f}" for x in effect.loss))
    for name, values in effect.relative.items():
        print(f"{'  ' + name:28s}" + "".join(f"{x:+7.0%}" for x in values))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=h.TOY_MODEL_FILE, help="toy base model (single file)")
    parser.add_argument("--lora", type=Path, default=None, help="a kohya LoRA file merged at strength 1")
    parser.add_argument("--pictures", type=int, default=24)
    args = parser.parse_args(argv)
    h.TOY_MODEL_FILE = args.model
    base = h.with_lora(args.lora)
    known = tw.sample_scenes(5, args.pictures, shapes=("circle",), styles=("plain",))
    _print(
        "circles",
        caption_effect(
            base, known, {"circle -> square": ("circle", "square"), "circle -> shape": ("circle", "shape")}
        ),
    )
    subject = tw.subject_set(99, args.pictures)
    trigger = f"{tw.SUBJECT_TOKEN} {tw.SUBJECT_CLASS}"
    _print(
        "subject",
        caption_effect(
            base,
            subject,
            {"trigger removed": (trigger, tw.SUBJECT_CLASS), "trigger -> circle": (trigger, "circle")},
        ),
    )


if __name__ == "__main__":
    main()
