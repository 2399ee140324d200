"""Set a job up (models, data, LoRA layers, optimizer) and run it with full error reporting.

`run_job` is the one entry point the CLI and the WebUI's job manager use. Its exit code and the last event
in events.jsonl tell what happened: 0 done, 2 bad input (nothing written to the output folder), 3 cancelled
(state saved, resumable), 1 failed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..data.buckets import BucketManager, validate_bucket_settings
from ..data.captions import build_caption
from ..data.errors import DatasetError
from ..data.latent_cache import LatentCache
from ..data.scan import scan_dataset
from ..models.arch import ModelFormatError
from ..spec import JobSpec, SpecError
from . import outputs
from .dataset_prep import LatentSource, assign_buckets, default_cache_dir, training_size
from .events import EventWriter
from .finetune import (
    disk_space_warning,
    finetune_param_groups,
    is_full_finetune,
    learning_rate_warnings,
    make_ema,
)
from .lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora, lora_parameters
from .optimizers import TrainingConfigError, build_optimizer, optimizer_warnings
from .preflight import PreflightError, preflight
from .prior import DREAMBOOTH_MODES
from .runner import (
    EXIT_BAD_INPUT,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    StopRequested,
    StopSignals,
    TrainContext,
    precision_dtypes,
    restore,
    save_resume_state,
    steps_plan,
    stop_requested,
    train_loop,
    write_job_file,
)
from .schedulers import build_scheduler, resolve_warmup_steps
from .trigger_embedding import TriggerEmbedding, embedding_steps, starting_vectors

if TYPE_CHECKING:
    from .prior import ClassImagePrior

log = logging.getLogger("lib_trainer")
CLASS_IMAGE_CACHE = (
    "_class-images"  # next to the job folders, so every job with the same base and class prompt shares it
)
USER_ERRORS = (SpecError, PreflightError, DatasetError, ModelFormatError, TrainingConfigError)


def enforce_offline() -> None:
    """The trainer never downloads: make every Hugging Face library fail instead of reaching out."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE"):
        os.environ[var] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def quiet_libraries() -> None:
    """diffusers/transformers warn about things that are expected here (dtype casts of frozen modules,
    no torchvision); our own events say what matters, so their chatter would only bury it."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def prepare_data(ctx: TrainContext) -> None:
    spec, arch = ctx.spec, ctx.resolved.arch
    scan = scan_dataset(
        ctx.resolved.dataset_dir,
        caption_extension=spec.dataset.caption_extension,
        trigger_word=spec.dataset.trigger_word,
    )
    for warning in scan.warnings:
        ctx.events.emit("warning", message=warning)
    width, height = training_size(spec)
    step = spec.dataset.bucket_reso_steps or arch.bucket_step
    max_reso = spec.dataset.max_bucket_reso or (2048 if arch.is_sdxl else 1024)
    if spec.dataset.enable_bucket:
        validate_bucket_settings(
            (width, height), spec.dataset.min_bucket_reso, max_reso, step, arch.bucket_step
        )
        manager = BucketManager(
            (width, height), spec.dataset.min_bucket_reso, max_reso, step, spec.dataset.bucket_no_upscale
        )
    else:
        manager = BucketManager(
            (width, height), min(width, height), max(width, height), step, False, fixed=True
        )
    ctx.data = assign_buckets(scan, manager, spec.training.batch_size, spec.training.seed)
    ctx.bucket_manager = manager
    ctx.scan = scan
    ctx.events.emit("info", message="buckets:\n" + ctx.data.bucket_summary())


def _latent_source(ctx: TrainContext, data, folder: Path, what: str) -> LatentSource:
    """Latents of `data` (cached as dataset.cache_latents says), encoded now unless caching is off."""
    spec = ctx.spec
    mode = spec.dataset.cache_latents
    disk = None
    if mode == "disk":
        disk = Path(spec.dataset.cache_dir) if spec.dataset.cache_dir else default_cache_dir(folder)
    cache = LatentCache(disk, outputs.vae_identity(ctx)) if mode != "off" else None
    source = LatentSource(data, ctx.base.vae, cache, ctx.device, cache_on=mode != "off")
    if mode == "off":
        return source
    flips = (False, True) if spec.dataset.flip_aug else (False,)
    started = time.time()
    last = [0.0]

    def report(done: int, total: int) -> None:
        if time.time() - last[0] > 1.0 or done == total:
            last[0] = time.time()
            ctx.events.emit(
                "info", message=f"caching {what}latents {done}/{total}", stage="cache", done=done, total=total
            )

    source.warm(flips, report)
    ctx.events.emit("info", message=f"{what}latents ready in {time.time() - started:.1f}s", stage="cache")
    return source


def cache_latents(ctx: TrainContext) -> None:
    ctx.latents = _latent_source(ctx, ctx.data, ctx.resolved.dataset_dir, "")


def setup_prior(ctx: TrainContext) -> None:
    """The class half of DreamBooth (before the LoRA layers exist, so class images come from the base model)."""
    from .prior import LORA_OFF, TRIGGER_OFF, TRIGGER_OFF_AND_CLASS_IMAGES, LoraOffPrior, TriggerOffPrior

    spec = ctx.spec
    if spec.mode not in DREAMBOOTH_MODES:
        return
    db = spec.dreambooth
    if db.prior_loss_weight == 0:
        ctx.events.emit("info", message="no prior preservation (dreambooth.prior_loss_weight is 0)")
        return
    if db.prior in (TRIGGER_OFF, TRIGGER_OFF_AND_CLASS_IMAGES):
        with_class = db.prior == TRIGGER_OFF_AND_CLASS_IMAGES
        class_half = _class_image_prior(ctx) if with_class else None
        ctx.prior = TriggerOffPrior(spec.dataset.trigger_word, db.prior_loss_weight, class_half=class_half)
        ctx.events.emit(
            "info",
            message=f'prior preservation: each caption without "{spec.dataset.trigger_word}", base model with '
            "the LoRA off" + (", and a batch of class images every step" if with_class else ""),
        )
        return
    if db.prior == LORA_OFF:
        ctx.prior = LoraOffPrior(db.class_prompt, db.prior_loss_weight)
        ctx.events.emit(
            "info", message=f'prior preservation: base model with the LoRA off for "{db.class_prompt}"'
        )
        return
    ctx.prior = _class_image_prior(ctx)


def _class_image_prior(ctx: TrainContext) -> ClassImagePrior:
    """Class images from the user's folder, or made by the base model (kept in a cache beside the jobs)."""
    from .class_images import ClassImageSettings, ClassImagesStopped, ensure_class_images, model_fingerprint
    from .prior import ClassImagePrior

    spec = ctx.spec
    db = spec.dreambooth
    if db.class_data:
        folder = Path(db.class_data).expanduser()
        scan = scan_dataset(folder, caption_extension=spec.dataset.caption_extension, trigger_word="")
        ctx.events.emit(
            "class_images", generated=0, reused=0, total=len(scan.items), folder=str(folder), source="folder"
        )
    else:
        width, height = training_size(spec)
        settings = ClassImageSettings(
            prompt=db.class_prompt,
            negative_prompt=db.class_negative_prompt,
            count=db.num_class_images,
            width=width,
            height=height,
            sampler=db.class_sampler,
            steps=db.class_steps,
            cfg_scale=db.class_cfg_scale,
            clip_skip=spec.model.clip_skip,
            seed=spec.training.seed,
        )
        try:
            made = ensure_class_images(
                ctx.base,
                settings,
                ctx.job_dir.parent / CLASS_IMAGE_CACHE,
                # the files, and what the job decided about them (a forced prediction type draws differently)
                fingerprint=f"{model_fingerprint(ctx.resolved.checkpoint, ctx.resolved.vae)}:"
                f"{ctx.base.arch.model_type_label}:{ctx.base.arch.prediction_type}",
                training_scheduler=ctx.noise_scheduler,
                device=ctx.device,
                autocast_dtype=ctx.autocast_dtype,
                events=ctx.events,
                should_stop=lambda: stop_requested(ctx),
            )
        except ClassImagesStopped:
            raise StopRequested from None
        folder = made.folder
        wanted = {p.resolve() for p in made.images}
        scan = scan_dataset(folder, caption_extension=".txt", trigger_word="")
        scan.items = [item for item in scan.items if Path(item.path).resolve() in wanted]
    if not scan.items:
        raise DatasetError(f"there are no class images in {folder}; set dreambooth.num_class_images above 0")
    data = assign_buckets(scan, ctx.bucket_manager, spec.training.batch_size, spec.training.seed + 1)
    latents = _latent_source(ctx, data, folder, "class image ")
    return ClassImagePrior(data, latents, db.class_prompt, db.prior_loss_weight)


def setup_models(ctx: TrainContext) -> None:
    from ..models.loader import load_base_model
    from .noise import make_noise_scheduler

    spec, resolved = ctx.spec, ctx.resolved
    base = load_base_model(
        resolved.checkpoint,
        resolved.vae,
        prediction_type=spec.model.prediction_type,
        model_type=spec.model.model_type,
    )
    ctx.base = base
    if base.arch.prediction_source != resolved.arch.prediction_source:
        ctx.events.emit(
            "info",
            message=f"prediction type: {base.arch.prediction_type} ({base.arch.prediction_source}); "
            "set model.prediction_type if that is wrong",
        )
    ctx.weight_dtype, ctx.autocast_dtype = precision_dtypes(spec.training.mixed_precision, ctx.device)
    if ctx.autocast_dtype == torch.float16:
        ctx.grad_scaler = torch.amp.GradScaler(ctx.device.type)
    if ctx.device.type == "cpu" and spec.training.mixed_precision != "no":
        ctx.events.emit("info", message="training in fp32 on the CPU (mixed precision only applies to GPUs)")
    # A full fine-tune keeps fp32 master weights of what it trains: a bf16 round trip would lose precision.
    full = is_full_finetune(spec)
    unet_dtype = torch.float32 if full and spec.network.train_unet else ctx.weight_dtype
    te_dtype = torch.float32 if full and spec.network.train_text_encoder else ctx.weight_dtype
    base.vae.to(ctx.device, torch.float32).requires_grad_(False).eval()
    base.unet.to(ctx.device, unet_dtype).requires_grad_(False)
    for encoder in base.text_encoders:
        encoder.to(ctx.device, te_dtype).requires_grad_(False).eval()
    if spec.training.attention == "xformers":
        base.unet.enable_xformers_memory_efficient_attention()
    ctx.noise_scheduler = make_noise_scheduler(base.arch.prediction_type)


def warn_long_captions(ctx: TrainContext) -> None:
    """CLIP reads 75 tokens; the rest of a caption is cut off (kohya's default too). Say so once, with names."""
    tokenizer = ctx.base.tokenizers[0]
    limit = tokenizer.model_max_length - 2
    long = [
        item.path.name
        for item in ctx.scan.items
        if item.caption and len(tokenizer(item.caption).input_ids) - 2 > limit
    ]
    if long:
        shown = ", ".join(long[:5]) + (f" and {len(long) - 5} more" if len(long) > 5 else "")
        ctx.events.emit(
            "warning",
            message=f"{len(long)} caption(s) are longer than {limit} tokens; the end is ignored in training: {shown}",
        )


def add_networks(ctx: TrainContext) -> None:
    """What trains: LoRA layers (modes lora, dreambooth-lora) or the model itself (dreambooth); then the
    optimizer and the learning-rate schedule over those parameters."""
    spec = ctx.spec
    if is_full_finetune(spec):
        groups = finetune_param_groups(ctx)
        warnings = learning_rate_warnings(spec)
    else:
        groups = _lora_param_groups(ctx)
        warnings = []
    ctx.trainable_params = [p for group in groups for p in group["params"]]
    for message in warnings + optimizer_warnings(spec.training.optimizer, spec.training.learning_rate):
        ctx.events.emit("warning", message=message)
    ctx.optimizer = build_optimizer(
        spec.training.optimizer,
        groups,
        lr=spec.training.learning_rate,
        device_type=ctx.device.type,
        extra_args=spec.training.optimizer_args,
    )
    ctx.ema = make_ema(ctx)
    per_epoch, total, epochs = steps_plan(spec, len(ctx.data.batches(0)))
    ctx.steps_per_epoch, ctx.total_steps, ctx.num_epochs = per_epoch, total, epochs
    if ctx.base.trigger_embedding is not None:
        net = spec.network
        ctx.events.emit(
            "info",
            message=f'learning the trigger word "{spec.dataset.trigger_word}": '
            f"{net.trigger_vectors} vector(s) per text encoder, starting from "
            f'"{net.trigger_init or spec.dataset.trigger_word}", trained for the first '
            f"{embedding_steps(net.trigger_train_fraction, total)} of {total} steps",
        )
    if is_full_finetune(spec):
        space = disk_space_warning(spec, ctx.resolved.checkpoint, ctx.resolved.output_dir, epochs)
        if space:
            ctx.events.emit("warning", message=space)
    ctx.lr_scheduler = build_scheduler(
        spec.training.lr_scheduler,
        ctx.optimizer,
        total_steps=total,
        warmup_steps=resolve_warmup_steps(spec.training.lr_warmup_steps, total),
        num_cycles=spec.training.lr_scheduler_num_cycles,
        power=spec.training.lr_scheduler_power,
    )


def _lora_param_groups(ctx: TrainContext) -> list[dict]:
    spec, base = ctx.spec, ctx.base
    net = spec.network
    alpha = net.alpha if net.alpha is not None else net.rank
    groups = []
    if net.train_unet:
        add_lora(base.unet, UNET_TARGETS, net.rank, alpha, net.dropout)
        groups.append({"params": lora_parameters(base.unet), "lr": spec.training.learning_rate})
        if spec.training.gradient_checkpointing:
            base.unet.enable_gradient_checkpointing()
    if net.train_text_encoder:
        te_lr = spec.training.text_encoder_lr or spec.training.learning_rate
        for encoder in base.text_encoders:
            add_lora(encoder, TEXT_ENCODER_TARGETS, net.rank, alpha, net.dropout)
            groups.append({"params": lora_parameters(encoder), "lr": te_lr})
            if spec.training.gradient_checkpointing:
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for group in groups:  # trainable weights stay fp32 under autocast (kohya does the same)
        for p in group["params"]:
            p.data = p.data.float()
    if net.learn_trigger:
        groups.append(_trigger_embedding_group(ctx))
    return groups


def _trigger_embedding_group(ctx: TrainContext) -> dict:
    """network.learn_trigger: vectors for the trigger word, trained with the LoRA (trigger_embedding.py says
    why their step is scaled rather than given its own learning rate). No weight decay: it would pull the
    vectors towards the word's starting point at a rate that depends on the optimizer."""
    spec, base = ctx.spec, ctx.base
    net, word = spec.network, spec.dataset.trigger_word
    start = starting_vectors(
        base.text_encoders, base.tokenizers, net.trigger_init or word, net.trigger_vectors
    )
    trigger = TriggerEmbedding(word, base.tokenizers, start, net.trigger_step_scale, trainable=True)
    trigger.to(ctx.device).attach(base.text_encoders)
    base.trigger_embedding = trigger
    _check_trigger_in_captions(ctx, trigger)
    return {"params": trigger.parameters(), "lr": spec.training.learning_rate, "weight_decay": 0.0}


def _check_trigger_in_captions(ctx: TrainContext, trigger: TriggerEmbedding) -> None:
    """An embedding for a word no caption uses would never train: refuse that, and name the captions that
    miss it (those images then teach the LoRA without the word)."""
    spec = ctx.spec
    prompt = spec.dreambooth.instance_prompt if spec.mode in DREAMBOOTH_MODES else ""
    tokenizer = ctx.base.tokenizers[0]

    def has_word(text: str) -> bool:  # the training splice itself: a word cut off at 75 tokens does not count
        return bool((trigger.tokenize(0, tokenizer, [text])[1] >= 0).any())

    if prompt:
        captions = {"dreambooth.instance_prompt": prompt.replace("{trigger}", spec.dataset.trigger_word)}
    else:
        captions = {
            item.path.name: build_caption(
                item.caption,
                class_tokens=item.class_tokens,
                trigger_word=spec.dataset.trigger_word,
                prepend_trigger=spec.dataset.prepend_trigger_word,
                shuffle=False,
                keep_tokens=0,
                dropout_rate=0.0,
                rng=random.Random(0),
            )
            for item in ctx.scan.items
        }
    missing = [name for name, text in captions.items() if not has_word(text)]
    if len(missing) == len(captions):
        where = "dreambooth.instance_prompt" if prompt else "any caption"
        raise DatasetError(
            f'network.learn_trigger is on, but the trigger word "{spec.dataset.trigger_word}" is not in {where}; '
            "add it to the captions or turn on dataset.prepend_trigger_word"
        )
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        ctx.events.emit(
            "warning",
            message=f'{len(missing)} caption(s) do not contain the trigger word "{spec.dataset.trigger_word}", '
            f"so they do not train its embedding: {shown}",
        )


def run_job(
    spec: JobSpec,
    job_dir: Path,
    *,
    resume: bool = False,
    stop_at_step: int | None = None,
    echo=None,
) -> int:
    """Run (or resume) a job to the end; never raises for user mistakes, reports them as events."""
    enforce_offline()
    quiet_libraries()
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    events = EventWriter(job_dir / "events.jsonl", echo=echo, log_path=job_dir / "log")
    ctx = None
    try:
        resolved = preflight(spec)
        ctx = TrainContext(
            spec=spec, resolved=resolved, job_dir=job_dir, events=events, stop_at_step=stop_at_step
        )
        if not resume:
            write_job_file(job_dir, spec)
        events.emit(
            "start",
            name=spec.name,
            resume=resume,
            model=str(resolved.checkpoint),
            model_type=resolved.arch.model_type_label,
            prediction_type=resolved.arch.prediction_type,
            device=str(resolved.device),
        )
        torch.manual_seed(spec.training.seed)
        ctx.noise_generator.manual_seed(spec.training.seed)
        ctx.caption_rng = random.Random(spec.training.seed)
        prepare_data(ctx)
        setup_models(ctx)
        warn_long_captions(ctx)
        cache_latents(ctx)
        setup_prior(ctx)
        add_networks(ctx)
        if resume:
            restore(ctx)
            events.emit("info", message=f"resumed at step {ctx.progress.global_step}/{ctx.total_steps}")
        else:
            ctx.progress.training_started_at = time.time()
            ctx.progress.output_name = outputs.choose_output_name(
                resolved.output_dir, spec.name, whole_tree=spec.output.family_folder
            )
        if spec.output.family_folder:
            ctx.resolved = dataclasses.replace(
                resolved, output_dir=resolved.output_dir / ctx.progress.output_name
            )
        events.emit(
            "info",
            message=f"training {ctx.total_steps} steps over {ctx.num_epochs} epochs",
            total_steps=ctx.total_steps,
            total_epochs=ctx.num_epochs,
            steps_per_epoch=ctx.steps_per_epoch,
            output_name=ctx.progress.output_name,
        )
        with StopSignals(ctx):
            train_loop(ctx)
        files = outputs.save_final(ctx)
        ctx.progress.finished = True
        save_resume_state(ctx)
        events.emit("done", files=files, output_name=ctx.progress.output_name, steps=ctx.progress.global_step)
        return EXIT_OK
    except StopRequested:
        return _cancel(ctx, events)
    except USER_ERRORS as exc:
        events.emit("error", message=str(exc), field=getattr(exc, "field", None), kind="input")
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - the event stream must always end with a reason
        events.emit(
            "error", message=f"{type(exc).__name__}: {exc}", kind="crash", traceback=traceback.format_exc()
        )
        return EXIT_FAILED
    finally:
        events.close()


def _cancel(ctx: TrainContext, events: EventWriter) -> int:
    if ctx.optimizer is None:  # stopped while setting up (e.g. making class images): nothing to save yet
        events.emit("cancelled", reason=ctx.stop_reason, step=0, files=[], resumable=False)
        return EXIT_CANCELLED
    files = []
    if ctx.spec.output.save_lora_on_cancel:
        files = outputs.save_cancelled(ctx)
    state_dir = save_resume_state(ctx) if ctx.spec.output.save_state_on_cancel else None
    events.emit(
        "cancelled",
        reason=ctx.stop_reason,
        step=ctx.progress.global_step,
        files=files,
        resumable=state_dir is not None,
    )
    return EXIT_CANCELLED
