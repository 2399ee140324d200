"""Turn a WebUI single-file checkpoint (and optional VAE file) into diffusers / transformers modules, offline.

The key conversion itself is diffusers' own (`diffusers.loaders.single_file_utils`); what we add is the
config, derived from the tensor shapes (see arch.py) instead of fetched from the hub, and strict checks so a
half-converted model can never train silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .arch import ArchInfo, ModelFormatError, TextEncoderInfo, analyse_checkpoint, vae_config_from_shapes
from .checkpoint_io import load_state_dict, tensor_shapes
from .tokenizers import load_clip_tokenizer

log = logging.getLogger(__name__)

_IGNORABLE_TE_KEYS = ("position_ids", "logit_scale")


@dataclass
class BaseModel:
    """The frozen parts of a Stable Diffusion model, ready for LoRA injection."""

    arch: ArchInfo
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list[torch.nn.Module]
    tokenizers: list = field(default_factory=list)
    checkpoint_path: Path | None = None
    vae_path: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    # train.trigger_embedding.TriggerEmbedding while a learnt trigger word is in use (training, or loaded
    # from a LoRA file's bundled embedding): every text path (training, samples) reads prompts through it
    trigger_embedding: object = None


def _empty_init():
    from accelerate import init_empty_weights

    return init_empty_weights()


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, ignorable=()) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    unexpected = [k for k in unexpected if not k.endswith(ignorable)]
    missing = [k for k in missing if not k.endswith(ignorable)]
    if missing or unexpected:
        raise ModelFormatError(
            f"the {what} in this checkpoint does not match the expected layout "
            f"(missing {len(missing)} keys, e.g. {missing[:3]}; unexpected {len(unexpected)}, e.g. {unexpected[:3]}). "
            "The file may be damaged or a model type the trainer does not support."
        )
    # init_empty_weights leaves non-persistent buffers on the meta device; rebuild them on the CPU.
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:
            raise ModelFormatError(f"internal error: buffer {name} of the {what} was not initialised")


def convert_unet_state(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(state, config)


def convert_vae_state(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(state, config)


def build_unet(state: dict[str, torch.Tensor], config: dict) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    converted = convert_unet_state(state, config)
    with _empty_init():
        unet = UNet2DConditionModel.from_config(config)
    _load_strict(unet, converted, "UNet")
    return unet


def build_vae(state: dict[str, torch.Tensor], config: dict) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    converted = convert_vae_state(state, config)
    with _empty_init():
        vae = AutoencoderKL.from_config(config)
    _load_strict(vae, converted, "VAE")
    return vae


def _text_encoder_model(info: TextEncoderInfo) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if info.with_projection else CLIPTextModel
    with _empty_init():
        return cls(CLIPTextConfig(**info.config))


def convert_text_encoder_state(
    state: dict[str, torch.Tensor], info: TextEncoderInfo, model: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """The encoder's tensors in transformers' layout (names as `model.state_dict()` has them)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    model = model if model is not None else _text_encoder_model(info)
    own = {k: v for k, v in state.items() if k.startswith(info.prefix)}
    if info.openclip:
        if info.dropped_last_layer:
            last = f"{info.prefix}transformer.resblocks.{info.config['num_hidden_layers']}."
            own = {k: v for k, v in own.items() if not k.startswith(last)}
            own.pop(info.prefix + "text_projection", None)
        converted = convert_open_clip_checkpoint(model, own, prefix=info.prefix)
    else:
        converted = convert_ldm_clip_checkpoint(own)
        if not any(k.startswith("text_model.") for k in converted):  # old files omit the text_model. level
            converted = {f"text_model.{k}": v for k, v in converted.items()}
    return _match_text_model_prefix(converted, model)


def build_text_encoder(state: dict[str, torch.Tensor], info: TextEncoderInfo) -> torch.nn.Module:
    model = _text_encoder_model(info)
    converted = convert_text_encoder_state(state, info, model)
    _load_strict(model, converted, "text encoder", _IGNORABLE_TE_KEYS)
    embeddings = getattr(model, "text_model", model).embeddings
    if hasattr(embeddings, "position_ids"):
        positions = torch.arange(info.config["max_position_embeddings"]).unsqueeze(0)
        embeddings.register_buffer("position_ids", positions, persistent=False)
    return model


def _match_text_model_prefix(
    state: dict[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Files always say `text_model.`; transformers 5's CLIPTextModel has no such level, WithProjection does."""
    if any(k.startswith("text_model.") for k in model.state_dict()):
        return state
    return {k.removeprefix("text_model."): v for k, v in state.items()}


@torch.no_grad()
def looks_like_v_prediction(unet: torch.nn.Module, context_dim: int) -> bool:
    """The WebUI's own test for SD2 files without a .yaml: at t=999 a v-model's output on a flat grey latent
    is strongly negative relative to the input, an epsilon model's is not. Using the same probe keeps our
    decision identical to the WebUI's for the same file."""
    dtype = next(unet.parameters()).dtype
    x = torch.full((1, 4, 8, 8), 0.5, dtype=dtype)
    cond = torch.full((1, 2, context_dim), 0.5, dtype=dtype)
    out = unet(x, torch.tensor([999]), cond).sample
    return (out - x).float().mean().item() < -1


def load_vae_file(path: Path, family: str) -> torch.nn.Module:
    """A separate VAE file (.safetensors/.pt) in LDM layout, with or without the `first_stage_model.` prefix."""
    state, _ = load_state_dict(path, "VAE")
    shapes = tensor_shapes(state)
    prefix = "first_stage_model." if "first_stage_model.encoder.conv_in.weight" in shapes else ""
    if f"{prefix}encoder.conv_in.weight" not in shapes:
        raise ModelFormatError(f"{path.name} is not a VAE file in the WebUI's layout (no encoder.conv_in)")
    if prefix == "":
        state = {f"first_stage_model.{k}": v for k, v in state.items()}
        shapes = tensor_shapes(state)
    config = vae_config_from_shapes(shapes, family)
    return build_vae(state, config)


def load_base_model(
    checkpoint: Path,
    vae: Path | None = None,
    *,
    prediction_type: str | None = None,
    model_type: str | None = None,
) -> BaseModel:
    """Load everything on the CPU in the file's dtype; the trainer casts and moves afterwards."""
    checkpoint = Path(checkpoint)
    state, metadata = load_state_dict(checkpoint)
    arch = analyse_checkpoint(tensor_shapes(state), metadata, checkpoint, prediction_type, model_type)
    unet = build_unet(state, arch.unet_config)
    if arch.family == "sd2" and arch.prediction_source == "default":
        if looks_like_v_prediction(unet, arch.unet_config["cross_attention_dim"]):
            arch.prediction_type = "v_prediction"
        arch.prediction_source = "weights test (as the WebUI does)"
    if vae is not None:
        vae_model = load_vae_file(Path(vae), arch.family)
    else:
        if "first_stage_model.encoder.conv_in.weight" not in state:
            raise ModelFormatError(
                f"{checkpoint.name} has no VAE inside; set model.vae to a VAE file (for example the one the "
                "WebUI uses)"
            )
        vae_model = build_vae(state, arch.vae_config)
    encoders = [build_text_encoder(state, info) for info in arch.text_encoders]
    tokenizers = [load_clip_tokenizer(pad_with_exclamation=info.openclip) for info in arch.text_encoders]
    del state
    return BaseModel(
        arch, unet, vae_model, encoders, tokenizers, checkpoint, Path(vae) if vae else None, metadata
    )
