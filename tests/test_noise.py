"""Diffusion-training math, checked against formulas computed independently here in float64."""

from __future__ import annotations

import pytest
import torch

from lib_trainer.train.noise import (
    compute_snr,
    diffusion_loss,
    make_noise_scheduler,
    min_snr_loss_weights,
    sample_noise,
    sample_timesteps,
    training_target,
)
from lib_trainer.train.optimizers import TrainingConfigError

SHAPE = (4, 4, 8, 8)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _alphas_cumprod64(zero_terminal_snr: bool = False) -> torch.Tensor:
    """SD's scaled-linear schedule from scratch (and the zero-terminal-SNR rescale of Lin et al. 2023)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if zero_terminal_snr:
        root = alphas_cumprod.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * first / (first - last)
        alphas_cumprod = root**2
    return alphas_cumprod


def test_scheduler_matches_sd_training_schedule():
    sched = make_noise_scheduler("epsilon")
    assert sched.config.num_train_timesteps == 1000
    assert sched.config.prediction_type == "epsilon"
    assert sched.config.clip_sample is False
    assert sched.config.steps_offset == 1
    assert sched.betas[0].item() == pytest.approx(0.00085)
    assert sched.betas[-1].item() == pytest.approx(0.012)
    torch.testing.assert_close(sched.alphas_cumprod.double(), _alphas_cumprod64(), rtol=1e-5, atol=1e-7)
    assert sched.alphas_cumprod[-1] > 0
    assert make_noise_scheduler("v_prediction").config.prediction_type == "v_prediction"


def test_zero_terminal_snr_ends_at_zero():
    sched = make_noise_scheduler("v_prediction", zero_terminal_snr=True)
    assert sched.alphas_cumprod[-1].item() == 0.0
    assert compute_snr(sched, torch.tensor([999])).item() == 0.0
    torch.testing.assert_close(sched.alphas_cumprod.double(), _alphas_cumprod64(True), rtol=1e-4, atol=1e-7)


def test_unknown_prediction_type_names_the_field():
    with pytest.raises(TrainingConfigError) as err:
        make_noise_scheduler("sample")
    assert err.value.field == "model.prediction_type"


# --- noise and timesteps ----------------------------------------------------------------------------------


def test_noise_is_deterministic_per_seed_and_keeps_shape_and_dtype():
    latents = torch.zeros(SHAPE)
    a, b, c = sample_noise(latents, _gen(1)), sample_noise(latents, _gen(1)), sample_noise(latents, _gen(2))
    assert a.shape == SHAPE and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    half = sample_noise(latents.half(), _gen(1), noise_offset=0.1)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), sample_noise(latents, _gen(1), noise_offset=0.1).half().float())


def test_noise_offset_is_kohya_per_channel_shift():
    latents = torch.zeros(SHAPE)
    noise = sample_noise(latents, _gen(3), noise_offset=0.1)
    g = _gen(3)
    base = torch.randn(SHAPE, generator=g)
    offset = torch.randn(SHAPE[0], SHAPE[1], 1, 1, generator=g)
    torch.testing.assert_close(noise, base + 0.1 * offset)
    shift = noise - sample_noise(latents, _gen(3))  # same seed, no offset: the base noise is identical
    per_channel_mean = shift.mean(dim=(2, 3))
    assert per_channel_mean.abs().min() > 0
    torch.testing.assert_close(shift, per_channel_mean[..., None, None].expand(SHAPE))


def test_zero_offset_draws_nothing_extra():
    g = _gen(4)
    sample_noise(torch.zeros(SHAPE), g, noise_offset=0.0)
    ref = _gen(4)
    torch.randn(SHAPE, generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())


def test_timesteps_are_uniform_ints_in_range_and_seeded():
    t = sample_timesteps(20000, _gen(5))
    assert t.dtype == torch.long and t.shape == (20000,)
    assert t.min().item() == 0 and t.max().item() == 999
    assert abs(t.float().mean().item() - 499.5) < 10
    assert torch.equal(t, sample_timesteps(20000, _gen(5)))
    narrow = sample_timesteps(500, _gen(6), min_timestep=200, max_timestep=300)
    assert narrow.min().item() >= 200 and narrow.max().item() < 300
    with pytest.raises(TrainingConfigError) as err:
        sample_timesteps(4, _gen(), min_timestep=500, max_timestep=400)
    assert err.value.field == "training.min_timestep"


# --- targets, SNR, min-SNR ---------------------------------------------------------------------------------


def test_epsilon_target_is_the_noise():
    sched = make_noise_scheduler("epsilon")
    noise = torch.randn(SHAPE, generator=_gen())
    assert training_target(sched, torch.randn(SHAPE), noise, torch.tensor([1, 2, 3, 4])) is noise


@pytest.mark.parametrize("zsnr", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_v_target_is_alpha_noise_minus_sigma_x0(zsnr, dtype):
    sched = make_noise_scheduler("v_prediction", zero_terminal_snr=zsnr)
    g = _gen(7)
    x0 = torch.randn(SHAPE, generator=g).to(dtype)
    noise = torch.randn(SHAPE, generator=g).to(dtype)
    t = torch.tensor([0, 250, 700, 999])
    ac = _alphas_cumprod64(zsnr)[t].view(-1, 1, 1, 1)
    expected = ac.sqrt() * noise.double() - (1 - ac).sqrt() * x0.double()
    v = training_target(sched, x0, noise, t)
    assert v.dtype == dtype
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-3, "atol": 2e-3}
    torch.testing.assert_close(v.double(), expected, **tol)
    if zsnr:
        torch.testing.assert_close(v[3], -x0[3])  # at zero SNR the velocity is exactly -x0


def test_snr_is_alphas_cumprod_ratio():
    sched = make_noise_scheduler("epsilon")
    t = torch.tensor([0, 1, 10, 100, 500, 999])
    ac = sched.alphas_cumprod.double()[t]
    snr = compute_snr(sched, t)
    assert snr.dtype == torch.float32
    torch.testing.assert_close(snr.double(), ac / (1 - ac), rtol=1e-5, atol=0)
    torch.testing.assert_close(
        snr.double(), (ac.sqrt() / (1 - ac).sqrt()) ** 2, rtol=1e-5, atol=0
    )  # kohya's form
    assert torch.all(snr[:-1] > snr[1:])  # SNR falls as noise grows


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights_match_hand_formulas(gamma):
    sched = make_noise_scheduler("epsilon")
    t = torch.arange(0, 1000, 37)
    snr = sched.alphas_cumprod.double()[t] / (1 - sched.alphas_cumprod.double()[t])
    eps = min_snr_loss_weights(sched, t, gamma, "epsilon")
    v = min_snr_loss_weights(sched, t, gamma, "v_prediction")
    torch.testing.assert_close(eps.double(), torch.minimum(snr, torch.full_like(snr, gamma)) / snr)
    torch.testing.assert_close(v.double(), torch.minimum(snr, torch.full_like(snr, gamma)) / (snr + 1))
    assert (eps < 1).any() and (eps == 1).any()  # t spans both sides of snr == gamma


def test_min_snr_weights_at_zero_terminal_snr_are_finite():
    sched = make_noise_scheduler("v_prediction", zero_terminal_snr=True)
    t = torch.tensor([999])
    assert min_snr_loss_weights(sched, t, 5.0, "epsilon").item() == 1.0  # limit of min(snr,g)/snr, not 0/0
    assert min_snr_loss_weights(sched, t, 5.0, "v_prediction").item() == 0.0
    with pytest.raises(TrainingConfigError) as err:
        min_snr_loss_weights(sched, t, -1.0, "epsilon")
    assert err.value.field == "training.min_snr_gamma"


# --- loss ---------------------------------------------------------------------------------------------------


def _pred_target(dtype=torch.float32):
    g = _gen(8)
    return torch.randn(SHAPE, generator=g).to(dtype), torch.randn(SHAPE, generator=g).to(dtype)


def test_loss_without_weights_is_plain_mse():
    sched = make_noise_scheduler("epsilon")
    pred, target = _pred_target()
    kw = {"timesteps": torch.tensor([1, 2, 3, 4]), "noise_scheduler": sched, "prediction_type": "epsilon"}
    for gamma in (None, 0):
        loss = diffusion_loss(pred, target, min_snr_gamma=gamma, **kw)
        torch.testing.assert_close(loss, torch.nn.functional.mse_loss(pred, target))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_weights_each_sample(prediction_type):
    sched = make_noise_scheduler(prediction_type)
    pred, target = _pred_target(torch.float16)
    t = torch.tensor([5, 200, 600, 990])
    prior = torch.tensor([1.0, 1.0, 0.5, 0.5])
    loss = diffusion_loss(
        pred,
        target,
        timesteps=t,
        noise_scheduler=sched,
        min_snr_gamma=5.0,
        prediction_type=prediction_type,
        loss_weights=prior,
    )
    assert loss.dtype == torch.float32
    per_sample = ((pred.double() - target.double()) ** 2).mean(dim=(1, 2, 3))
    ac = sched.alphas_cumprod.double()[t]
    snr = ac / (1 - ac)
    weight = snr.clamp(max=5.0) / (snr if prediction_type == "epsilon" else snr + 1)
    torch.testing.assert_close(loss.double(), (per_sample * weight * prior).mean(), rtol=1e-5, atol=0)


def test_loss_refuses_mismatches():
    sched = make_noise_scheduler("epsilon")
    pred, target = _pred_target()
    kw = {"timesteps": torch.tensor([1, 2, 3, 4]), "noise_scheduler": sched, "min_snr_gamma": None}
    with pytest.raises(ValueError, match="differ"):
        diffusion_loss(pred, target[:, :1], prediction_type="epsilon", **kw)
    with pytest.raises(ValueError, match="targets 'epsilon'"):
        diffusion_loss(pred, target, prediction_type="v_prediction", **kw)
    with pytest.raises(ValueError, match="loss_weights"):
        diffusion_loss(pred, target, prediction_type="epsilon", loss_weights=torch.ones(4, 1), **kw)


def test_training_draws_are_reproducible_from_the_seed():
    def one_step(seed: int) -> torch.Tensor:
        sched = make_noise_scheduler("v_prediction")
        g = _gen(seed)
        latents = torch.randn(SHAPE, generator=g)
        noise = sample_noise(latents, g, noise_offset=0.05)
        t = sample_timesteps(SHAPE[0], g)
        noisy = sched.add_noise(latents, noise, t)
        target = training_target(sched, latents, noise, t)
        return diffusion_loss(
            noisy,
            target,
            timesteps=t,
            noise_scheduler=sched,
            min_snr_gamma=5.0,
            prediction_type="v_prediction",
        )

    assert torch.equal(one_step(11), one_step(11))
    assert not torch.equal(one_step(11), one_step(12))
