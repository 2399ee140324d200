"""The metadata kohya's sd-scripts writes into a LoRA, so WebUIs and tools read our files like kohya's.

A1111 takes the alias from `ss_output_name`, the SD version from `ss_base_model_version`/`ss_v2` (Forge from
`modelspec.architecture`), the tag cloud from `ss_tag_frequency` and the hash from `sshs_model_hash`. Values
follow kohya's folder-mode output (`str()` of the Python value, JSON for dicts), because tools parse them
that way. Our own additions live under `lora_trainer_*` so they never collide with kohya's keys.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import torch

from .. import __version__
from .hashes import checkpoint_hashes, kohya_lora_hashes

PathLike = Union[str, "os.PathLike[str]"]
FAMILIES = ("sd1", "sd2", "sdxl")
NETWORK_MODULE = "networks.lora"
MODELSPEC_VERSION = "1.0.1"
IMPL_SGM = "https://github.com/Stability-AI/generative-models"
IMPL_DIFFUSERS = "diffusers"


@dataclass
class LoraTrainingInfo:
    """Everything the trainer knows about a run at save time; `build_lora_metadata` turns it into strings."""

    output_name: str
    base_model_path: PathLike | None
    family: str  # "sd1" | "sd2" | "sdxl"
    resolution: tuple[int, int] | int
    network_dim: int
    network_alpha: float
    unet_lr: float
    num_epochs: int
    epoch: int
    steps: int
    max_train_steps: int
    batch_size: int
    training_started_at: float
    # Precomputed `checkpoint_hashes()` results; when absent the files are hashed (once per process).
    base_model_hashes: Mapping[str, str] | None = None
    vae_path: PathLike | None = None
    vae_hashes: Mapping[str, str] | None = None
    v_prediction: bool = False
    train_unet: bool = True
    train_text_encoder: bool = False
    text_encoder_lr: float | None = None
    learning_rate: float | None = None  # kohya's base --learning_rate; defaults to unet_lr
    optimizer: str = "AdamW"
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    full_fp16: bool = False
    seed: int | None = None
    clip_skip: int | None = None
    max_token_length: int | None = None
    noise_offset: float | None = None
    min_snr_gamma: float | None = None
    network_dropout: float | None = None
    network_args: Mapping[str, Any] | None = None
    max_grad_norm: float = 1.0
    prior_loss_weight: float = 1.0
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    shuffle_caption: bool = False
    keep_tokens: int = 0
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_no_upscale: bool = False
    bucket_info: Mapping[str, Any] | None = None
    num_train_images: int = 0
    num_reg_images: int = 0
    num_batches_per_epoch: int = 0
    tag_frequency: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    dataset_dirs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    reg_dataset_dirs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    training_finished_at: float | None = None
    session_id: int | None = None  # derived from training_started_at when absent, so all epochs share it
    gradient_checkpointing: bool = False
    cache_latents: bool = False
    trigger_word: str = ""
    job_spec: Mapping[str, Any] | None = None
    training_comment: str | None = None
    title: str | None = None
    author: str | None = None
    description: str | None = None
    license: str | None = None
    tags: str | None = None


def _check(info: LoraTrainingInfo) -> None:
    if info.family not in FAMILIES:
        raise ValueError(f"unknown model family {info.family!r}: expected one of {', '.join(FAMILIES)}")
    if not str(info.output_name or "").strip():
        raise ValueError("the LoRA needs an output name (it becomes its name in the WebUI)")


def resolution_tuple(resolution: tuple[int, int] | list[int] | int) -> tuple[int, int]:
    if isinstance(resolution, int):
        return (resolution, resolution)
    values = tuple(int(v) for v in resolution)
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) != 2:
        raise ValueError(f"resolution must be one number or (width, height), got {resolution!r}")
    return values  # type: ignore[return-value]


def base_model_version(family: str, v_prediction: bool) -> str:
    """kohya's `ss_base_model_version`: sd_v1, sd_v1_v, sd_v2, sd_v2_v or sdxl_base_v1-0."""
    if family == "sdxl":
        return "sdxl_base_v1-0"
    return ("sd_v2" if family == "sd2" else "sd_v1") + ("_v" if v_prediction else "")


def modelspec_architecture(family: str, v_prediction: bool) -> str:
    if family == "sdxl":
        arch = "stable-diffusion-xl-v1-base"
    elif family == "sd2":
        arch = "stable-diffusion-v2-768-v" if v_prediction else "stable-diffusion-v2-512"
    else:
        arch = "stable-diffusion-v1"
    return arch + "/lora"


# ---- privacy: what a shared LoRA file must not reveal ------------------------------------------------------

_SECRET_WORDS = {"password", "passwd", "passphrase", "secret", "secrets", "apikey", "credential"}
_SECRET_WORDS |= {"credentials", "cookie", "cookies", "authorization", "auth", "bearer"}
_TOKEN_OWNERS = {"hf", "huggingface", "auth", "access", "api", "wandb", "github", "civitai"}
_TOKEN_OWNERS |= {"refresh", "session"}
_KEY_OWNERS = {"api", "access", "private", "secret"}
_SECRET_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_-]{20,}|ghp_[A-Za-z0-9]{30,})\b")


def _is_secret_key(key: str) -> bool:
    """Word-based, so `max_token_length` and `keep_tokens` survive while `hf_token` and `api_key` go."""
    words = [w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", key).lower()) if w]
    if not words:
        return False
    if any(w in _SECRET_WORDS for w in words) or words == ["token"]:
        return True
    last, before = words[-1], (words[-2] if len(words) > 1 else "")
    return (last == "token" and before in _TOKEN_OWNERS) or (last == "key" and before in _KEY_OWNERS)


def _home_pattern(home: str | None) -> re.Pattern[str] | None:
    home = os.path.expanduser("~") if home is None else home
    home = home.rstrip("/\\")
    if len(home) <= 3:  # "/" or "C:" (e.g. a container's root home): scrubbing would mangle every path
        return None
    parts = [re.escape(p) for p in re.split(r"[/\\]+", home)]
    flags = re.IGNORECASE if re.match(r"^[A-Za-z]:", home) else 0
    return re.compile(r"[/\\]+".join(parts) + r"(?=[/\\]|$|[\s\"',;)])", flags)


def scrub_private(value: Any, home: str | None = None, _pattern: re.Pattern[str] | None = None) -> Any:
    """Copy of `value` without secret-looking keys or tokens, with the user's home folder shown as `~`."""
    pattern = _pattern if _pattern is not None else _home_pattern(home)
    if isinstance(value, Mapping):
        return {
            str(k): scrub_private(v, _pattern=pattern)
            for k, v in value.items()
            if not (isinstance(k, str) and _is_secret_key(k))
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [scrub_private(v, _pattern=pattern) for v in value]
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        text = _SECRET_VALUE.sub("<removed>", value)
        return pattern.sub("~", text) if pattern is not None else text
    return value


def _json_default(value: Any) -> Any:
    """numpy scalars, tuples-as-lists, paths: what trainer-side stats naturally contain."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _json(value: Any, **kwargs: Any) -> str:
    return json.dumps(value, default=_json_default, **kwargs)


def _dir_names(dirs: Mapping[str, Any]) -> dict[str, Any]:
    """kohya stores folder basenames only; a full path would reveal the user's folder layout."""
    return {os.path.basename(str(k).rstrip("/\\")) or str(k): v for k, v in dirs.items()}


# ---- building ------------------------------------------------------------------------------------------------


def _session_id(info: LoraTrainingInfo) -> int:
    if info.session_id is not None:
        return int(info.session_id)
    digest = hashlib.sha256(repr(float(info.training_started_at)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _file_hashes(path: PathLike | None, given: Mapping[str, str] | None) -> tuple[str | None, dict[str, str]]:
    """(basename, hashes) of a model file; hashes only for a real file, as kohya does."""
    if path is None or str(path).strip() == "":
        return None, {}
    name = os.path.basename(os.fspath(path).rstrip("/\\"))
    if given is not None:
        return name, dict(given)
    if os.path.isfile(path):
        return name, checkpoint_hashes(path)
    return name, {}


def _model_entries(info: LoraTrainingInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    name, hashes = _file_hashes(info.base_model_path, info.base_model_hashes)
    if name is not None:
        out["ss_sd_model_name"] = name
        if hashes:
            out["ss_sd_model_hash"] = hashes["ss_sd_model_hash"]
            out["ss_new_sd_model_hash"] = hashes["ss_new_sd_model_hash"]
    vae_is_file = info.vae_hashes is not None or (info.vae_path is not None and os.path.isfile(info.vae_path))
    if vae_is_file:
        name, hashes = _file_hashes(info.vae_path, info.vae_hashes)
        out["ss_vae_name"] = name
        if hashes:
            out["ss_vae_hash"] = hashes["ss_sd_model_hash"]
            out["ss_new_vae_hash"] = hashes["ss_new_sd_model_hash"]
    return out


def _training_entries(info: LoraTrainingInfo) -> dict[str, Any]:
    base_lr = info.learning_rate if info.learning_rate is not None else info.unet_lr
    te_lr = info.text_encoder_lr if info.text_encoder_lr is not None else base_lr
    return {
        "ss_session_id": _session_id(info),
        "ss_training_started_at": float(info.training_started_at),
        "ss_output_name": info.output_name,
        "ss_learning_rate": base_lr,
        "ss_text_encoder_lr": te_lr if info.train_text_encoder else 0,
        "ss_unet_lr": info.unet_lr if info.train_unet else 0,
        "ss_num_train_images": info.num_train_images,
        "ss_num_validation_images": 0,
        "ss_num_reg_images": info.num_reg_images,
        "ss_num_batches_per_epoch": info.num_batches_per_epoch,
        "ss_num_epochs": info.num_epochs,
        "ss_epoch": info.epoch,
        "ss_steps": info.steps,
        "ss_gradient_checkpointing": bool(info.gradient_checkpointing),
        "ss_gradient_accumulation_steps": info.gradient_accumulation_steps,
        "ss_max_train_steps": info.max_train_steps,
        "ss_lr_warmup_steps": info.lr_warmup_steps,
        "ss_lr_scheduler": info.lr_scheduler,
        "ss_network_module": NETWORK_MODULE,
        "ss_network_dim": info.network_dim,
        "ss_network_alpha": info.network_alpha,
        "ss_network_dropout": info.network_dropout,
        "ss_mixed_precision": info.mixed_precision,
        "ss_full_fp16": bool(info.full_fp16),
        "ss_v2": info.family == "sd2",
        "ss_v_parameterization": info.v_prediction,
        "ss_base_model_version": base_model_version(info.family, info.v_prediction),
        "ss_clip_skip": info.clip_skip,
        "ss_max_token_length": info.max_token_length,
        "ss_cache_latents": bool(info.cache_latents),
        "ss_seed": info.seed,
        "ss_lowram": False,
        "ss_noise_offset": info.noise_offset,
        "ss_zero_terminal_snr": False,
        "ss_training_comment": info.training_comment,
        "ss_optimizer": info.optimizer,
        "ss_max_grad_norm": info.max_grad_norm,
        "ss_caption_dropout_rate": info.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": info.caption_dropout_every_n_epochs,
        "ss_caption_tag_dropout_rate": info.caption_tag_dropout_rate,
        "ss_prior_loss_weight": info.prior_loss_weight,
        "ss_min_snr_gamma": info.min_snr_gamma,
    }


def _dataset_entries(info: LoraTrainingInfo) -> dict[str, Any]:
    """kohya's folder-mode keys (one dataset, the settings given at the top level)."""
    return {
        "ss_batch_size_per_device": info.batch_size,
        "ss_total_batch_size": info.batch_size * info.gradient_accumulation_steps,
        "ss_resolution": resolution_tuple(info.resolution),  # str() gives kohya's "(512, 512)"
        "ss_color_aug": bool(info.color_aug),
        "ss_flip_aug": bool(info.flip_aug),
        "ss_random_crop": bool(info.random_crop),
        "ss_shuffle_caption": bool(info.shuffle_caption),
        "ss_enable_bucket": bool(info.enable_bucket),
        "ss_bucket_no_upscale": bool(info.bucket_no_upscale),
        "ss_min_bucket_reso": info.min_bucket_reso,
        "ss_max_bucket_reso": info.max_bucket_reso,
        "ss_keep_tokens": info.keep_tokens,
        "ss_dataset_dirs": _json(_dir_names(info.dataset_dirs)),
        "ss_reg_dataset_dirs": _json(_dir_names(info.reg_dataset_dirs)),
        "ss_tag_frequency": _json(_dir_names(info.tag_frequency)),
        "ss_bucket_info": _json(info.bucket_info),
    }


def build_lora_metadata(info: LoraTrainingInfo) -> dict[str, str]:
    """The `ss_*` keys kohya writes in folder mode, plus `lora_trainer_*` extras; every value a string."""
    _check(info)
    meta: dict[str, Any] = {**_training_entries(info), **_dataset_entries(info)}
    if info.network_args:
        meta["ss_network_args"] = _json(dict(info.network_args))
    meta["ss_training_finished_at"] = float(
        info.training_finished_at if info.training_finished_at is not None else time.time()
    )
    meta.update(_model_entries(info))
    meta["lora_trainer_version"] = __version__
    if info.job_spec is not None:
        meta["lora_trainer_job_spec"] = _json(scrub_private(info.job_spec), sort_keys=True)
    return {k: str(v) for k, v in meta.items()}


def _iso_date(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(int(timestamp)).isoformat()


def add_modelspec(metadata: dict[str, str], info: LoraTrainingInfo) -> dict[str, str]:
    """Add the `modelspec.*` keys (SAI model spec 1.0.1) kohya writes; Forge reads the architecture from them."""
    _check(info)
    width, height = resolution_tuple(info.resolution)
    finished = info.training_finished_at if info.training_finished_at is not None else time.time()
    spec: dict[str, str | None] = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": modelspec_architecture(info.family, info.v_prediction),
        "modelspec.implementation": IMPL_SGM if info.family == "sdxl" else IMPL_DIFFUSERS,
        "modelspec.title": info.title or info.output_name,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": _iso_date(finished),
        "modelspec.prediction_type": "v" if info.v_prediction else "epsilon",
        "modelspec.implementation_version": f"lib_trainer/{__version__}",
        "modelspec.author": info.author,
        "modelspec.description": info.description,
        "modelspec.license": info.license,
        "modelspec.tags": info.tags,
    }
    # SDXL ignores clip skip, and 1 (the last layer) is everyone's default: only a real skip is worth stating.
    if info.clip_skip is not None and info.clip_skip != 1 and info.family != "sdxl":
        spec["modelspec.encoder_layer"] = str(info.clip_skip)
    if info.trigger_word and info.trigger_word.strip():
        spec["modelspec.trigger_phrase"] = info.trigger_word.strip()
    metadata.update({k: v for k, v in spec.items() if v is not None and v != ""})
    return metadata


def finalize_metadata(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, str]:
    """A copy of `metadata` with `sshs_model_hash`/`sshs_legacy_hash` for exactly these tensors."""
    model_hash, legacy_hash = kohya_lora_hashes(tensors, metadata)
    out = {k: v for k, v in metadata.items() if k not in ("sshs_model_hash", "sshs_legacy_hash")}
    out["sshs_model_hash"] = model_hash
    out["sshs_legacy_hash"] = legacy_hash
    return out
