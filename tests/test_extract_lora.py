"""Extract-LoRA from a fine-tune: at full rank the LoRA reproduces the fine-tuned layers (and so the fine-tuned
UNet output); a low rank keeps most of a low-rank change; names are the kohya names the WebUI loads."""

from __future__ import annotations

import pytest
import torch

from lib_trainer.export.extract_lora import extract_lora, kohya_tensors
from lib_trainer.models.loader import load_base_model


def _tune(model: torch.nn.Module, layers: dict[str, torch.nn.Module], rank: int | None = None) -> None:
    """Change the weights of `layers` (a full-rank change, or a rank-`rank` one)."""
    gen = torch.Generator().manual_seed(0)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for path in layers:
            w = modules[path].weight
            if rank is None:
                w.add_(torch.randn(w.shape, generator=gen) * 0.02)
            else:
                a = torch.randn(w.shape[0], rank, generator=gen) * 0.1
                b = torch.randn(rank, w[0].numel(), generator=gen) * 0.1
                w.add_((a @ b).reshape(w.shape))


def _apply(model: torch.nn.Module, layers) -> None:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for layer in layers:
            w = modules[layer.path].weight
            w.add_(
                (layer.up.reshape(layer.up.shape[0], -1) @ layer.down.reshape(layer.rank, -1)).reshape(
                    w.shape
                )
            )


def _unet_out(unet, family, config) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    context = torch.randn(1, 77, config["cross_attention_dim"], generator=gen)
    kwargs = {}
    if family == "sdxl":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(
                1,
                config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"],
                generator=gen,
            ),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
        }
    return unet(x, torch.tensor([500]), context, **kwargs).sample


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_full_rank_extraction_reproduces_the_fine_tuned_unet(tiny_models, family):
    from lib_trainer.export.extract_lora import _targets
    from lib_trainer.train.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS

    base = load_base_model(tiny_models[family])
    tuned = load_base_model(tiny_models[family])
    _tune(tuned.unet, _targets(tuned.unet, UNET_TARGETS))
    for encoder in tuned.text_encoders:
        _tune(encoder, _targets(encoder, TEXT_ENCODER_TARGETS))
    layers = extract_lora(
        base.unet,
        tuned.unet,
        base.text_encoders,
        tuned.text_encoders,
        family=family,
        unet_config=base.arch.unet_config,
        rank=10_000,
    )
    assert layers and all(layer.kept > 0.999999 for layer in layers)
    with torch.no_grad():
        want = _unet_out(tuned.unet, family, base.arch.unet_config)
        before = _unet_out(base.unet, family, base.arch.unet_config)
        _apply(base.unet, [layer for layer in layers if layer.name.startswith("lora_unet_")])
        got = _unet_out(base.unet, family, base.arch.unet_config)
    assert (want - before).abs().max() > 1e-3  # the fine-tune changed the output
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    tensors = kohya_tensors(layers)
    te_prefix = "lora_te1_" if family == "sdxl" else "lora_te_"
    assert any(k.startswith(te_prefix) for k in tensors) and any(k.startswith("lora_unet_") for k in tensors)
    if family == "sdxl":
        assert any(k.startswith("lora_unet_input_blocks_") for k in tensors)  # kohya's LDM names for SDXL


def test_low_rank_keeps_a_low_rank_change_and_skips_unchanged_layers(tiny_models):
    from lib_trainer.export.extract_lora import _targets
    from lib_trainer.train.lora import UNET_TARGETS

    base = load_base_model(tiny_models["sd1"])
    tuned = load_base_model(tiny_models["sd1"])
    targets = _targets(tuned.unet, UNET_TARGETS)
    changed = dict(list(targets.items())[:3])
    _tune(tuned.unet, changed, rank=2)
    layers = extract_lora(
        base.unet, tuned.unet, [], [], family="sd1", unet_config=base.arch.unet_config, rank=2
    )
    assert sorted(layer.path for layer in layers) == sorted(changed)  # unchanged layers are left out
    assert all(layer.rank == 2 and layer.kept > 0.999 for layer in layers)
    tensors = kohya_tensors(layers)
    name = layers[0].name
    assert tensors[f"{name}.alpha"].item() == 2.0 and tensors[f"{name}.lora_down.weight"].shape[0] == 2
    with pytest.raises(ValueError, match="at least 1"):
        extract_lora(base.unet, tuned.unet, [], [], family="sd1", unet_config=base.arch.unet_config, rank=0)


def test_extract_lora_command_from_two_checkpoints(tmp_path, tiny_models, capsys):
    """A fine-tune written back to the single-file layout (as the DreamBooth mode will), then extracted."""
    from safetensors.torch import save_file

    from lib_trainer.cli import main
    from lib_trainer.export.extract_lora import _targets
    from lib_trainer.export.lora_file import summarize_lora
    from lib_trainer.models.checkpoint_io import load_state_dict
    from lib_trainer.models.ldm_reverse import model_to_ldm
    from lib_trainer.train.lora import UNET_TARGETS

    state, _ = load_state_dict(tiny_models["sd1"])
    tuned = load_base_model(tiny_models["sd1"])
    _tune(tuned.unet, _targets(tuned.unet, UNET_TARGETS), rank=4)
    tuned_path = tmp_path / "tuned.safetensors"
    save_file({k: v.contiguous() for k, v in model_to_ldm(tuned, state).items()}, str(tuned_path))
    out = tmp_path / "extracted.safetensors"
    assert main(["extract-lora", str(tiny_models["sd1"]), str(tuned_path), str(out), "--rank", "4"]) == 0
    assert "layers at rank 4" in capsys.readouterr().out
    summary = summarize_lora(out)
    assert summary["rank"] == 4 and summary["alpha"] == 4.0, summary
    assert main(["extract-lora", str(tiny_models["sd1"]), str(tuned_path), str(out)]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err
    same = tmp_path / "same.safetensors"
    assert main(["extract-lora", str(tiny_models["sd1"]), str(tiny_models["sd1"]), str(same)]) == 2
    assert "same weights" in capsys.readouterr().err and not same.exists()
    other = tmp_path / "other.safetensors"
    assert main(["extract-lora", str(tiny_models["sd1"]), str(tiny_models["sdxl"]), str(other)]) == 2
    assert "not the same kind of model" in capsys.readouterr().err
