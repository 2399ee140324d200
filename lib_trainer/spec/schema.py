"""What a valid job spec is: the dataclasses the trainer reads, with one checker per field beside each field.

The rules sit in the dataclass metadata so the validator, `default_spec_dict`, the CLI help and
docs/job-spec.md all read one source. No torch here: the WebUI validates specs inside its own process.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

SPEC_VERSION = 1

Check = Callable[[Any], Any]
Problems = list[tuple[str, str]]


class SpecError(ValueError):
    """Every problem found in a spec at once, so a hobbyist fixes them in one go instead of one per run.

    `errors` holds (field path, message) pairs; str() prints one "path: message" line each.
    `SpecError("training.epochs", "...")` is a shortcut for a single problem.
    """

    def __init__(self, errors: Iterable[tuple[str, str]] | str, message: str | None = None) -> None:
        if isinstance(errors, str):
            errors = [(errors, message or "is not valid")]
        self.errors: list[tuple[str, str]] = [(str(p), str(m)) for p, m in errors]
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return "\n".join(f"{path}: {msg}" if path else msg for path, msg in self.errors)

    def __reduce__(self):  # keep .errors intact across processes (pickling)
        return (SpecError, (self.errors,))


class Invalid(Exception):
    """One field's problem; the loader adds the field path and collects it into a SpecError."""


# ---------------------------------------------------------------- wording helpers


def show(value: Any) -> str:
    """A value the way the user wrote it in JSON (-1, "abc", true, null), cut short if long."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def _range(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        if lo_open:
            return f"greater than {_num(lo)} and " + (
                f"below {_num(hi)}" if hi_open else f"at most {_num(hi)}"
            )
        return f"from {_num(lo)} " + (f"up to but not including {_num(hi)}" if hi_open else f"to {_num(hi)}")
    if lo is not None:
        return f"greater than {_num(lo)}" if lo_open else f"of at least {_num(lo)}"
    if hi is not None:
        return f"below {_num(hi)}" if hi_open else f"of at most {_num(hi)}"
    return ""


def _quote_hint(value: Any) -> str:
    """Catch the most common hobbyist mistake: numbers and switches written in quotes."""
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "false"):
            return " (write true or false without quotes)"
        try:
            float(low)
        except ValueError:
            return ""
        return " (write the number without quotes)"
    return ""


def _key(text: str) -> str:
    """Loose spelling for choices: case, spaces, - and _ do not matter, + means p (DPM++ 2M = dpmpp_2m)."""
    return re.sub(r"[\s_\-]+", "", text.lower()).replace("+", "p")


# ---------------------------------------------------------------- field checkers


def boolean() -> Check:
    def check(value: Any) -> bool:
        if isinstance(value, bool):
            return value
        hint = _quote_hint(value) or (" (use true or false, not 1 or 0)" if value in (0, 1) else "")
        raise Invalid(f"expected true or false, got {show(value)}{hint}")

    return check


def _as_int(value: Any, wanted: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise Invalid(f"expected {wanted}, got {show(value)}{_quote_hint(value)}")


def integer(
    lo: int | None = None, hi: int | None = None, *, step: int | None = None, nullable: bool = False
) -> Check:
    wanted = " ".join(filter(None, ["a whole number", _range(lo, hi)]))
    if step:
        wanted += f" that is a multiple of {step}"
    if nullable:
        wanted += ", or null"

    def check(value: Any) -> int | None:
        if value is None and nullable:
            return None
        n = _as_int(value, wanted)
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            raise Invalid(f"expected {wanted}, got {show(value)}")
        if step and n % step:
            below, above = n - n % step, n - n % step + step
            raise Invalid(
                f"expected {wanted}, got {show(value)}; the nearest allowed values are {below} and {above}"
            )
        return n

    return check


def number(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    nullable: bool = False,
) -> Check:
    wanted = " ".join(filter(None, ["a number", _range(lo, hi, lo_open, hi_open)]))
    if nullable:
        wanted += ", or null"

    def check(value: Any) -> float | None:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise Invalid(f"expected {wanted}, got {show(value)}{_quote_hint(value)}")
        x = float(value)
        too_low = lo is not None and (x <= lo if lo_open else x < lo)
        too_high = hi is not None and (x >= hi if hi_open else x > hi)
        if too_low or too_high:
            raise Invalid(f"expected {wanted}, got {show(value)}")
        return x

    return check


def text(*, strip: bool = False, max_len: int | None = None) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(f"expected text in quotes, got {show(value)}")
        value = value.strip() if strip else value
        if max_len is not None and len(value) > max_len:
            raise Invalid(f"is {len(value)} characters long; use at most {max_len}")
        return value

    return check


def choice(options: Iterable[str], *, nullable: bool = False, hints: dict[str, str] | None = None) -> Check:
    """One of fixed words; spelling is forgiving (case, -, _) and the stored value is the canonical one."""
    options = tuple(options)
    lookup = {_key(o): o for o in options}
    listing = ", ".join(show(o) for o in options) + (", or null" if nullable else "")

    def check(value: Any) -> str | None:
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            raise Invalid(f"expected one of {listing}, got {show(value)}")
        found = lookup.get(_key(value))
        if found is not None:
            return found
        hint = (hints or {}).get(_key(value))
        if hint is None:
            close = difflib.get_close_matches(_key(value), list(lookup), n=1, cutoff=0.6)
            hint = f"did you mean {show(lookup[close[0]])}?" if close else ""
        raise Invalid(f"expected one of {listing}, got {show(value)}" + (f"; {hint}" if hint else ""))

    return check


_KEEP = object()


def file_path(*, keywords: Iterable[str] = (), empty: Any = _KEEP) -> Check:
    """A file or folder path. Quotes from Windows' "Copy as path" and stray spaces are removed."""
    keywords = tuple(keywords)

    def check(value: Any) -> Any:
        if value is None and empty is not _KEEP:
            return empty
        if not isinstance(value, str):
            raise Invalid(f"expected a path in quotes, got {show(value)}")
        s = value.strip()
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
            s = s[1:-1].strip()
        if not s:
            if empty is not _KEEP:
                return empty
            raise Invalid("is empty; give a path")
        return s.lower() if s.lower() in keywords else s

    return check


# ---------------------------------------------------------------- checkers for single special fields


def check_spec_version(value: Any) -> int:
    n = _as_int(value, f"the number {SPEC_VERSION}")
    if n != SPEC_VERSION:
        raise Invalid(
            f"this trainer understands spec_version {SPEC_VERSION}, got {show(value)}; "
            f"set spec_version to {SPEC_VERSION} or update the trainer"
        )
    return n


MODES = ("lora", "dreambooth-lora", "dreambooth")
AVAILABLE_MODES = MODES
FULL_FINETUNE = "dreambooth"  # the mode that trains the model itself and saves a checkpoint


def check_mode(value: Any) -> str:
    return choice(MODES)(value)


_NAME_PUNCT = " -_.()"
_WINDOWS_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}


def _name_char_ok(ch: str) -> bool:
    if ch.isascii():
        return ch.isalnum() or ch in _NAME_PUNCT
    return ch.isalnum() or unicodedata.category(ch).startswith("M")  # accents written as combining marks


def check_name(value: Any) -> str:
    """The LoRA file name, so it must be a name every OS (Windows included) can save."""
    name = text(max_len=100)(value)
    allowed = "use letters, digits, spaces and - _ . ( )"
    if "/" in name or "\\" in name:
        raise Invalid(f"{show(name)} is a path; give only a file name (the folder goes in output.dir)")
    bad = sorted({ch for ch in name if not _name_char_ok(ch)})
    if bad:
        raise Invalid(
            f"{show(name)} contains {' '.join(show(ch) for ch in bad)}, which cannot be used; {allowed}"
        )
    if name.startswith("."):
        raise Invalid(f"{show(name)} starts with a dot, which would hide the file; remove the dot")
    if name != name.strip(" ") or name.endswith("."):
        raise Invalid(
            f"{show(name)} starts or ends with a space or ends with a dot; Windows cannot save that name"
        )
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:
        raise Invalid(f"{show(name)} is a reserved device name on Windows; pick another name")
    return name


def check_caption_extension(value: Any) -> str:
    ext = text(strip=True)(value)
    ext = ext if ext.startswith(".") else "." + ext
    if not re.fullmatch(r"\.[\w\-]+(\.[\w\-]+)*", ext):
        raise Invalid(f'expected a file extension such as ".txt" or ".caption", got {show(value)}')
    return ext


_SIDE = integer(64, 4096, step=8)


def check_resolution(value: Any) -> int | tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise Invalid(f"expected one size like 512 or [width, height] like [512, 768], got {show(value)}")
        sizes = []
        for label, side in zip(("width", "height"), value, strict=True):
            try:
                sizes.append(_SIDE(side))
            except Invalid as exc:
                raise Invalid(f"{label}: {exc}") from None
        return (sizes[0], sizes[1])
    try:
        return _SIDE(value)
    except Invalid as exc:
        raise Invalid(f"{exc} (or [width, height] like [512, 768])") from None


def check_warmup(value: Any) -> int | float:
    """Warm-up is a step count (100) or a fraction of the whole run (0.05); 1.0 and more means steps."""
    wanted = "a whole number of steps (0 or more) or a fraction of the run from 0 up to but not including 1"
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise Invalid(f"expected {wanted}, got {show(value)}{_quote_hint(value)}")
    if isinstance(value, int):
        return value
    if value < 1:
        return float(value)
    if value.is_integer():
        return int(value)
    raise Invalid(f"expected {wanted}, got {show(value)}")


def _plain_value(value: Any) -> bool:
    return isinstance(value, (bool, str)) or (isinstance(value, (int, float)) and math.isfinite(value))


def check_optimizer_args(value: Any) -> dict[str, Any]:
    """Extra keyword arguments for the optimizer (e.g. {"weight_decay": 0.01, "betas": [0.9, 0.99]})."""
    if not isinstance(value, dict):
        raise Invalid(
            f'expected a table of optimizer settings like {{"weight_decay": 0.01}}, got {show(value)}'
        )
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise Invalid(f"{show(key)} is not a valid optimizer argument name")
        if key == "lr":
            raise Invalid("lr: set the learning rate with training.learning_rate instead")
        ok = _plain_value(item) or (isinstance(item, (list, tuple)) and all(_plain_value(x) for x in item))
        if not ok:
            raise Invalid(f"{key}: expected a number, true/false, text or a list of those, got {show(item)}")
        out[key] = list(item) if isinstance(item, (list, tuple)) else item
    return out


def check_device(value: Any) -> str:
    device = text(strip=True)(value).lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise Invalid(
            f'expected "auto", "cpu", "cuda" or "cuda:N" (N = GPU number, e.g. "cuda:1"), got {show(value)}'
        )
    return device


# ---------------------------------------------------------------- the dataclasses


def _f(default: Any, check: Check, *, required: str | None = None) -> Any:
    """A spec field: its default, its checker and, for required fields, what to tell a user who left it out."""
    meta = {"check": check, "required": required}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _section(cls: type) -> Any:
    return field(default_factory=cls, metadata={"section": cls})


MODEL_TYPES = ("sd1", "sd2", "sd2-v", "sdxl")
PREDICTION_TYPES = ("epsilon", "v_prediction")
CACHE_MODES = ("memory", "disk", "off")
OPTIMIZERS = ("AdamW", "AdamW8bit", "Prodigy", "Adafactor")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
ATTENTIONS = ("sdpa", "xformers")
SAVE_PRECISIONS = ("fp16", "bf16", "fp32")
SAMPLERS = ("euler_a", "euler", "ddim", "dpmpp_2m")


@dataclass(frozen=True)
class ModelSpec:
    """The base model; 'current' means the model loaded in the WebUI (only valid inside the WebUI)."""

    checkpoint: str = _f(
        "", file_path(keywords=("current",)), required='give the model file path, or "current" in the WebUI'
    )
    vae: str = _f("none", file_path(keywords=("current", "none"), empty="none"))
    model_type: str | None = _f(None, choice(MODEL_TYPES, nullable=True))
    prediction_type: str | None = _f(None, choice(PREDICTION_TYPES, nullable=True))
    clip_skip: int = _f(1, integer(1, 12))


@dataclass(frozen=True)
class DatasetSpec:
    """Where the images are and how captions and image sizes are handled."""

    path: str = _f("", file_path(), required="give the folder that holds your training images")
    trigger_word: str = _f("", text(strip=True, max_len=200))
    caption_extension: str = _f(".txt", check_caption_extension)
    prepend_trigger_word: bool = _f(False, boolean())
    shuffle_captions: bool = _f(False, boolean())
    keep_tokens: int = _f(0, integer(0, 255))
    caption_dropout: float = _f(0.0, number(0, 1))
    flip_aug: bool = _f(False, boolean())
    enable_bucket: bool = _f(True, boolean())
    min_bucket_reso: int = _f(256, integer(64, 4096, step=8))
    max_bucket_reso: int | None = _f(None, integer(64, 8192, step=8, nullable=True))
    bucket_reso_steps: int | None = _f(None, integer(8, 512, step=8, nullable=True))
    bucket_no_upscale: bool = _f(False, boolean())
    cache_latents: str = _f("disk", choice(CACHE_MODES))
    cache_dir: str | None = _f(None, file_path(empty=None))


@dataclass(frozen=True)
class NetworkSpec:
    """The LoRA itself: its size and which parts of the model it attaches to."""

    rank: int = _f(16, integer(1, 1024))
    alpha: float | None = _f(8.0, number(0, lo_open=True, nullable=True))
    train_unet: bool = _f(True, boolean())
    train_text_encoder: bool = _f(False, boolean())
    dropout: float = _f(0.0, number(0, 1, hi_open=True))
    # A learnt embedding for dataset.trigger_word, trained with the LoRA and bundled into its file
    # (train/trigger_embedding.py).
    learn_trigger: bool = _f(False, boolean())
    trigger_vectors: int = _f(1, integer(1, 16))
    trigger_init: str = _f("", text(strip=True, max_len=200))
    trigger_step_scale: float = _f(30.0, number(0, 1000, lo_open=True))
    trigger_train_fraction: float = _f(1.0, number(0, 1, lo_open=True))


@dataclass(frozen=True)
class TrainingSpec:
    """How long and how hard to train; resolution is an int (square) or a (width, height) tuple."""

    epochs: int = _f(10, integer(1))
    max_steps: int | None = _f(None, integer(1, nullable=True))
    batch_size: int = _f(1, integer(1, 64))
    resolution: int | tuple[int, int] = _f(512, check_resolution)
    learning_rate: float = _f(1e-4, number(0, lo_open=True))
    text_encoder_lr: float | None = _f(None, number(0, lo_open=True, nullable=True))
    optimizer: str = _f("AdamW", choice(OPTIMIZERS))
    optimizer_args: dict[str, Any] = _f({}, check_optimizer_args)
    lr_scheduler: str = _f("cosine", choice(LR_SCHEDULERS))
    lr_warmup_steps: int | float = _f(0, check_warmup)
    lr_scheduler_num_cycles: int = _f(1, integer(1, 1000))
    lr_scheduler_power: float = _f(1.0, number(0, lo_open=True))
    mixed_precision: str = _f(
        "bf16",
        choice(MIXED_PRECISIONS, hints={"fp32": 'use "no" for full 32-bit precision', "none": 'use "no"'}),
    )
    seed: int = _f(42, integer(0, 2**32 - 1))
    gradient_accumulation_steps: int = _f(1, integer(1, 1024))
    max_grad_norm: float = _f(1.0, number(0))
    gradient_checkpointing: bool = _f(False, boolean())
    attention: str = _f("sdpa", choice(ATTENTIONS))
    noise_offset: float = _f(0.0, number(0, 1))
    min_snr_gamma: float | None = _f(None, number(0, lo_open=True, nullable=True))
    device: str = _f("auto", check_device)


@dataclass(frozen=True)
class OutputSpec:
    """Where the LoRA files go and how often they are written."""

    dir: str = _f(
        "",
        file_path(),
        required="give the folder to save the LoRA in (e.g. your WebUI's models/Lora), or the checkpoint "
        'for mode "dreambooth" (e.g. models/Stable-diffusion)',
    )
    save_every_epochs: int = _f(1, integer(0))
    save_precision: str = _f("fp16", choice(SAVE_PRECISIONS))
    save_state_on_cancel: bool = _f(True, boolean())
    save_lora_on_cancel: bool = _f(True, boolean())
    preferred_weight: float = _f(1.0, number(0, 2))
    family_folder: bool = _f(False, boolean())


@dataclass(frozen=True)
class SamplePrompt:
    """One preview image; `{trigger}` in the prompt becomes dataset.trigger_word."""

    prompt: str = _f("", text(), required="give the text of the sample prompt")
    negative_prompt: str = _f("", text())
    seed: int = _f(1, integer(0, 2**32 - 1))
    width: int | None = _f(None, integer(64, 4096, step=8, nullable=True))
    height: int | None = _f(None, integer(64, 4096, step=8, nullable=True))
    cfg_scale: float = _f(7.0, number(1, 30))
    steps: int = _f(20, integer(1, 150))


@dataclass(frozen=True)
class SamplesSpec:
    """Preview images made during training so users can see progress (and overcooking) early."""

    every_epochs: int = _f(1, integer(0))
    sampler: str = _f("euler_a", choice(SAMPLERS))
    prompts: tuple[SamplePrompt, ...] = field(default=(), metadata={"items": SamplePrompt})


PRIORS = ("class-images", "lora-off", "trigger-off", "trigger-off+class-images")
LORA_ONLY_PRIORS = ("lora-off", "trigger-off", "trigger-off+class-images")
TRIGGER_PRIORS = ("trigger-off", "trigger-off+class-images")
"""The priors that take the trigger word out of each caption."""


@dataclass(frozen=True)
class DreamBoothSpec:
    """DreamBooth: the instance (your subject) and the class it belongs to, kept from drifting by a prior-preservation loss.

    Read only by the modes "dreambooth-lora" and "dreambooth"; `{trigger}` in instance_prompt becomes
    dataset.trigger_word. class_data "" means: generate the class images with the base model.
    """

    instance_prompt: str = _f("", text(strip=True, max_len=1000))
    class_prompt: str = _f("", text(strip=True, max_len=1000))
    class_negative_prompt: str = _f("", text())
    num_class_images: int = _f(100, integer(0, 10000))
    class_data: str = _f("", file_path(empty=""))
    prior_loss_weight: float = _f(1.0, number(0, 100))
    prior: str = _f("class-images", choice(PRIORS))
    class_sampler: str = _f("euler_a", choice(SAMPLERS))
    class_steps: int = _f(30, integer(1, 150))
    class_cfg_scale: float = _f(7.0, number(1, 30))


@dataclass(frozen=True)
class FineTuneSpec:
    """The full fine-tune (mode "dreambooth"): the UNet (and, with network.train_text_encoder, the text
    encoder) itself is trained and saved as a checkpoint in output.dir; network.rank/alpha are not used.

    ema keeps a slowly moving average of the weights and saves that (smoother results, one more copy of the
    UNet in memory); extract_lora_rank > 0 also writes a LoRA of the difference to the base into lora_dir.
    """

    ema: bool = _f(False, boolean())
    ema_decay: float = _f(0.9999, number(0, 1, lo_open=True, hi_open=True))
    extract_lora_rank: int = _f(0, integer(0, 1024))
    lora_dir: str = _f("", file_path(empty=""))


@dataclass(frozen=True)
class JobSpec:
    """One training job. Frozen: it is validated once, so nothing may change it behind the validator's back."""

    spec_version: int = _f(SPEC_VERSION, check_spec_version)
    name: str = _f("", check_name, required='give the LoRA a name, e.g. "mychar" (it becomes the file name)')
    mode: str = _f("lora", check_mode)
    model: ModelSpec = _section(ModelSpec)
    dataset: DatasetSpec = _section(DatasetSpec)
    network: NetworkSpec = _section(NetworkSpec)
    training: TrainingSpec = _section(TrainingSpec)
    output: OutputSpec = _section(OutputSpec)
    samples: SamplesSpec = _section(SamplesSpec)
    dreambooth: DreamBoothSpec = _section(DreamBoothSpec)
    finetune: FineTuneSpec = _section(FineTuneSpec)


# ---------------------------------------------------------------- checks that involve more than one field
# Each gets the fields of one table that passed their own checks (a failed one is missing) and returns
# (field name, message) pairs; the loader turns the names into full paths.


def _model_checks(v: dict[str, Any]) -> Problems:
    out = []
    if v.get("model_type") == "sdxl" and v.get("clip_skip", 1) != 1:
        out.append(("clip_skip", "SDXL models do not use clip skip; set it to 1 or leave it out"))
    if v.get("model_type") == "sd2-v" and v.get("prediction_type") == "epsilon":
        out.append(
            (
                "prediction_type",
                'an "sd2-v" model uses "v_prediction"; leave prediction_type out or use model_type "sd2"',
            )
        )
    return out


def _dataset_checks(v: dict[str, Any]) -> Problems:
    out = []
    lo, hi = v.get("min_bucket_reso"), v.get("max_bucket_reso")
    if lo is not None and hi is not None and lo > hi:
        out.append(
            (
                "min_bucket_reso",
                f"is {lo}, larger than max_bucket_reso ({hi}); lower it or raise max_bucket_reso",
            )
        )
    if v.get("prepend_trigger_word") and v.get("trigger_word") == "":
        out.append(("prepend_trigger_word", "is true but trigger_word is empty; set dataset.trigger_word"))
    return out


def _network_checks(v: dict[str, Any]) -> Problems:
    if v.get("train_unet") is False and v.get("train_text_encoder") is False:
        return [
            (
                "train_unet",
                "train_unet and train_text_encoder are both false, so nothing would be trained; "
                "set at least one of them to true",
            )
        ]
    return []


_NO_TRIGGER = "uses {trigger} but dataset.trigger_word is empty; set a trigger word or remove {trigger}"


def _trigger_checks(v: dict[str, Any]) -> Problems:
    dataset, samples, dreambooth = v.get("dataset"), v.get("samples"), v.get("dreambooth")
    if dataset is None or dataset.trigger_word:
        return []
    out = []
    if samples is not None:
        out += [
            (f"samples.prompts[{i}].prompt", _NO_TRIGGER)
            for i, p in enumerate(samples.prompts)
            if "{trigger}" in p.prompt
        ]
    if dreambooth is not None and "{trigger}" in dreambooth.instance_prompt:
        out.append(("dreambooth.instance_prompt", _NO_TRIGGER))
    return out


def _dreambooth_checks(v: dict[str, Any]) -> Problems:
    """The dreambooth section against the mode (a mode that failed its own check is missing: no check)."""
    mode, dreambooth = v.get("mode"), v.get("dreambooth")
    if mode is None or dreambooth is None:
        return []
    out = []
    if (
        mode in ("dreambooth-lora", "dreambooth")
        and not dreambooth.class_prompt
        and dreambooth.prior_loss_weight
        and dreambooth.prior != "trigger-off"
    ):
        out.append(
            (
                "dreambooth.class_prompt",
                f"is empty, but mode {show(mode)} needs it; give the class your subject belongs to, "
                'e.g. "a photo of a dog" (or set prior_loss_weight to 0 to train without prior preservation)',
            )
        )
    # mode "lora" does not read the section, so nothing there can be wrong for it
    if dreambooth.prior in LORA_ONLY_PRIORS and mode == "dreambooth":
        out.append(
            (
                "dreambooth.prior",
                f'{show(dreambooth.prior)} works only with mode "dreambooth-lora" (mode is {show(mode)}); '
                'use "class-images"',
            )
        )
    dataset = v.get("dataset")
    if (
        dreambooth.prior in TRIGGER_PRIORS
        and mode == "dreambooth-lora"
        and dreambooth.prior_loss_weight
        and dataset is not None
        and not dataset.trigger_word
    ):
        out.append(
            (
                "dataset.trigger_word",
                f"is empty, but dreambooth.prior {show(dreambooth.prior)} takes the trigger word out of each "
                'caption; set the word your captions use for the subject, e.g. "ohwx"',
            )
        )
    return out


def _finetune_checks(v: dict[str, Any]) -> Problems:
    """The finetune section is read by mode "dreambooth" only."""
    mode, finetune = v.get("mode"), v.get("finetune")
    if mode != FULL_FINETUNE or finetune is None:
        return []
    if finetune.extract_lora_rank and not finetune.lora_dir:
        return [
            (
                "finetune.lora_dir",
                f"is empty, but finetune.extract_lora_rank is {finetune.extract_lora_rank}; give the folder "
                "for the extracted LoRA (e.g. your WebUI's models/Lora), or set extract_lora_rank to 0",
            )
        ]
    return []


def _learn_trigger_checks(v: dict[str, Any]) -> Problems:
    """A learnt trigger word needs a word, a LoRA file to bundle it in, and a name the WebUI can read back."""
    network, dataset, mode = v.get("network"), v.get("dataset"), v.get("mode")
    if network is None or not network.learn_trigger:
        return []
    if mode == FULL_FINETUNE:
        return [
            (
                "network.learn_trigger",
                f'works only with modes "lora" and "dreambooth-lora" (mode is {show(mode)}): the embedding '
                "is saved inside the LoRA file; turn it off",
            )
        ]
    if dataset is None:
        return []
    word = dataset.trigger_word
    if not word:
        return [
            (
                "dataset.trigger_word",
                "is empty, but network.learn_trigger is on; set the word your captions use for the subject, "
                'e.g. "ohwx"',
            )
        ]
    if "." in word:
        return [
            (
                "dataset.trigger_word",
                f"is {show(word)}; with network.learn_trigger the word becomes the name of an embedding, and "
                "the WebUI cannot read names with a dot; choose a word without one",
            )
        ]
    return []


def _job_checks(v: dict[str, Any]) -> Problems:
    return _trigger_checks(v) + _dreambooth_checks(v) + _finetune_checks(v) + _learn_trigger_checks(v)


CROSS_CHECKS: dict[type, Callable[[dict[str, Any]], Problems]] = {
    ModelSpec: _model_checks,
    DatasetSpec: _dataset_checks,
    NetworkSpec: _network_checks,
    JobSpec: _job_checks,
}
