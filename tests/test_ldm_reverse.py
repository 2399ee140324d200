"""Back to the single-file layout: the measured reverse of diffusers' conversion, on tiny SD1, SD2 (OpenCLIP,
fused q/k/v) and SDXL (two encoders, transposed projection) models."""

from __future__ import annotations

import pytest
import torch

from lib_trainer.models.checkpoint_io import load_state_dict
from lib_trainer.models.ldm_reverse import model_to_ldm, reverse_map
from lib_trainer.models.loader import convert_unet_state, load_base_model


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_an_unchanged_model_round_trips_exactly(tiny_models, family):
    state, _ = load_state_dict(tiny_models[family])
    base = load_base_model(tiny_models[family])
    out = model_to_ldm(base, state)
    assert list(out) == list(state)
    different = [k for k in state if out[k].shape != state[k].shape or not torch.equal(out[k], state[k])]
    assert not different, different[:5]
    covered = reverse_map(
        {k: v.shape for k, v in state.items() if k.startswith("model.diffusion_model.")},
        lambda st: convert_unet_state(st, base.arch.unet_config),
    )
    unet_keys = [k for k in state if k.startswith("model.diffusion_model.")]
    assert sorted(covered) == sorted(unet_keys)  # every UNet tensor of the file is written from the model


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_changed_weights_land_on_the_right_keys_and_load_back(tmp_path, tiny_models, family):
    from safetensors.torch import save_file

    state, _ = load_state_dict(tiny_models[family])
    base = load_base_model(tiny_models[family])
    with torch.no_grad():
        for module in (base.unet, *base.text_encoders):
            for param in module.parameters():
                param.add_(torch.randn_like(param) * 0.01)
    out = model_to_ldm(base, state)
    changed = {k for k in state if not torch.equal(out[k], state[k])}
    assert all(k.startswith(("model.diffusion_model.", "cond_stage_model.", "conditioner.")) for k in changed)
    assert not any(k.startswith("first_stage_model.") for k in changed)  # the VAE stays as the file had it
    path = tmp_path / "tuned.safetensors"
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    again = load_base_model(path)
    for mine, loaded in ((base.unet, again.unet), *zip(base.text_encoders, again.text_encoders, strict=True)):
        a, b = mine.state_dict(), loaded.state_dict()
        assert set(a) == set(b)
        assert all(
            torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a if a[k].is_floating_point()
        )
