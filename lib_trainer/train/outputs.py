"""What a job leaves behind: LoRA files with full metadata, the Lora-card sidecar, samples, resume state.

Files are named like kohya's (`NAME-000001.safetensors` per epoch, `NAME.safetensors` final) and the stem is
chosen once per job so it is unique in the output folder: the WebUI caches LoRAs by file name, so a new
job must never reuse or overwrite an old name.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

from ..export.bundled_embedding import bundle_tensors
from ..export.kohya_keys import export_kohya_state_dict
from ..export.lora_file import save_lora, write_lora_sidecar_json
from ..export.lora_names import next_free_name
from ..export.metadata import LoraTrainingInfo, add_modelspec, build_lora_metadata
from ..export.safe_write import atomic_write_bytes
from ..spec import spec_to_dict
from .dataset_prep import training_size
from .finetune import ema_weights, is_full_finetune, trainable_components
from .lora import load_lora_state_dict, lora_state_dict
from .optimizers import describe_optimizer
from .sampling import SampleRequest, generate_samples
from .schedulers import resolve_warmup_steps

SD_VERSION_LABEL = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}


def _taken(output_dir: Path, stem: str) -> bool:
    if not output_dir.is_dir():
        return False
    return any(p.name == f"{stem}.safetensors" or p.name.startswith(f"{stem}-") for p in output_dir.iterdir())


def choose_output_name(output_dir: Path, name: str, whole_tree: bool = False) -> str:
    """`name`, or `name_2`, `name_3`... if files of that family already exist there.

    whole_tree: the name must be free in every subfolder of output_dir too (the WebUI's LoRA folder, where
    files land in a folder per LoRA and names must be unique across the whole tree)."""
    if whole_tree:
        return next_free_name(output_dir, name)
    stem, n = name, 1
    while _taken(output_dir, stem):
        n += 1
        stem = f"{name}_{n}"
    return stem


def vae_identity(ctx) -> str:
    """Latent caches are only valid for the VAE encoder that made them (a VAE with only a new decoder, like
    SD's ft-MSE VAE, makes the same latents): key them by the encoder's weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(ctx.base.vae.state_dict().items()):
        if name.startswith(("encoder.", "quant_conv.")):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().flatten()[:4096].numpy().tobytes())
    return digest.hexdigest()[:16]


TRIGGER_STATE = "trigger/"  # resume-state keys of a learnt trigger word: trigger/te0, trigger/te1 (offsets)


def collect_lora_state(ctx) -> dict[str, torch.Tensor]:
    out = {}
    for comp, module in trainable_components(ctx).items():
        out.update({f"{comp}/{k}": v for k, v in lora_state_dict(module).items()})
    trigger = ctx.base.trigger_embedding
    if trigger is not None:
        out.update(
            {f"{TRIGGER_STATE}te{i}": p.detach().to("cpu", copy=True) for i, p in enumerate(trigger.offsets)}
        )
    return out


def apply_lora_state(ctx, tensors: dict[str, torch.Tensor]) -> None:
    for comp, module in trainable_components(ctx).items():
        prefix = f"{comp}/"
        load_lora_state_dict(
            module, {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
    trigger = ctx.base.trigger_embedding
    saved = {k: v for k, v in tensors.items() if k.startswith(TRIGGER_STATE)}
    if (trigger is None) != (not saved):
        raise ValueError(
            "the saved state and this job disagree about network.learn_trigger; resume with the setting the "
            "job started with"
        )
    if trigger is not None:
        with torch.no_grad():
            for i, p in enumerate(trigger.offsets):
                p.copy_(saved[f"{TRIGGER_STATE}te{i}"])


def kohya_tensors(ctx) -> dict[str, torch.Tensor]:
    """The LoRA file's tensors; a learnt trigger word goes in as a bundled embedding named after the word."""
    net = ctx.spec.network
    alpha = net.alpha if net.alpha is not None else net.rank
    tensors = export_kohya_state_dict(
        ctx.base.unet if net.train_unet else None,
        ctx.base.text_encoders if net.train_text_encoder else [],
        ctx.base.arch.family,
        alpha,
        ctx.base.arch.unet_config,
    )
    trigger = ctx.base.trigger_embedding
    if trigger is not None:
        vectors = [trigger.vectors(i) for i in range(len(ctx.base.text_encoders))]
        tensors.update(bundle_tensors(trigger.word, vectors, ctx.base.arch.family))
    return tensors


def training_info(ctx, output_name: str, epoch: int) -> LoraTrainingInfo:
    spec, arch, data = ctx.spec, ctx.base.arch, ctx.data
    scan = ctx.scan
    resolution = training_size(spec)
    return LoraTrainingInfo(
        output_name=output_name,
        base_model_path=ctx.resolved.checkpoint,
        vae_path=ctx.resolved.vae,
        family=arch.family,
        v_prediction=arch.prediction_type == "v_prediction",
        resolution=resolution,
        network_dim=spec.network.rank,
        network_alpha=spec.network.alpha if spec.network.alpha is not None else spec.network.rank,
        train_unet=spec.network.train_unet,
        train_text_encoder=spec.network.train_text_encoder,
        unet_lr=spec.training.learning_rate,
        text_encoder_lr=spec.training.text_encoder_lr or spec.training.learning_rate,
        optimizer=describe_optimizer(ctx.optimizer),
        lr_scheduler=spec.training.lr_scheduler,
        lr_warmup_steps=resolve_warmup_steps(spec.training.lr_warmup_steps, ctx.total_steps),
        num_epochs=ctx.num_epochs,
        epoch=epoch,
        steps=ctx.progress.global_step,
        max_train_steps=ctx.total_steps,
        batch_size=spec.training.batch_size,
        gradient_accumulation_steps=spec.training.gradient_accumulation_steps,
        mixed_precision=spec.training.mixed_precision,
        seed=spec.training.seed,
        clip_skip=spec.model.clip_skip,
        noise_offset=spec.training.noise_offset,
        min_snr_gamma=spec.training.min_snr_gamma,
        caption_dropout_rate=spec.dataset.caption_dropout,
        shuffle_caption=spec.dataset.shuffle_captions,
        keep_tokens=spec.dataset.keep_tokens,
        flip_aug=spec.dataset.flip_aug,
        enable_bucket=spec.dataset.enable_bucket,
        min_bucket_reso=spec.dataset.min_bucket_reso,
        max_bucket_reso=spec.dataset.max_bucket_reso or (2048 if arch.is_sdxl else 1024),
        bucket_no_upscale=spec.dataset.bucket_no_upscale,
        bucket_info=data.bucket_info(),
        num_train_images=scan.num_train_images,
        num_reg_images=0,
        num_batches_per_epoch=len(data.batches(0)),
        tag_frequency=scan.tag_frequency(),
        dataset_dirs=scan.dataset_dirs(),
        training_started_at=ctx.progress.training_started_at,
        training_finished_at=time.time(),
        gradient_checkpointing=spec.training.gradient_checkpointing,
        cache_latents=spec.dataset.cache_latents != "off",
        trigger_word=spec.dataset.trigger_word,
        max_grad_norm=spec.training.max_grad_norm,
        job_spec=spec_to_dict(spec),
    )


def save_lora_file(ctx, stem: str, epoch: int) -> Path:
    path = ctx.resolved.output_dir / f"{stem}.safetensors"
    info = training_info(ctx, stem, epoch)
    metadata = build_lora_metadata(info)
    add_modelspec(metadata, info)
    ctx.resolved.output_dir.mkdir(parents=True, exist_ok=True)
    save_lora(path, kohya_tensors(ctx), metadata, ctx.spec.output.save_precision)
    ctx.events.emit("checkpoint", path=str(path), epoch=epoch, step=ctx.progress.global_step)
    ctx.saved_files.append(str(path))
    return path


def _sample_requests(ctx) -> list[SampleRequest]:
    spec = ctx.spec
    width, height = training_size(spec)
    out = []
    for p in spec.samples.prompts:
        prompt = p.prompt.replace("{trigger}", spec.dataset.trigger_word)
        out.append(
            SampleRequest(
                prompt, p.negative_prompt, p.seed, p.width or width, p.height or height, p.cfg_scale, p.steps
            )
        )
    if not out:
        # No prompt given: show what the LoRA does to a real caption of the dataset, as users would prompt it.
        out.append(SampleRequest(default_sample_prompt(ctx), "", 1, width, height, 7.0, 20))
    return out


def default_sample_prompt(ctx) -> str:
    trigger = ctx.spec.dataset.trigger_word
    item = ctx.scan.items[0]
    caption = item.caption or item.class_tokens or trigger
    if trigger and trigger not in caption:
        caption = f"{trigger}, {caption}"
    return caption


def make_samples(ctx, label: str) -> list[Path]:
    requests = _sample_requests(ctx)
    if not requests:
        return []
    modules = [ctx.base.unet, *ctx.base.text_encoders]
    for m in modules:
        m.eval()
    with ema_weights(ctx):  # a full fine-tune with EMA saves the average: show that
        paths = _generate(ctx, requests, label)
    ctx.base.unet.train(ctx.spec.network.train_unet)
    for encoder in ctx.base.text_encoders:
        encoder.train(ctx.spec.network.train_text_encoder)
    ctx.last_samples = paths
    for i, path in enumerate(paths):
        ctx.events.emit(
            "sample", path=str(path), prompt=requests[i].prompt, label=label, step=ctx.progress.global_step
        )
    return paths


def _generate(ctx, requests: list[SampleRequest], label: str) -> list[Path]:
    return generate_samples(
        ctx.base,
        requests,
        ctx.job_dir / "samples",
        f"{ctx.progress.output_name}_{label}",
        sampler_name=ctx.spec.samples.sampler,
        training_scheduler=ctx.noise_scheduler,
        clip_skip=ctx.spec.model.clip_skip,
        device=ctx.device,
        autocast_dtype=ctx.autocast_dtype,
    )


def end_of_epoch(ctx, finished: bool) -> None:
    epoch = ctx.progress.epoch  # epochs completed so far
    every = ctx.spec.output.save_every_epochs
    if not finished and every and epoch % every == 0:
        save_output_file(ctx, f"{ctx.progress.output_name}-{epoch:06d}", epoch)
    sample_every = ctx.spec.samples.every_epochs
    if sample_every and (epoch % sample_every == 0 or finished):
        make_samples(ctx, f"e{epoch:06d}")


def save_output_file(ctx, stem: str, epoch: int) -> Path:
    """A LoRA file, or for a full fine-tune a checkpoint."""
    if is_full_finetune(ctx.spec):
        from .finetune_outputs import save_checkpoint_file

        return save_checkpoint_file(ctx, stem, epoch)
    return save_lora_file(ctx, stem, epoch)


def _write_preview(ctx, path: Path) -> list[str]:
    """The WebUI's card shows NAME.preview.png (Lora and checkpoint cards alike): the newest first sample."""
    if not ctx.last_samples:
        return []
    preview = path.with_name(f"{path.stem}.preview.png")
    atomic_write_bytes(preview, ctx.last_samples[0].read_bytes(), overwrite=False)
    return [str(preview)]


def save_final(ctx) -> list[str]:
    stem = ctx.progress.output_name
    if is_full_finetune(ctx.spec):
        from .finetune_outputs import extract_lora_output, save_checkpoint_file

        path = save_checkpoint_file(ctx, stem, ctx.progress.epoch)
        preview = _write_preview(ctx, path)
        extract_lora_output(ctx, path)
        return [*ctx.saved_files, *preview]
    path = save_lora_file(ctx, stem, ctx.progress.epoch)
    sidecar = path.with_suffix(".json")
    write_lora_sidecar_json(
        sidecar,
        activation_text=ctx.spec.dataset.trigger_word,
        preferred_weight=ctx.spec.output.preferred_weight,
        sd_version=SD_VERSION_LABEL[ctx.base.arch.family],
        description=f"Trained with lib_trainer on {ctx.resolved.checkpoint.name}",
    )
    return [*ctx.saved_files, str(sidecar), *_write_preview(ctx, path)]


def save_cancelled(ctx) -> list[str]:
    if ctx.progress.global_step == 0:
        return []
    stem = f"{ctx.progress.output_name}-step{ctx.progress.global_step:08d}"
    return [str(save_output_file(ctx, stem, ctx.progress.epoch))]
