"""Random-weight checkpoints with the real single-file layout of SD1, SD2 and SDXL, at tiny widths.

They exercise every code path of loading, training, export and key mapping in seconds on a CPU. The same
writer also makes full-size random checkpoints for architecture and speed tests (`size="full"`): weights do
not matter for either purpose, the layout and shapes do.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .ldm_layout import (
    SD1_TE_PREFIX,
    SD2_TE_PREFIX,
    SDXL_TE1_PREFIX,
    SDXL_TE2_PREFIX,
    clip_state_dict_to_ldm,
    openclip_state_dict_to_ldm,
    unet_state_dict_to_ldm,
    vae_state_dict_to_ldm,
)

ARCHES = ("sd1", "sd2", "sdxl")

_TINY_VAE = {
    "block_out_channels": [32, 32, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
}
_FULL_VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
}


def _clip(hidden: int, layers: int, inter: int, act: str, projection: int | None = None) -> dict:
    return {
        "vocab_size": 49408,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": 77,
        "hidden_act": act,
        "projection_dim": projection or hidden,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }


def _unet(family: str, size: str) -> dict:
    if size == "full":
        if family == "sdxl":
            return {
                "block_out_channels": [320, 640, 1280],
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                "layers_per_block": 2,
                "transformer_layers_per_block": [1, 2, 10],
                "cross_attention_dim": 2048,
                "attention_head_dim": [5, 10, 20],
                "use_linear_projection": True,
                "addition_embed_type": "text_time",
                "addition_time_embed_dim": 256,
                "projection_class_embeddings_input_dim": 2816,
                "sample_size": 128,
            }
        attn = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
        return {
            "block_out_channels": [320, 640, 1280, 1280],
            "down_block_types": attn,
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "layers_per_block": 2,
            "cross_attention_dim": 768 if family == "sd1" else 1024,
            "attention_head_dim": 8 if family == "sd1" else [5, 10, 20, 20],
            "use_linear_projection": family == "sd2",
            "sample_size": 64,
        }
    if family == "sdxl":
        return {
            "block_out_channels": [32, 64],
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "layers_per_block": 1,
            "transformer_layers_per_block": [1, 2],
            "cross_attention_dim": 64,
            "attention_head_dim": [1, 1],
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 80,
            "sample_size": 8,
        }
    return {
        "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "attention_head_dim": 8 if family == "sd1" else [1, 1],
        "use_linear_projection": family == "sd2",
        "sample_size": 8,
    }


def _text_encoders(family: str, size: str) -> list[tuple[str, bool, dict, bool]]:
    """(prefix, openclip, config, with_projection) per encoder; SD2's OpenCLIP keeps its last layer here."""
    full = size == "full"
    if family == "sd1":
        cfg = _clip(768, 12, 3072, "quick_gelu") if full else _clip(32, 2, 64, "quick_gelu")
        return [(SD1_TE_PREFIX, False, cfg, False)]
    if family == "sd2":
        cfg = _clip(1024, 24, 4096, "gelu") if full else _clip(32, 3, 64, "gelu")
        return [(SD2_TE_PREFIX, True, cfg, False)]
    te1 = _clip(768, 12, 3072, "quick_gelu") if full else _clip(32, 2, 64, "quick_gelu")
    te2 = _clip(1280, 32, 5120, "gelu", 1280) if full else _clip(32, 2, 64, "gelu", 32)
    return [(SDXL_TE1_PREFIX, False, te1, False), (SDXL_TE2_PREFIX, True, te2, True)]


def build_random_state_dict(family: str, size: str = "tiny", seed: int = 0) -> dict[str, torch.Tensor]:
    """The LDM-layout state dict of a random model; initialisation as the libraries do it, seeded."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if family not in ARCHES:
        raise ValueError(f"unknown architecture {family!r}; choose one of {', '.join(ARCHES)}")
    torch.manual_seed(seed)
    unet_cfg = _unet(family, size)
    unet = UNet2DConditionModel(**unet_cfg)
    vae_cfg = dict(_FULL_VAE if size == "full" else _TINY_VAE)
    vae = AutoencoderKL(**vae_cfg)
    state = unet_state_dict_to_ldm(unet.state_dict(), unet.config)
    state.update(vae_state_dict_to_ldm(vae.state_dict(), len(vae_cfg["block_out_channels"])))
    del unet, vae
    for prefix, openclip, cfg, with_proj in _text_encoders(family, size):
        cls = CLIPTextModelWithProjection if with_proj else CLIPTextModel
        te = cls(CLIPTextConfig(**cfg))
        te_state = te.state_dict()
        if openclip:
            te_state["logit_scale"] = torch.tensor(4.6052)
            state.update(openclip_state_dict_to_ldm(te_state, prefix))
        else:
            state.update(clip_state_dict_to_ldm(te_state, prefix))
    return state


def write_random_checkpoint(
    out: Path, family: str, size: str = "tiny", seed: int = 0, v_prediction: bool = False, dtype=None
) -> Path:
    """Write a random checkpoint; `v_prediction` is recorded in modelspec metadata as SAI's spec does."""
    from safetensors.torch import save_file

    state = build_random_state_dict(family, size, seed)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    state = {k: v.contiguous() for k, v in state.items()}
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": {
            "sd1": "stable-diffusion-v1",
            "sd2": "stable-diffusion-v2-768-v" if v_prediction else "stable-diffusion-v2-512",
            "sdxl": "stable-diffusion-xl-v1-base",
        }[family],
        "modelspec.prediction_type": "v" if v_prediction else "epsilon",
        "modelspec.title": f"random {size} {family}",
        "lora_trainer.random_model": json.dumps({"family": family, "size": size, "seed": seed}),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(out)
    return out
