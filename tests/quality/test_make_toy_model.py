"""The pre-training script: its experiments (documented in docs/quality.md: the padding penalty, bf16) and what a
checkpoint records about how it was made."""

from __future__ import annotations

import json

import torch

from .make_toy_model import compute_precision, padding_penalty

BOS, EOS, WORD = 49406, 49407, 320


def _case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two captions of 6 positions: one word then padding, three words then padding."""
    tokens = torch.tensor([[BOS, WORD, EOS, EOS, EOS, EOS], [BOS, WORD, WORD, WORD, EOS, EOS]])
    gen = torch.Generator().manual_seed(0)
    empty = torch.randn(6, 4, generator=gen)
    context = empty.repeat(2, 1, 1)
    return tokens, context, empty


def test_padding_equal_to_the_empty_prompt_costs_nothing_whatever_the_words_hold():
    tokens, context, empty = _case()
    context[0, :3] += 5.0  # BOS, the word and the first end token hold the caption: allowed
    context[1, :5] -= 3.0
    assert padding_penalty(context, tokens, empty, EOS).item() == 0.0


def test_padding_that_differs_from_the_empty_prompt_is_penalised_relative_to_its_size():
    tokens, context, empty = _case()
    # the first padding position after caption 0's end token, one of 4 padded positions (3 in caption 0,
    # 1 in caption 1), moved by 1 in each of its 4 channels
    context[0, 3] += 1.0
    expected = (1.0 / (4 * 4)) * 4 / empty[1:].pow(2).mean()
    assert torch.isclose(padding_penalty(context, tokens, empty, EOS), expected)
    # doubling the change quadruples it: a squared distance, so large deviations dominate
    context[0, 3] += 1.0
    assert torch.isclose(padding_penalty(context, tokens, empty, EOS), 4 * expected)


def test_a_caption_without_an_end_token_has_no_padding():
    tokens = torch.full((1, 6), WORD)
    context = torch.ones(1, 6, 4)
    assert padding_penalty(context, tokens, torch.zeros(6, 4) + 0.5, EOS).item() == 0.0


def test_bf16_precision_computes_in_bf16_and_leaves_the_weights_fp32():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with compute_precision("bf16"):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32
    y.float().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32


def test_fp32_precision_changes_nothing():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with compute_precision("fp32"):
        y = layer(x)
    assert y.dtype == torch.float32
    assert torch.equal(y, layer(x))


def test_a_two_stage_checkpoint_records_its_stages_and_the_settings_that_made_its_vae(tmp_path):
    """`--stage unet` over a VAE made earlier must not stamp its own (unused) --vae-* flags on the model."""
    from safetensors import safe_open

    from lib_trainer.models.loader import load_base_model

    from .make_toy_model import main

    work, out = tmp_path / "work", tmp_path / "toy.safetensors"
    tiny_vae = ["--vae-steps", "2", "--vae-images", "8", "--vae-lr", "1e-3"]
    tiny_unet = ["--unet-steps", "2", "--unet-images", "4", "--unet-batch", "2", "--threads", "1"]
    two_stages = ["--unet-seed", "7", "8"]
    threads = torch.get_num_threads()  # main() sets the process's thread count
    try:
        assert main(["--stage", "vae", "--work", str(work), *tiny_vae]) == 0
        assert main(["--stage", "unet", "--work", str(work), "--out", str(out), *tiny_unet, *two_stages]) == 0
    finally:
        torch.set_num_threads(threads)
    with safe_open(str(out), framework="pt") as f:
        recipe = json.loads(f.metadata()["lora_trainer.toy_model"])
    assert recipe["vae"]["vae_steps"] == 2 and recipe["vae"]["vae_lr"] == 1e-3, recipe
    assert "vae_steps" not in recipe and recipe["unet_steps"] == 2
    # the second stage continued from the first, which --work keeps
    assert recipe["unet_seed"] == 8 and recipe["continues"]["unet_seed"] == 7
    assert recipe["init"] == "unet-stage1.safetensors" and (work / "unet-stage1.safetensors").is_file()
    assert load_base_model(out).unet is not None  # the real checkpoint path reads it
