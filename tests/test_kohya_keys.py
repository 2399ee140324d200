"""Every exported LoRA key must name a module of the real full-size architecture, in the naming the WebUI's
Lora loader matches (kohya's): diffusers paths for SD1/SD2 UNets, LDM paths for SDXL's, `text_model` paths
for text encoders. Checked on meta-device models, so no weights are allocated."""

from __future__ import annotations

import re

import pytest
import torch

from lib_trainer.export.kohya_keys import kohya_module_names
from lib_trainer.models.ldm_layout import unet_state_dict_to_ldm
from lib_trainer.models.tiny import _text_encoders, _unet
from lib_trainer.train.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora

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


def test_sd1_proj_in_is_a_conv_lora_with_kohya_shapes():
    """SD1's proj_in/proj_out are 1x1 convolutions: kohya writes 4-D down/up weights for them."""
    from diffusers import UNet2DConditionModel

    from lib_trainer.export.kohya_keys import export_kohya_state_dict
    from lib_trainer.models.tiny import build_random_state_dict  # noqa: F401 - tiny config source

    unet = UNet2DConditionModel(**_unet("sd1", "tiny"))
    add_lora(unet, UNET_TARGETS, 4, 2)
    tensors = export_kohya_state_dict(unet, [], "sd1", 2.0, dict(unet.config))
    down = tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"]
    up = tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"]
    assert down.shape == (4, 32, 1, 1) and up.shape == (32, 4, 1, 1)
    assert tensors["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"].item() == 2.0
    q = tensors["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"]
    assert q.ndim == 2
