"""Pre-train the toy base model on the toy world, from random weights, on the CPU.

    .venv/bin/python -m tests.quality.make_toy_model            # everything, writes data/toy-sd1.safetensors
    .venv/bin/python -m tests.quality.make_toy_model --stage vae  # only the VAE (kept in --work)

First the VAE is trained as an image codec on every toy picture (the held-out shape and style included: a
real SD VAE is trained on broad images and can encode anything, the UNet and text encoder are what never
saw the held-out concepts), then its latents are rescaled to SD1's 0.18215. Then the UNet and the text
encoder are trained together on the known part of the world only, as SD was trained: epsilon prediction on
SD's DDPM schedule, 10 % empty captions (so classifier-free guidance works), user-style captions with a few
generic "shape" ones (so the class prompt means something), an EMA of the weights (what is saved). They are
trained in two stages (`--unet-seed 3 4`), the second on new pictures from the first's averaged weights with
the learning rate warmed up again (docs/quality.md, "The toy base model"). The defaults are the committed
model's recipe: 1500 VAE steps at 1e-3, two UNet stages of 2000 steps, fp32 (until 2026-11-24 the committed
model was one of 2000 VAE steps at 2e-3 and 3000-step stages, which this script could not remake exactly).
The noise schedule, timestep draws, targets and loss are the trainer's own functions.

Runs are deterministic for a given seed and thread count (the VAE's first 201 steps, run three times at 2
threads, end with the same weights to 16 digits of their sum); other thread counts or CPUs give a model made
the same way but not the same weights (float summation order), and the toy subject LoRA is sensitive to such
differences in its base model (docs/quality.md). On the CPU that made it, this command with its defaults
remade the committed model's tensors bit for bit (2026-11-24). The committed file's sha256, and that of its
tensors (`toy_model.tensors_sha256`: the file's own also covers the run's duration in its metadata), are
recorded in docs/quality.md, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from torch.nn.attention import SDPBackend, sdpa_kernel

from lib_trainer.models.tokenizers import load_clip_tokenizer
from lib_trainer.train.noise import (
    diffusion_loss,
    make_noise_scheduler,
    sample_noise,
    sample_timesteps,
    training_target,
)

from . import toy_model as tm
from . import toyworld as tw

VAE_SEED, UNET_SEEDS = 1, (3, 4)
CAPTION_VARIANTS = 4
EMPTY_CAPTION_PROB = 0.1
EMA_DECAY = 0.999
PRECISIONS = ("bf16", "fp32")


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def render_all(scenes: list[tw.Scene]) -> torch.Tensor:
    """uint8 [N, 3, 64, 64]."""
    arrays = [np.asarray(tw.render(s, tm.IMAGE_SIZE), dtype=np.uint8) for s in scenes]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def to_pixels(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 127.5 - 1.0


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# --- stage 1: VAE -------------------------------------------------------------------------------------------


def train_vae(steps: int, batch: int, n_images: int, peak_lr: float = 2e-3) -> torch.nn.Module:
    """Every VAE starts on a plateau (the decoder paints one flat colour) that ends after a few hundred steps;
    at `peak_lr` 1e-3 it ended soonest of 5e-4 / 1e-3 / 2e-3 / 4e-3 (held-out L1 after 400 steps: 0.50 / 0.31 /
    0.38 / 0.61), and 1500 steps at 1e-3 end at a held-out L1 of 0.037 (2000 at 2e-3: 0.050)."""
    torch.manual_seed(VAE_SEED)
    scenes = tw.sample_scenes(VAE_SEED, n_images, shapes=tw.ALL_SHAPES, styles=tw.STYLES)
    images = render_all(scenes)
    held_out = to_pixels(
        render_all(tw.sample_scenes(VAE_SEED + 100, 256, shapes=tw.ALL_SHAPES, styles=tw.STYLES))
    )
    log(f"vae: {len(images)} training pictures rendered")
    vae = tm.new_vae()
    with torch.no_grad():
        # Start with a near-deterministic posterior (std ~0.0025): from the default std 1 the sampled noise
        # drowns the young latents and the decoder learns to paint every shape one average brown.
        vae.quant_conv.bias[vae.config.latent_channels :] = -12.0
    optimizer = torch.optim.AdamW(vae.parameters(), lr=peak_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(VAE_SEED)
    for step in range(steps):
        set_lr(optimizer, cosine_lr(step, steps, peak_lr, 100))
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        x = to_pixels(images[idx])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        rec = reconstruction_loss(recon, x)
        loss = rec + 1e-7 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"vae step {step}: loss {rec.item():.4f}; held-out L1 {vae_l1(vae, held_out):.4f}")
    vae.eval()
    std = latent_std(vae, to_pixels(images[:1024]))
    tm.rescale_latents(vae, std)
    log(
        f"vae: latent std {std:.3f} rescaled to {1 / tm.SCALING_FACTOR:.3f}; held-out L1 {vae_l1(vae, held_out):.4f}"
    )
    return vae


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 + L2 with the shape's pixels weighted 10x: a shape covers ~10 % of the picture, so a plain mean
    is happy with a decoder that gets the background right and paints every shape one average colour."""
    corner = x[:, :, :1, :1]
    foreground = ((x - corner).abs().amax(dim=1, keepdim=True) > 0.08).float()
    weight = 1.0 + 9.0 * foreground
    err = recon - x
    return ((err.abs() + err.pow(2)) * weight).sum() / (weight.sum() * x.shape[1])


@torch.no_grad()
def vae_l1(vae, pixels: torch.Tensor) -> float:
    was_training = vae.training
    vae.eval()
    recon = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    vae.train(was_training)
    return (recon.clamp(-1, 1) - pixels).abs().mean().item()


@torch.no_grad()
def latent_std(vae, pixels: torch.Tensor) -> float:
    means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(128)])
    return means.std().item()


# --- stage 2: UNet + text encoder ---------------------------------------------------------------------------


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the scaled posterior per picture, as the trainer caches them."""
    means, stds = [], []
    for chunk in images.split(256):
        dist = vae.encode(to_pixels(chunk)).latent_dist
        means.append(dist.mean * tm.SCALING_FACTOR)
        stds.append(dist.std * tm.SCALING_FACTOR)
    return torch.cat(means), torch.cat(stds)


def caption_ids(scenes: list[tw.Scene], tokenizer, seed: int) -> torch.Tensor:
    """[N, CAPTION_VARIANTS, 77] token ids: each picture with several user-style captions (sentences and
    tags, size/position sometimes left out, 'shape' for the shape now and then)."""
    rng = random.Random(seed)
    texts = [
        tw.caption(s, rng.choice(tw.CAPTION_KINDS), rng, generic_prob=tw.PRETRAINING_GENERIC_PROB)
        for s in scenes
        for _ in range(CAPTION_VARIANTS)
    ]
    ids = tokenizer(
        texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    return ids.view(len(scenes), CAPTION_VARIANTS, -1)


def padding_penalty(
    context: torch.Tensor, tokens: torch.Tensor, empty_context: torch.Tensor, eos_id: int
) -> torch.Tensor:
    """How far the padding positions' states (after each caption's first end token) are from the empty
    prompt's at the same positions, relative to the size of those states: 0 when padding carries nothing.

    Why it exists: a causal text encoder can write the whole caption into every padding position, and the
    jointly trained toy model learns to read only that summary, with cross-attention spread evenly over all
    77 positions (docs/quality.md, "Why the trigger does not bind"). Pushing padding towards a constant makes
    the UNet read the words' own positions, as SD's cross-attention does.
    """
    is_eos = tokens == eos_id
    # a row without an end token (never from the CLIP tokenizer, which always ends with one) has no padding
    first_eos = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), tokens.shape[1])
    positions = torch.arange(tokens.shape[1], device=tokens.device)[None]
    mask = (positions > first_eos[:, None]).to(context.dtype)[..., None]
    if mask.sum() == 0:
        return context.new_zeros(())
    squared = ((context - empty_context[None]) ** 2 * mask).sum() / (mask.sum() * context.shape[-1])
    # the empty prompt is all padding after its start token: its mean square is the size of a padding state
    return squared / empty_context[1:].pow(2).mean()


@contextlib.contextmanager
def compute_precision(precision: str) -> Iterator[None]:
    """bf16: autocast plus PyTorch's plain ("math") attention. Measured on this repo's 2-core AMX CPU at batch
    64: a UNet step 637 ms in fp32, 469 ms so; autocast with the default (flash) attention is slower than fp32
    (758 ms), its bf16 backward alone takes ~380 ms a step. A CPU without bf16 matrix units (AMX) gains
    nothing. Not the committed model's recipe (docs/quality.md, "A 47-minute recipe")."""
    if precision == "fp32":
        yield
        return
    with sdpa_kernel(SDPBackend.MATH), torch.autocast("cpu", dtype=torch.bfloat16):
        yield


def train_unet(
    vae,
    steps: int,
    batch: int,
    n_images: int,
    lr: float,
    seed: int,
    init: Path | None,
    padding_weight: float = 0.0,
    unet_width: int | None = None,
    text_width: int | None = None,
    precision: str = "fp32",
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """From random weights, or (`init`) continuing from a toy checkpoint's UNet and text encoder.
    `padding_weight` > 0 adds `padding_penalty` to the loss (an experiment; the committed model has 0).
    `precision` bf16 computes the forward pass in bfloat16 (weights, optimizer and EMA stay fp32)."""
    torch.manual_seed(seed)
    scenes = tw.base_pretraining_set(seed, n_images)
    means, stds = encode_latents(vae, render_all(scenes))
    log(f"unet: {len(scenes)} pictures encoded; latent std {means.std().item():.3f}")
    tokenizer = load_clip_tokenizer()
    ids = caption_ids(scenes, tokenizer, seed)
    empty = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]

    if init is None:
        unet = tm.new_unet(unet_width, text_width)
        text_encoder = tm.new_text_encoder(text_width)
    else:
        from lib_trainer.models.loader import load_base_model

        base = load_base_model(init)
        unet, text_encoder = base.unet.float(), base.text_encoders[0].float()
        log(f"unet: continuing from {init}")
    unet.train()
    text_encoder.train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    # diffusers' EMAModel, as the full fine-tune uses it; its warm-up grows the decay as (1+n)/(10+n)
    ema = EMAModel(params, decay=EMA_DECAY)
    scheduler = make_noise_scheduler("epsilon")
    gen = torch.Generator().manual_seed(seed)
    running = None
    for step in range(steps):
        set_lr(optimizer, cosine_lr(step, steps, lr, 200))
        idx = torch.randint(0, len(scenes), (batch,), generator=gen)
        variant = torch.randint(0, CAPTION_VARIANTS, (batch,), generator=gen)
        tokens = ids[idx, variant].clone()
        drop = torch.rand(batch, generator=gen) < EMPTY_CAPTION_PROB
        tokens[drop] = empty
        eps = torch.randn(means[idx].shape, generator=gen)
        latents = means[idx] + stds[idx] * eps
        noise = sample_noise(latents, gen)
        timesteps = sample_timesteps(batch, gen)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with compute_precision(precision):
            context = text_encoder(tokens)[0]
            pred = unet(noisy, timesteps, context).sample.float()
        loss = diffusion_loss(
            pred,
            training_target(scheduler, latents, noise, timesteps),
            timesteps=timesteps,
            noise_scheduler=scheduler,
            min_snr_gamma=5.0,
            prediction_type="epsilon",
        )
        if padding_weight > 0:
            with torch.no_grad(), compute_precision(precision):
                empty_context = text_encoder(empty[None])[0][0].float()
            loss = loss + padding_weight * padding_penalty(
                context, tokens, empty_context, tokenizer.eos_token_id
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.step(params)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 200 == 0 or step == steps - 1:
            log(f"unet step {step}: loss {running:.4f}")
    ema.copy_to(params)  # what is saved: the averaged weights
    return unet.eval(), text_encoder.eval()


# --- main ---------------------------------------------------------------------------------------------------


VAE_ARGS = ("vae_steps", "vae_batch", "vae_images", "vae_lr")


def vae_recipe_file(vae_file: Path) -> Path:
    return vae_file.with_suffix(".json")


def read_vae_recipe(vae_file: Path) -> dict:
    """The settings that made the VAE in `--work`, written beside it by `--stage vae`: a `--stage unet` run's
    own --vae-* flags describe nothing it did, so its checkpoint records these instead."""
    path = vae_recipe_file(vae_file)
    if not path.is_file():
        return {"unknown": f"{path.name} missing: {vae_file.name} was made before its settings were recorded"}
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", choices=("all", "vae", "unet"), default="all")
    ap.add_argument("--work", type=Path, default=Path("outputs/toy-model-work"), help="intermediate files")
    ap.add_argument("--out", type=Path, default=tm.TOY_MODEL_FILE)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (results depend on it, see above)")
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--vae-images", type=int, default=8000)
    ap.add_argument("--vae-lr", type=float, default=1e-3, help="peak learning rate (see train_vae)")
    ap.add_argument("--unet-steps", type=int, default=2000, help="steps of each UNet stage")
    ap.add_argument("--unet-batch", type=int, default=64)
    ap.add_argument("--unet-images", type=int, default=16000, help="pictures of each UNet stage")
    ap.add_argument("--unet-lr", type=float, default=6e-4)
    ap.add_argument(
        "--unet-seed",
        type=int,
        nargs="+",
        default=list(UNET_SEEDS),
        help="one UNet stage per seed (its pictures, captions and noise), each continuing from the one before",
    )
    ap.add_argument(
        "--padding-penalty",
        type=float,
        default=0.0,
        help="weight of the padding penalty (an experiment, see padding_penalty; the committed model: 0)",
    )
    ap.add_argument(
        "--unet-width",
        type=int,
        help="UNet channels on every level (the committed model: 128; 64 until 2026-11-23)",
    )
    ap.add_argument(
        "--text-width", type=int, help="text encoder width (the committed model: 64; 32 until 2026-11-23)"
    )
    ap.add_argument(
        "--unet-precision",
        choices=PRECISIONS,
        default="fp32",
        help="the UNet stages' compute precision (bf16: autocast, 1.3x faster here, see compute_precision)",
    )
    ap.add_argument(
        "--init",
        type=Path,
        help="start the first UNet stage from this toy checkpoint instead of random weights",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    vae_file = args.work / "vae.pt"
    if args.stage in ("all", "vae"):
        started = time.time()
        vae = train_vae(args.vae_steps, args.vae_batch, args.vae_images, args.vae_lr)
        torch.save(vae.state_dict(), vae_file)
        vae_recipe = {k: getattr(args, k) for k in VAE_ARGS}
        vae_recipe.update(threads=args.threads, seconds=round(time.time() - started))
        vae_recipe_file(vae_file).write_text(json.dumps(vae_recipe, sort_keys=True))
        log(f"vae saved to {vae_file}")
        if args.stage == "vae":
            return 0
    if not vae_file.is_file():
        raise SystemExit(f"{vae_file} is missing: run with --stage vae first (or --stage all)")
    vae = tm.new_vae()
    vae.load_state_dict(torch.load(vae_file, weights_only=True))
    vae.eval()
    init = args.init
    for n, seed in enumerate(args.unet_seed, 1):
        last = n == len(args.unet_seed)
        # every stage but the last is written to --work and read back as a checkpoint, so that a chain of
        # stages is exactly the chain of separate `--stage unet --init` runs
        out = args.out if last else args.work / f"unet-stage{n}.safetensors"
        unet_stage(args, vae, vae_file, seed, init, out)
        init = out
    return 0


def unet_stage(
    args: argparse.Namespace, vae, vae_file: Path, seed: int, init: Path | None, out: Path
) -> None:
    """One UNet + text encoder stage, saved to `out` with its recipe and, nested, that of the checkpoint it
    continued from."""
    started = time.time()
    unet, text_encoder = train_unet(
        vae,
        args.unet_steps,
        args.unet_batch,
        args.unet_images,
        args.unet_lr,
        seed,
        init,
        args.padding_penalty,
        args.unet_width,
        args.text_width,
        args.unet_precision,
    )
    skip = ("work", "out", "init", "unet_seed", *VAE_ARGS)
    recipe = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip}
    recipe.update(unet_seed=seed, vae=read_vae_recipe(vae_file))
    if init is not None:
        with safe_open(str(init), framework="pt") as f:
            earlier = json.loads((f.metadata() or {}).get("lora_trainer.toy_model", "{}"))
        recipe["init"] = init.name
        recipe["continues"] = earlier
    recipe.update(torch=torch.__version__, command=tm.REBUILD_COMMAND, seconds=round(time.time() - started))
    path = tm.save_toy_checkpoint(out, tm.ldm_state_dict(unet, vae, text_encoder), recipe)
    size = path.stat().st_size / 1e6
    log(f"wrote {path} ({size:.1f} MB) sha256 {tm.sha256(path)}, its tensors {tm.tensors_sha256(path)}")
    print(json.dumps(recipe))


if __name__ == "__main__":
    raise SystemExit(main())
