"""Every exported LoRA key must name a module of the real full-size architecture, in the naming the WebUI's
Lora loader matches (kohya's): diffusers paths for SD1/SD2 UNets, LDM paths for SDXL's, `text_model` paths
for text encoders. Checked on meta-device models, so no weights are allocated. A UNet that is not numbered
like SD's gets LDM paths, because the WebUI decodes a diffusers SD1/SD2 name with SD's block arithmetic."""

from __future__ import annotations

import re

import pytest
import torch

from lib_trainer.export.kohya_keys import kohya_module_names
from lib_trainer.models.ldm_layout import UNetLayout, unet_module_to_ldm, unet_state_dict_to_ldm
from lib_trainer.models.tiny import _text_encoders, _unet
from lib_trainer.train.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora, lora_modules

# Module counts kohya's networks.lora reports for these architectures ("create LoRA for U-Net: 192 modules").
KOHYA_COUNTS = {"sd1": (192, 72), "sd2": (192, 138), "sdxl": (722, 264)}


def _meta_models(family: str):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        unet = UNet2DConditionModel(**_unet(family, "full"))
        plain_unet = UNet2DConditionModel(**_unet(family, "full"))
        encoders = []
        for _prefix, _openclip, cfg, with_proj in _text_encoders(family, "full"):
            if family == "sd2":  # the trainer drops OpenCLIP's last layer for SD2 (penultimate-layer model)
                cfg = dict(cfg, num_hidden_layers=cfg["num_hidden_layers"] - 1)
            cls = CLIPTextModelWithProjection if with_proj else CLIPTextModel
            encoders.append(cls(CLIPTextConfig(**cfg)))
        add_lora(unet, UNET_TARGETS, 4, 2)
        for encoder in encoders:
            add_lora(encoder, TEXT_ENCODER_TARGETS, 4, 2)
    return unet, plain_unet, encoders


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_exported_names_exist_in_full_size_architecture(family):
    unet, plain_unet, encoders = _meta_models(family)
    names = kohya_module_names(unet, encoders, family, dict(unet.config))
    unet_names = [n for n in names if n.startswith("lora_unet_")]
    te_names = [n for n in names if n.startswith("lora_te")]
    assert (len(unet_names), len(te_names)) == KOHYA_COUNTS[family]

    if family == "sdxl":
        ldm_keys = unet_state_dict_to_ldm(plain_unet.state_dict(), plain_unet.config)
        host_modules = {
            k[len("model.diffusion_model.") : -len(".weight")].replace(".", "_")
            for k in ldm_keys
            if k.endswith(".weight")
        }
    else:
        host_modules = {
            name.replace(".", "_")
            for name, module in plain_unet.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
        }
    missing = [n for n in unet_names if n[len("lora_unet_") :] not in host_modules]
    assert not missing, missing[:5]

    te_prefixes = ["lora_te"] if family != "sdxl" else ["lora_te1", "lora_te2"]
    for index, encoder in enumerate(encoders):
        layers = encoder.config.num_hidden_layers
        rx = re.compile(
            rf"{te_prefixes[index]}_text_model_encoder_layers_(\d+)_(self_attn_(q|k|v|out)_proj|mlp_fc(1|2))$"
        )
        own = [n for n in te_names if n.startswith(te_prefixes[index] + "_")]
        assert len(own) == 6 * layers
        for name in own:
            m = rx.match(name)
            assert m and int(m[1]) < layers, name


def a1111_sd_unet_name(name: str) -> str | None:
    """The LDM module A1111 v1.10.1 finds for a diffusers-named SD1/SD2 UNet LoRA module, with '_' for '.'
    as the WebUI compares them: the UNet rules of `convert_diffusers_name_to_compvis` and its suffix table
    (extensions-builtin/Lora/networks.py lines 43-53 and 82-98) restated; None where no rule applies (the
    loader then tries the name as an LDM path)."""
    suffixes = {
        "attentions": {},
        "resnets": {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0",
                    "norm2": "out_layers_0", "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"},
    }  # fmt: skip

    if m := re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name):
        level, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
        rest = suffixes[kind].get(rest, rest)
        return f"input_blocks_{1 + level * 3 + index}_{1 if kind == 'attentions' else 0}_{rest}"
    if m := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", name):
        kind, index, rest = m[1], int(m[2]), m[3]
        rest = suffixes[kind].get(rest, rest)
        return f"middle_block_{1 if kind == 'attentions' else index * 2}_{rest}"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name):
        level, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
        rest = suffixes[kind].get(rest, rest)
        return f"output_blocks_{level * 3 + index}_{1 if kind == 'attentions' else 0}_{rest}"
    if m := re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", name):
        return f"input_blocks_{3 + int(m[1]) * 3}_0_op"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", name):
        level = int(m[1])
        return f"output_blocks_{2 + level * 3}_{2 if level > 0 else 1}_conv"
    return None


def _underscored(ldm_path: str) -> str:
    return ldm_path.replace(".", "_")


def _misplaced(unet: torch.nn.Module, layout: UNetLayout) -> list[str]:
    """Modules whose diffusers kohya name the WebUI would decode to another block, or to none."""
    return [
        path
        for path in lora_modules(unet)
        if a1111_sd_unet_name(_kohya_unet_name(path)) != _underscored(unet_module_to_ldm(path, layout))
    ]


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_the_webui_puts_every_diffusers_named_module_on_its_own_block(family):
    unet, _, _ = _meta_models(family)
    layout = UNetLayout.from_config(dict(unet.config))
    assert layout.has_sd_block_numbers
    names = kohya_module_names(unet, [], family, dict(unet.config))
    assert set(names) == {_kohya_unet_name(path) for path in lora_modules(unet)}  # diffusers names
    assert not _misplaced(unet, layout)


def _kohya_unet_name(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")


def _tiny_unet(family: str, with_lora: bool):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**_unet(family, "tiny"))
    if with_lora:
        add_lora(unet, UNET_TARGETS, 4, 2)
    return unet


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_a_unet_not_numbered_like_sd_gets_ldm_names_the_webui_finds(family):
    """The tiny models have one ResNet per level, as block-reduced distillations (and the toy model) do:
    SD's arithmetic would misplace their diffusers names, so they are written as LDM paths, which the WebUI
    finds under `diffusion_model_` (and Forge/ComfyUI under `lora_unet_`)."""
    unet = _tiny_unet(family, with_lora=True)
    layout = UNetLayout.from_config(dict(unet.config))
    assert not layout.has_sd_block_numbers
    assert _misplaced(unet, layout)  # why the names change: the diffusers names would land elsewhere

    names = kohya_module_names(unet, [], family, dict(unet.config))
    plain = _tiny_unet(family, with_lora=False)
    ldm_modules = {
        _underscored(k[len("model.diffusion_model.") : -len(".weight")])
        for k in unet_state_dict_to_ldm(plain.state_dict(), dict(plain.config))
        if k.endswith(".weight")
    }
    assert names and all(n.startswith("lora_unet_") for n in names)
    missing = [n for n in names if n[len("lora_unet_") :] not in ldm_modules]
    assert not missing, missing[:5]
    assert not any(n.startswith(("lora_unet_down_blocks_", "lora_unet_up_blocks_")) for n in names)


def test_sd1_proj_in_is_a_conv_lora_with_kohya_shapes():
    """SD1's proj_in/proj_out are 1x1 convolutions: kohya writes 4-D down/up weights for them."""
    from lib_trainer.export.kohya_keys import export_kohya_state_dict

    unet = _tiny_unet("sd1", with_lora=True)
    tensors = export_kohya_state_dict(unet, [], "sd1", 2.0, dict(unet.config))
    block = "lora_unet_input_blocks_1_1"  # down_blocks.0.attentions.0 (LDM names: see above)
    down = tensors[f"{block}_proj_in.lora_down.weight"]
    up = tensors[f"{block}_proj_in.lora_up.weight"]
    assert down.shape == (4, 32, 1, 1) and up.shape == (32, 4, 1, 1)
    assert tensors[f"{block}_proj_in.alpha"].item() == 2.0
    q = tensors[f"{block}_transformer_blocks_0_attn1_to_q.lora_down.weight"]
    assert q.ndim == 2
