"""The single-file layout: our diffusers -> LDM names must round-trip through diffusers' own converters, at
tiny size with real values and at full size on the meta device, and configs must be recovered from shapes."""

from __future__ import annotations

import pytest
import torch

from lib_trainer.models.arch import ModelFormatError, analyse_checkpoint, detect_family
from lib_trainer.models.checkpoint_io import load_state_dict, read_safetensors_header, tensor_shapes
from lib_trainer.models.ldm_layout import (
    clip_state_dict_to_ldm,
    openclip_state_dict_to_ldm,
    unet_state_dict_to_ldm,
    vae_state_dict_to_ldm,
)
from lib_trainer.models.loader import load_base_model
from lib_trainer.models.tiny import _unet, write_random_checkpoint


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_tiny_checkpoint_round_trips_through_loader(tmp_path, family):
    path = write_random_checkpoint(tmp_path / f"{family}.safetensors", family, v_prediction=family == "sd2")
    original, _ = load_state_dict(path)
    base = load_base_model(path)
    assert base.arch.family == family
    assert base.arch.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")

    rebuilt = unet_state_dict_to_ldm(base.unet.state_dict(), base.unet.config)
    rebuilt.update(vae_state_dict_to_ldm(base.vae.state_dict(), len(base.vae.config.block_out_channels)))
    for info, encoder in zip(base.arch.text_encoders, base.text_encoders, strict=True):
        state = encoder.state_dict()
        if info.openclip:
            rebuilt.update(openclip_state_dict_to_ldm(state, info.prefix))
        else:
            rebuilt.update(clip_state_dict_to_ldm(state, info.prefix))

    dropped = set()
    if family == "sd2":  # SD2 trains on OpenCLIP's penultimate layer: the last block is not loaded
        last = base.arch.text_encoders[0].config["num_hidden_layers"]
        dropped = {
            k for k in original if f"transformer.resblocks.{last}." in k or k.endswith("text_projection")
        }
    dropped |= {k for k in original if k.endswith("logit_scale")}
    assert set(rebuilt) == set(original) - dropped
    for key, value in rebuilt.items():
        assert torch.equal(value, original[key]), key


def _meta_unet_ldm_shapes(family: str) -> tuple[dict, dict[str, tuple[int, ...]]]:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel(**_unet(family, "full"))
    ldm = unet_state_dict_to_ldm(unet.state_dict(), unet.config)
    return dict(unet.config), {k: tuple(v.shape) for k, v in ldm.items()}, unet


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_full_size_unet_layout_matches_diffusers_converter(family):
    """Names for the real architectures, checked without allocating 2-10 GB."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from lib_trainer.models.arch import unet_config_from_shapes

    config, shapes, unet = _meta_unet_ldm_shapes(family)
    # Known landmarks of the real files, as the WebUI names them.
    if family == "sdxl":
        assert shapes["model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight"] == (
            640,
            2048,
        )
        assert shapes["model.diffusion_model.label_emb.0.0.weight"] == (1280, 2816)
        assert "model.diffusion_model.output_blocks.2.2.conv.weight" in shapes
    else:
        assert shapes["model.diffusion_model.input_blocks.1.1.proj_in.weight"][:2] == (320, 320)
        assert "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.2.weight" in shapes
        assert "model.diffusion_model.output_blocks.2.1.conv.weight" in shapes
        assert "model.diffusion_model.input_blocks.3.0.op.weight" in shapes
    inferred = unet_config_from_shapes(shapes, family, pooled_dim=1280 if family == "sdxl" else None)
    for key in (
        "block_out_channels",
        "down_block_types",
        "up_block_types",
        "layers_per_block",
        "cross_attention_dim",
        "use_linear_projection",
    ):
        assert (
            list(inferred[key]) == list(config[key])
            if isinstance(config[key], (list, tuple))
            else inferred[key] == config[key]
        ), key
    if family == "sdxl":
        assert inferred["addition_time_embed_dim"] == 256
        assert list(inferred["transformer_layers_per_block"]) == [1, 2, 10]
    meta_state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    converted = convert_ldm_unet_checkpoint(meta_state, inferred)
    assert set(converted) == set(unet.state_dict())


def test_detection_errors_are_clear():
    with pytest.raises(ModelFormatError, match="VAE"):
        detect_family({"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3)})
    with pytest.raises(ModelFormatError, match="LoRA"):
        detect_family({"lora_unet_x.lora_down.weight": (4, 8)})
    with pytest.raises(ModelFormatError, match="inpainting"):
        detect_family({"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)})


def test_prediction_type_from_sidecar_yaml(tmp_path):
    path = write_random_checkpoint(tmp_path / "m.safetensors", "sd2")
    shapes, meta = read_safetensors_header(path)
    assert analyse_checkpoint(shapes, meta, path).prediction_type == "epsilon"
    (tmp_path / "m.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    info = analyse_checkpoint(shapes, meta, path)
    assert info.prediction_type == "v_prediction" and "yaml" in info.prediction_source
    assert analyse_checkpoint(shapes, meta, path, prediction_type="epsilon").prediction_type == "epsilon"
    with pytest.raises(ModelFormatError, match="model_type"):
        analyse_checkpoint(shapes, meta, path, model_type="sdxl")


def test_ckpt_pickles_are_loaded_weights_only(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"a": torch.ones(2)}}, good)
    state, _ = load_state_dict(good)
    assert torch.equal(state["a"], torch.ones(2))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"a": torch.ones(2)}, "x": Evil()}, bad)
    with pytest.raises(ModelFormatError, match="safetensors"):
        load_state_dict(bad)


def test_wrong_file_type_and_missing_file(tmp_path):
    txt = tmp_path / "model.txt"
    txt.write_text("hello")
    with pytest.raises(ModelFormatError, match="extension"):
        load_state_dict(txt)
    with pytest.raises(ModelFormatError, match="not found"):
        load_state_dict(tmp_path / "nope.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelFormatError, match="not a valid"):
        read_safetensors_header(broken)
    assert tensor_shapes({"a": torch.zeros(2, 3)}) == {"a": (2, 3)}


def test_tokenizer_vocab_rebuilt_from_merges_matches_clip():
    from lib_trainer.models.tokenizers import build_vocab, load_clip_tokenizer, read_merges

    vocab = build_vocab(read_merges())
    assert len(vocab) == 49408
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    tok = load_clip_tokenizer()
    # Reference ids of the real CLIP tokenizer for this phrase.
    assert tok("a photo of sks dog").input_ids == [49406, 320, 1125, 539, 48136, 1929, 49407]
    assert load_clip_tokenizer(pad_with_exclamation=True).pad_token_id == 0


def test_sd2_prediction_probe_matches_the_webui_rule():
    from lib_trainer.models.loader import looks_like_v_prediction

    class Fake(torch.nn.Module):
        def __init__(self, shift: float):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.shift = shift

        def forward(self, x, t, cond):
            assert t.tolist() == [999] and cond.shape == (1, 2, 1024)
            return type("Out", (), {"sample": x + self.shift})()

    assert looks_like_v_prediction(Fake(-2.0), 1024)
    assert not looks_like_v_prediction(Fake(0.3), 1024)
