"""Recognise a single-file checkpoint and derive the diffusers configs of its parts from its tensor shapes.

Configs are derived, not looked up, so the same code serves full-size SD1/SD2/SDXL models and the tiny
test models, and nothing has to be downloaded. The only facts not stored in the weights are attention head
counts (SD1: 8 heads; SD2/SDXL and OpenCLIP: 64-wide heads; OpenAI CLIP: 64-wide heads) and the prediction
type of SD2 models, which comes from the job spec, a sidecar `.yaml` or the file's metadata.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .ldm_layout import (
    SD1_TE_PREFIX,
    SD2_TE_PREFIX,
    SDXL_TE1_PREFIX,
    SDXL_TE2_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
)

Shapes = Mapping[str, tuple[int, ...]]

VAE_SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


class ModelFormatError(ValueError):
    """A checkpoint the trainer cannot use; the message says why and what to do."""


@dataclass
class TextEncoderInfo:
    """Where one text encoder lives in the file and how to rebuild it with transformers."""

    prefix: str
    openclip: bool
    config: dict
    with_projection: bool = False
    dropped_last_layer: bool = False


@dataclass
class ArchInfo:
    family: str  # "sd1" | "sd2" | "sdxl"
    prediction_type: str  # "epsilon" | "v_prediction"
    unet_config: dict
    vae_config: dict
    text_encoders: list[TextEncoderInfo] = field(default_factory=list)
    prediction_source: str = "default"

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"

    @property
    def bucket_step(self) -> int:
        return 32 if self.is_sdxl else 64

    @property
    def model_type_label(self) -> str:
        if self.family == "sd2" and self.prediction_type == "v_prediction":
            return "sd2-v"
        if self.family == "sd1" and self.prediction_type == "v_prediction":
            return "sd1-v"
        return self.family


def detect_family(shapes: Shapes) -> str:
    """SD1, SD2 or SDXL from the text-encoder keys; refuse what LoRA training here cannot handle."""
    if f"{UNET_PREFIX}input_blocks.0.0.weight" not in shapes:
        if any(k.startswith("encoder.") or k.startswith("decoder.") for k in shapes):
            raise ModelFormatError(
                "this file is a VAE, not a Stable Diffusion checkpoint; pass it as the VAE"
            )
        if any(k.startswith("lora_") for k in shapes):
            raise ModelFormatError("this file is a LoRA, not a Stable Diffusion checkpoint")
        raise ModelFormatError(
            "this file has no Stable Diffusion UNet in the WebUI's single-file layout "
            "(no 'model.diffusion_model.' keys); use a .safetensors checkpoint that the WebUI can load"
        )
    in_ch = shapes[f"{UNET_PREFIX}input_blocks.0.0.weight"][1]
    if in_ch != 4:
        raise ModelFormatError(
            f"this checkpoint's UNet takes {in_ch} input channels (an inpainting or other special model); "
            "train LoRAs on the matching normal (non-inpainting) model instead"
        )
    if any(k.startswith(SDXL_TE2_PREFIX) for k in shapes):
        if not any(k.startswith(SDXL_TE1_PREFIX) for k in shapes):
            raise ModelFormatError("SDXL refiner checkpoints are not supported; use an SDXL base model")
        return "sdxl"
    if any(k.startswith(SD2_TE_PREFIX) for k in shapes):
        return "sd2"
    if any(k.startswith(SD1_TE_PREFIX) for k in shapes):
        return "sd1"
    raise ModelFormatError(
        "this checkpoint has no text encoder that the trainer recognises (SD1, SD2 or SDXL)"
    )


def _indices(shapes: Shapes, pattern: str) -> set[int]:
    rx = re.compile(pattern)
    return {int(m[1]) for k in shapes if (m := rx.match(k))}


def unet_config_from_shapes(shapes: Shapes, family: str, pooled_dim: int | None = None) -> dict:
    p = UNET_PREFIX
    model_channels, in_channels = shapes[f"{p}input_blocks.0.0.weight"][:2]
    input_ids = _indices(shapes, re.escape(p) + r"input_blocks\.(\d+)\.")
    down_ids = sorted(_indices(shapes, re.escape(p) + r"input_blocks\.(\d+)\.0\.op\.weight"))
    layers = down_ids[0] - 1 if down_ids else max(input_ids)
    levels = len(down_ids) + 1

    channels, has_attn, depth = [], [], []
    for level in range(levels):
        first = (layers + 1) * level + 1
        channels.append(shapes[f"{p}input_blocks.{first}.0.out_layers.3.weight"][0])
        blocks = _indices(shapes, re.escape(f"{p}input_blocks.{first}.1.transformer_blocks.") + r"(\d+)\.")
        has_attn.append(bool(blocks))
        depth.append(len(blocks) or 1)

    linear_proj = None
    context_dim = None
    for key, shape in shapes.items():
        if key.startswith(p) and key.endswith("proj_in.weight"):
            linear_proj = len(shape) == 2
        if key.startswith(p) and key.endswith("attn2.to_k.weight"):
            context_dim = shape[1]
    if family == "sd1":
        heads: int | list[int] = 8
    else:
        heads = [max(1, c // 64) for c in channels]

    mid_blocks = _indices(shapes, re.escape(f"{p}middle_block.1.transformer_blocks.") + r"(\d+)\.")
    config = {
        "sample_size": 128 if family == "sdxl" else 64,
        "in_channels": in_channels,
        "out_channels": shapes[f"{p}out.2.weight"][0],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_blocks else None,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "cross_attention_dim": context_dim,
        "attention_head_dim": heads,
        "use_linear_projection": bool(linear_proj),
        "transformer_layers_per_block": depth if family == "sdxl" else 1,
    }
    if mid_blocks and family == "sdxl":
        # diffusers takes the mid block depth from the last level's depth; SDXL keeps them equal.
        config["transformer_layers_per_block"][-1] = len(mid_blocks)
    adm = shapes.get(f"{p}label_emb.0.0.weight")
    if adm is not None:
        if pooled_dim is None:
            raise ModelFormatError("SDXL checkpoint without a second text encoder projection")
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=(adm[1] - pooled_dim) // 6,
            projection_class_embeddings_input_dim=adm[1],
        )
    return config


def vae_config_from_shapes(shapes: Shapes, family: str, prefix: str = VAE_PREFIX) -> dict:
    ch = shapes[f"{prefix}encoder.conv_in.weight"][0]
    levels = sorted(_indices(shapes, re.escape(f"{prefix}encoder.down.") + r"(\d+)\."))
    channels = [shapes[f"{prefix}encoder.down.{i}.block.0.conv2.weight"][0] for i in levels]
    layers = len(_indices(shapes, re.escape(f"{prefix}encoder.down.0.block.") + r"(\d+)\."))
    return {
        "in_channels": shapes[f"{prefix}encoder.conv_in.weight"][1],
        "out_channels": shapes[f"{prefix}decoder.conv_out.weight"][0],
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "latent_channels": shapes[f"{prefix}decoder.conv_in.weight"][1],
        "layers_per_block": layers,
        "norm_num_groups": 32 if ch % 32 == 0 else ch,
        "sample_size": 1024 if family == "sdxl" else 512,
        "scaling_factor": VAE_SCALING[family],
    }


def _clip_config(shapes: Shapes, prefix: str, openclip: bool, drop_last: bool) -> dict:
    if openclip:
        vocab, hidden = shapes[f"{prefix}token_embedding.weight"]
        positions = shapes[f"{prefix}positional_embedding"][0]
        layers = len(_indices(shapes, re.escape(f"{prefix}transformer.resblocks.") + r"(\d+)\."))
        inter = shapes[f"{prefix}transformer.resblocks.0.mlp.c_fc.weight"][0]
        proj = shapes.get(f"{prefix}text_projection")
        projection_dim = proj[1] if proj else hidden
        act = "gelu"
    else:
        tm = prefix + "text_model."
        vocab, hidden = shapes[f"{tm}embeddings.token_embedding.weight"]
        positions = shapes[f"{tm}embeddings.position_embedding.weight"][0]
        layers = len(_indices(shapes, re.escape(f"{tm}encoder.layers.") + r"(\d+)\."))
        inter = shapes[f"{tm}encoder.layers.0.mlp.fc1.weight"][0]
        projection_dim = hidden
        act = "quick_gelu"
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers - 1 if drop_last else layers,
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": positions,
        "hidden_act": act,
        "projection_dim": projection_dim,
        "bos_token_id": 49406 if vocab == 49408 else 0,
        "eos_token_id": 49407 if vocab == 49408 else 2,
        "pad_token_id": 49407 if (vocab == 49408 and not openclip) else (0 if openclip else 1),
    }


def text_encoders_from_shapes(shapes: Shapes, family: str) -> list[TextEncoderInfo]:
    """SD2 uses OpenCLIP's penultimate layer, so its last block is dropped as diffusers and kohya do."""
    if family == "sd1":
        return [TextEncoderInfo(SD1_TE_PREFIX, False, _clip_config(shapes, SD1_TE_PREFIX, False, False))]
    if family == "sd2":
        cfg = _clip_config(shapes, SD2_TE_PREFIX, True, True)
        return [TextEncoderInfo(SD2_TE_PREFIX, True, cfg, dropped_last_layer=True)]
    return [
        TextEncoderInfo(SDXL_TE1_PREFIX, False, _clip_config(shapes, SDXL_TE1_PREFIX, False, False)),
        TextEncoderInfo(
            SDXL_TE2_PREFIX, True, _clip_config(shapes, SDXL_TE2_PREFIX, True, False), with_projection=True
        ),
    ]


def prediction_type_hint(checkpoint: Path | None, metadata: Mapping[str, str]) -> tuple[str | None, str]:
    """v-prediction is not visible in the weights: read the sidecar .yaml the WebUI uses, then metadata."""
    if checkpoint is not None:
        yaml_path = checkpoint.with_suffix(".yaml")
        if yaml_path.is_file():
            text = yaml_path.read_text(encoding="utf-8", errors="replace")
            if re.search(r"parameterization:\s*[\"']?v[\"']?\s*$", text, re.M):
                return "v_prediction", f"sidecar {yaml_path.name}"
            return "epsilon", f"sidecar {yaml_path.name}"
    pred = metadata.get("modelspec.prediction_type", "").strip().lower()
    if pred in ("v", "v_prediction", "v-prediction"):
        return "v_prediction", "file metadata"
    if pred in ("epsilon", "eps"):
        return "epsilon", "file metadata"
    return None, "default"


def analyse_checkpoint(
    shapes: Shapes,
    metadata: Mapping[str, str] | None = None,
    checkpoint: Path | None = None,
    prediction_type: str | None = None,
    model_type: str | None = None,
) -> ArchInfo:
    """Everything the loader and trainer need to know about a checkpoint, from shapes alone."""
    family = detect_family(shapes)
    if model_type:
        wanted = {"sd1": "sd1", "sd2": "sd2", "sd2-v": "sd2", "sdxl": "sdxl"}[model_type]
        if wanted != family:
            raise ModelFormatError(
                f"model.model_type says {model_type!r} but the checkpoint is {family.upper()}; "
                "remove model.model_type to let the trainer detect it"
            )
        if model_type == "sd2-v" and prediction_type is None:
            prediction_type = "v_prediction"
    source = "job spec"
    if prediction_type is None:
        prediction_type, source = prediction_type_hint(checkpoint, metadata or {})
    if prediction_type is None:
        prediction_type = "epsilon"
    text_encoders = text_encoders_from_shapes(shapes, family)
    pooled = text_encoders[-1].config["projection_dim"] if family == "sdxl" else None
    return ArchInfo(
        family=family,
        prediction_type=prediction_type,
        unet_config=unet_config_from_shapes(shapes, family, pooled),
        vae_config=vae_config_from_shapes(shapes, family),
        text_encoders=text_encoders,
        prediction_source=source,
    )
