"""Diffusion-training math: noise schedule, noise and timestep draws, targets, min-SNR weights and the loss.

Mistakes here do not crash, they just train worse, so every function is small, works in float32, checks
shapes, and draws randomness only from the generator it is given (so a resumed run replays the same draws).
Formulas follow kohya-ss/sd-scripts (library/custom_train_functions.py, library/train_util.py).
"""

from __future__ import annotations

import logging

import torch

from .optimizers import TrainingConfigError

log = logging.getLogger(__name__)

PREDICTION_TYPES = ("epsilon", "v_prediction")


def make_noise_scheduler(prediction_type: str, zero_terminal_snr: bool = False):
    """SD's training schedule (DDPM, scaled-linear betas 0.00085..0.012 over 1000 steps), as kohya uses."""
    from diffusers import DDPMScheduler

    _check_prediction_type(prediction_type)
    if zero_terminal_snr and prediction_type == "epsilon":
        log.warning(
            "zero_terminal_snr is meant for v_prediction models; an epsilon model learns nothing at t=999"
        )
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type=prediction_type,
        rescale_betas_zero_snr=zero_terminal_snr,
    )


def sample_noise(
    latents: torch.Tensor, generator: torch.Generator, noise_offset: float = 0.0
) -> torch.Tensor:
    """Gaussian noise shaped like `latents`, plus kohya's noise offset (one random shift per image and channel).

    Drawn in float32 on the generator's device and then moved, so the same seed gives the same noise whatever
    the latents' device or dtype.
    """
    noise = _randn(latents.shape, generator, latents.device)
    if noise_offset:
        per_channel = (latents.shape[0], latents.shape[1]) + (1,) * (latents.dim() - 2)
        noise = noise + noise_offset * _randn(per_channel, generator, latents.device)
    return noise.to(latents.dtype)


def sample_timesteps(
    batch: int,
    generator: torch.Generator,
    num_train_timesteps: int = 1000,
    min_timestep: int = 0,
    max_timestep: int = 1000,
) -> torch.Tensor:
    """Uniform integer timesteps in [min_timestep, max_timestep), on the generator's device."""
    if not 0 <= min_timestep < max_timestep <= num_train_timesteps:
        raise TrainingConfigError(
            "training.min_timestep",
            f"the timestep range must satisfy 0 <= min_timestep < max_timestep <= {num_train_timesteps} "
            f"(got {min_timestep}..{max_timestep}); fix training.min_timestep / training.max_timestep",
        )
    return torch.randint(
        min_timestep, max_timestep, (batch,), generator=generator, device=generator.device, dtype=torch.long
    )


def training_target(
    noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet must predict: the noise (epsilon) or the velocity alpha*noise - sigma*x0 (v_prediction)."""
    prediction_type = noise_scheduler.config.prediction_type
    _check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    # diffusers casts alphas_cumprod to the sample dtype; do the arithmetic in float32 to keep fp16 latents exact.
    velocity = noise_scheduler.get_velocity(latents.float(), noise.float(), timesteps)
    return velocity.to(noise.dtype)


def compute_snr(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alphas_cumprod / (1 - alphas_cumprod) at each timestep (float32)."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)
    alpha_bar = alphas_cumprod[timesteps.long()]
    return alpha_bar / (1.0 - alpha_bar)


def min_snr_loss_weights(
    noise_scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str
) -> torch.Tensor:
    """Min-SNR-gamma weights (kohya): epsilon min(snr, g)/snr, v_prediction min(snr, g)/(snr + 1)."""
    _check_prediction_type(prediction_type)
    if not gamma > 0:
        raise TrainingConfigError(
            "training.min_snr_gamma", f"must be greater than 0 (got {gamma}); 5 is typical"
        )
    snr = compute_snr(noise_scheduler, timesteps)
    if prediction_type == "v_prediction":
        return torch.clamp(snr, max=gamma) / (snr + 1.0)
    # min(snr, g)/snr == min(1, g/snr); this form stays 1 (not 0/0) at the zero-terminal-SNR timestep.
    return torch.clamp(gamma / snr, max=1.0)


def diffusion_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    *,
    timesteps: torch.Tensor,
    noise_scheduler,
    min_snr_gamma: float | None,
    prediction_type: str,
    loss_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch-mean of per-sample float32 MSE, each sample weighted by min-SNR and `loss_weights` (e.g. prior)."""
    if model_pred.shape != target.shape:  # broadcasting would silently train on the wrong loss
        raise ValueError(
            f"model prediction {tuple(model_pred.shape)} and target {tuple(target.shape)} differ"
        )
    if prediction_type != noise_scheduler.config.prediction_type:
        raise ValueError(
            f"loss for {prediction_type!r} but the noise scheduler targets {noise_scheduler.config.prediction_type!r}"
        )
    batch = model_pred.shape[0]
    per_sample = (model_pred.float() - target.float()).pow(2).reshape(batch, -1).mean(dim=1)
    if min_snr_gamma:  # None or 0 means off, as in kohya
        per_sample = per_sample * min_snr_loss_weights(
            noise_scheduler, timesteps, min_snr_gamma, prediction_type
        )
    if loss_weights is not None:
        if loss_weights.shape != (batch,):
            raise ValueError(f"loss_weights must have shape ({batch},), got {tuple(loss_weights.shape)}")
        per_sample = per_sample * loss_weights.to(per_sample.device, torch.float32)
    return per_sample.mean()


def _randn(
    shape: tuple[int, ...] | torch.Size, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(device)


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise TrainingConfigError(
            "model.prediction_type",
            f"unsupported prediction type {prediction_type!r}; use one of: {', '.join(PREDICTION_TYPES)}",
        )
