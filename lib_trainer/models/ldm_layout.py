"""Names in the WebUI's single-file (LDM/SGM) layout for modules that we train as diffusers modules.

diffusers ships converters from the LDM layout to its own; the reverse direction is not in the package
(only in loose scripts), yet we need it in three places: writing test checkpoints in the real layout,
naming LoRA modules the way kohya and the WebUI expect for SDXL (`input_blocks_4_1_...`) and for UNets the
WebUI cannot number otherwise, and saving a full fine-tune as a WebUI checkpoint. The mapping is
mechanical, so it lives here once, and the tests prove it by round-tripping through diffusers' own
LDM -> diffusers converters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TE_PREFIX = "cond_stage_model.transformer."
SD2_TE_PREFIX = "cond_stage_model.model."
SDXL_TE1_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TE2_PREFIX = "conditioner.embedders.1.model."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


@dataclass(frozen=True)
class UNetLayout:
    """The facts of a UNet config that decide LDM block numbers."""

    layers_per_block: int
    up_blocks_with_attention: frozenset[int]
    up_blocks: int

    @classmethod
    def from_config(cls, config: dict) -> UNetLayout:
        types = config["up_block_types"]
        up_attn = frozenset(i for i, t in enumerate(types) if "CrossAttn" in t)
        return cls(int(config["layers_per_block"]), up_attn, len(types))

    @property
    def has_sd_block_numbers(self) -> bool:
        """Whether this UNet is numbered like SD1/SD2's: two ResNets per level (three per up level) and
        cross-attention in every up level but the first. A1111's Lora loader decodes diffusers-named SD1/SD2
        LoRA modules with exactly that arithmetic (`convert_diffusers_name_to_compvis` in
        extensions-builtin/Lora/networks.py, v1.10.1 lines 82-98), so on any other UNet (a block-reduced
        distillation, a toy) it would put them on the wrong blocks or drop them without an error."""
        return self.layers_per_block == 2 and self.up_blocks_with_attention == frozenset(
            range(1, self.up_blocks)
        )


def unet_module_to_ldm(path: str, layout: UNetLayout) -> str:
    """Map a diffusers UNet module or parameter path to its LDM path (without `model.diffusion_model.`)."""
    n = layout.layers_per_block
    for src, dst in _UNET_TOP.items():
        if path == src or path.startswith(src + "."):
            return dst + path[len(src) :]

    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(.*)", path)
    if m:
        block, kind, idx, rest = int(m[1]), m[2], int(m[3]), m[4]
        ldm_idx = (n + 1) * block + idx + 1
        if kind == "resnets":
            return f"input_blocks.{ldm_idx}.0" + _resnet_rest(rest)
        return f"input_blocks.{ldm_idx}.1{rest}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)", path)
    if m:
        return f"input_blocks.{(n + 1) * (int(m[1]) + 1)}.0.op{m[2]}"

    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)(.*)", path)
    if m:
        kind, idx, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":
            return f"middle_block.{2 * idx}" + _resnet_rest(rest)
        return f"middle_block.1{rest}"

    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(.*)", path)
    if m:
        block, kind, idx, rest = int(m[1]), m[2], int(m[3]), m[4]
        ldm_idx = (n + 1) * block + idx
        if kind == "resnets":
            return f"output_blocks.{ldm_idx}.0" + _resnet_rest(rest)
        return f"output_blocks.{ldm_idx}.1{rest}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0(.*)", path)
    if m:
        block = int(m[1])
        slot = 2 if block in layout.up_blocks_with_attention else 1
        return f"output_blocks.{(n + 1) * block + n}.{slot}{m[2]}"
    raise KeyError(f"no LDM name known for UNet module {path!r}")


def _resnet_rest(rest: str) -> str:
    m = re.match(r"\.(\w+)(.*)", rest)
    if not m:
        return rest
    name, tail = m[1], m[2]
    return "." + _UNET_RESNET.get(name, name) + tail


def unet_state_dict_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    layout = UNetLayout.from_config(config)
    return {UNET_PREFIX + unet_module_to_ldm(k, layout): v for k, v in state_dict.items()}


def _vae_path_to_ldm(path: str, num_levels: int) -> str:
    path = path.replace("conv_norm_out", "norm_out")
    path = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}", path)
    path = path.replace("mid_block.attentions.0", "mid.attn_1")
    path = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", path)
    path = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", path)

    def up(m: re.Match) -> str:
        level = num_levels - 1 - int(m[1])
        return f"decoder.up.{level}.{'block' if m[2] == 'resnets' else 'upsample'}."

    path = re.sub(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.", up, path)
    path = path.replace("conv_shortcut", "nin_shortcut")
    for src, dst in (
        ("group_norm", "norm"),
        ("to_q", "q"),
        ("to_k", "k"),
        ("to_v", "v"),
        ("to_out.0", "proj_out"),
    ):
        path = path.replace(f"attn_1.{src}.", f"attn_1.{dst}.")
    return path


def vae_state_dict_to_ldm(state_dict: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """LDM's VAE attention uses 1x1 convolutions where diffusers uses linears, hence the reshape."""
    out = {}
    for key, value in state_dict.items():
        new_key = _vae_path_to_ldm(key, num_levels)
        if re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", new_key) and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[VAE_PREFIX + new_key] = value
    return out


def with_text_model_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5's CLIPTextModel drops the `text_model.` level that files (and v4) use; put it back."""
    return {
        k
        if k.startswith("text_model.") or k in ("text_projection.weight", "logit_scale")
        else "text_model." + k: v
        for k, v in state_dict.items()
    }


def clip_state_dict_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenAI CLIP is stored with its transformers (v4) names under a prefix."""
    return {
        prefix + k: v for k, v in with_text_model_prefix(state_dict).items() if not k.endswith("position_ids")
    }


_OPENCLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def openclip_state_dict_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """transformers CLIP names -> OpenCLIP names, with q/k/v fused into `in_proj` as OpenCLIP stores them."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in with_text_model_prefix(state_dict).items():
        if key.endswith("position_ids"):
            continue
        if key == "text_model.embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif key.startswith("text_model.final_layer_norm."):
            out[prefix + "ln_final." + key.rsplit(".", 1)[1]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif key == "logit_scale":
            out[prefix + "logit_scale"] = value
        else:
            m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
            if not m:
                raise KeyError(f"no OpenCLIP name known for text encoder key {key!r}")
            layer, module, kind = int(m[1]), m[2], m[3]
            qkv = re.match(r"self_attn\.(q|k|v)_proj", module)
            if qkv:
                fused.setdefault((layer, kind), {})[qkv[1]] = value
                continue
            out[f"{prefix}transformer.resblocks.{layer}.{_OPENCLIP_LAYER[module]}.{kind}"] = value
    for (layer, kind), parts in fused.items():
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"{prefix}transformer.resblocks.{layer}.attn.{name}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]]
        )
    return out
