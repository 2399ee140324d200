"""The toy base model: the real SD1 architecture at tiny widths, saved in the real single-file LDM layout.

It is pre-trained on the toy world by `make_toy_model.py` and committed as `data/toy-sd1.safetensors`, so
quality tests load it exactly as they would load a user's checkpoint (the trainer's own loader derives every
config from the tensor shapes; nothing here is a special case for it). This module holds what both the
pre-training script and the tests need: the part configs, the file location, and the writer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from lib_trainer.models.arch import VAE_SCALING
from lib_trainer.models.ldm_layout import (
    SD1_TE_PREFIX,
    clip_state_dict_to_ldm,
    unet_state_dict_to_ldm,
    vae_state_dict_to_ldm,
)

DATA_DIR = Path(__file__).parent / "data"
TOY_MODEL_FILE = DATA_DIR / "toy-sd1.safetensors"
REBUILD_COMMAND = ".venv/bin/python -m tests.quality.make_toy_model"

SCALING_FACTOR = VAE_SCALING["sd1"]
"""SD1's latent scale (0.18215). The toy VAE is rescaled after training so that its latents times this
factor have unit variance, as SD's own VAE was; the trainer then needs nothing special for it."""

IMAGE_SIZE = 64
"""Toy pictures are 64 px; the VAE's 8x downsampling makes the latent 8x8."""

# SD1 layout: attention on the two finer levels and in the middle, none on the coarsest (like SD1's
# [attn, attn, attn, none]); 8 attention heads, which is what the loader assumes for every SD1 model.
# 128 channels (64 until 2026-11-23): at 64 a style LoRA could not lay its texture on shapes it was not
# shown without losing them (docs/quality.md, "A wider base model").
UNET_CONFIG: dict = {
    "block_out_channels": [128, 128, 128],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "sample_size": IMAGE_SIZE // 8,
}

# OpenAI CLIP's text model (SD1's) with the real 49408-token vocabulary and 77 positions, 64 wide (32 until
# 2026-11-23) with one head, as the loader rebuilds it: the toy captions use ~40 words; the width is what
# keeps the committed file small (the token table is a quarter of it).
TEXT_ENCODER_CONFIG: dict = {
    "vocab_size": 49408,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 1,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 64,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

# The same widths as lib_trainer.models.tiny's VAE, written out on purpose: this is the recipe of a committed
# file and must not move when the random test models change.
VAE_CONFIG: dict = {
    "block_out_channels": [32, 32, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": IMAGE_SIZE,
}


def new_unet(width: int | None = None, context_width: int | None = None):
    """The committed recipe's UNet, or (an experiment) one `width` channels wide on every level reading a
    `context_width` wide text encoder."""
    from diffusers import UNet2DConditionModel

    config = dict(UNET_CONFIG)
    if width is not None:
        config["block_out_channels"] = [width] * len(config["block_out_channels"])
    if context_width is not None:
        config["cross_attention_dim"] = context_width
    return UNet2DConditionModel(**config)


def new_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG, scaling_factor=SCALING_FACTOR)


def new_text_encoder(width: int | None = None):
    """The committed recipe's text encoder, or (an experiment) one `width` wide; one attention head per 64
    channels, as the trainer's loader rebuilds it from the tensor shapes."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = dict(TEXT_ENCODER_CONFIG)
    if width is not None:
        config.update(
            hidden_size=width,
            intermediate_size=4 * width,
            projection_dim=width,
            num_attention_heads=max(1, width // 64),
        )
    return CLIPTextModel(CLIPTextConfig(**config))


def rescale_latents(vae, latent_std: float) -> None:
    """Scale the VAE's latent space in place so that latents have std 1/SCALING_FACTOR, without changing
    what it decodes: the encoder's mean rows of quant_conv are multiplied by c, its log-variance shifted by
    2 ln c, and post_quant_conv's inputs divided by c."""
    c = 1.0 / (SCALING_FACTOR * latent_std)
    channels = vae.config.latent_channels
    with torch.no_grad():
        q, pq = vae.quant_conv, vae.post_quant_conv
        q.weight[:channels] *= c
        q.bias[:channels] *= c
        q.bias[channels:] += 2.0 * float(torch.log(torch.tensor(c)))
        pq.weight *= 1.0 / c


def ldm_state_dict(unet, vae, text_encoder, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The parts in the WebUI's single-file layout, through the same converters the trainer's tests use."""
    state = unet_state_dict_to_ldm(unet.state_dict(), unet.config)
    state.update(vae_state_dict_to_ldm(vae.state_dict(), len(vae.config.block_out_channels)))
    state.update(clip_state_dict_to_ldm(text_encoder.state_dict(), SD1_TE_PREFIX))
    return {k: v.detach().to(dtype).contiguous() for k, v in state.items()}


def save_toy_checkpoint(path: Path, state: dict[str, torch.Tensor], recipe: dict) -> Path:
    """Write the checkpoint with modelspec metadata (as SAI's spec and our exporter use) and the recipe."""
    from safetensors.torch import save_file

    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.prediction_type": "epsilon",
        "modelspec.title": "toy world SD1 (issue 8)",
        "modelspec.resolution": f"{IMAGE_SIZE}x{IMAGE_SIZE}",
        "lora_trainer.toy_model": json.dumps(recipe, sort_keys=True),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensors_sha256(path: Path) -> str:
    """A digest of the weights alone (names, dtypes, shapes, bytes): the file's own sha256 also covers its
    metadata, whose recipe records the run's duration, so two runs that made the same model differ there."""
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(path)).items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
