"""The Advanced section of the Train LoRA tab as data: one `FieldSpec` per job-spec field, and the
conversion between a spec dict and the list of component values (in `FIELDS` order).

Pure data and stdlib: no gradio, no torch. Choice lists come from the spec schema, so a new optimizer or
sampler shows up here by itself; a new spec field makes tests/webui/test_form_fields.py fail until it gets a
row in the table below. Labels, tooltips and placeholders are fixed strings (they get translated).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..spec import schema
from ..spec.load import parse_resolution
from ..spec.schema import JobSpec, SamplePrompt, SpecError

GROUPS: tuple[str, ...] = (
    "Model",
    "Captions",
    "Images & buckets",
    "Network",
    "Training",
    "Optimizer & schedule",
    "Speed & memory",
    "Saving",
    "Samples",
    "DreamBooth",
)
KINDS = ("text", "textarea", "number", "int", "slider", "checkbox", "dropdown")
AUTO = "auto"  # the dropdown entry of a nullable choice field that stands for null (detect / automatic)

# Set by the tab's own inputs (or by the WebUI service), never by the Advanced section.
TAB_FIELDS: frozenset[str] = frozenset(
    {
        "spec_version",
        "name",
        "dataset.path",
        "dataset.trigger_word",
        "model.checkpoint",
        "output.dir",
        "output.family_folder",  # always on in the WebUI: a folder per LoRA, names unique in the LoRA folder
    }
)

# Worth showing next to the tab's own inputs ("Common settings").
BASIC_PATHS: tuple[str, ...] = (
    "training.epochs",
    "training.batch_size",
    "training.resolution",
    "network.rank",
    "training.learning_rate",
)


@dataclass(frozen=True)
class FieldSpec:
    """One component of the Advanced section. `nullable`: an empty box (or "auto" in a dropdown) means
    null, i.e. automatic; int sliders have an int `step`, float sliders a float one."""

    path: str
    label: str
    kind: str
    group: str
    tooltip: str
    minimum: int | float | None = None
    maximum: int | float | None = None
    step: int | float | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    elem_id: str = ""
    placeholder: str = ""

    def __post_init__(self) -> None:
        if not self.elem_id:
            object.__setattr__(self, "elem_id", "lora_trainer_" + self.path.replace(".", "_"))


def _f(path: str, kind: str, label: str, tooltip: str, **kw: Any) -> FieldSpec:
    return FieldSpec(path=path, label=label, kind=kind, group="", tooltip=tooltip, **kw)


def _auto(options: tuple[str, ...]) -> tuple[str, ...]:
    return (AUTO, *options)


_MAX_SEED = 2**32 - 1
_TABLE: dict[str, tuple[FieldSpec, ...]] = {
    "Model": (
        _f("mode", "dropdown", "Training type", "What kind of training to run. lora: a LoRA from your images. dreambooth-lora: a LoRA with DreamBooth prior "
           "preservation (set the class prompt under DreamBooth).",
           choices=schema.AVAILABLE_MODES),
        _f("model.vae", "text", "VAE",
           'The VAE turns images into the compact form the model learns from. "current" (or empty): the VAE '
           'selected in the WebUI; "none": the VAE inside the checkpoint; or the path of a VAE file.',
           placeholder="current, none, or the path of a VAE file"),
        _f("model.model_type", "dropdown", "Model type",
           "The model family: sd1 = SD 1.x, sd2 = SD 2.x, sd2-v = SD 2.x 768-v (v-prediction), sdxl = SDXL. "
           "Leave it on auto: the trainer detects it from the file.",
           choices=_auto(schema.MODEL_TYPES), nullable=True),
        _f("model.prediction_type", "dropdown", "Prediction type",
           "What the model was trained to predict: epsilon (most models) or v_prediction (SD 2.x 768-v "
           "models and some others). Leave it on auto to detect it.",
           choices=_auto(schema.PREDICTION_TYPES), nullable=True),
        _f("model.clip_skip", "slider", "CLIP skip",
           "Use the output of an earlier layer of the text encoder, like the WebUI's Clip skip setting. "
           "1 is usual, 2 is common for anime models; SD 1.x and 2.x only (keep 1 for SDXL).",
           minimum=1, maximum=12, step=1),
    ),
    "Captions": (
        _f("dataset.caption_extension", "text", "Caption file extension",
           "File ending of the caption files next to the images (img1.png + img1.txt). Usually .txt.",
           placeholder=".txt"),
        _f("dataset.prepend_trigger_word", "checkbox", "Put the trigger word first in every caption",
           "Adds the trigger word at the start of every caption. Needs a trigger word."),
        _f("dataset.shuffle_captions", "checkbox", "Shuffle caption tags",
           "Shuffles the comma-separated tags of a caption each time it is used, so the LoRA does not "
           "depend on tag order. Often on for tag lists, off for sentences."),
        _f("dataset.keep_tokens", "int", "Tags kept in front when shuffling",
           "With shuffling on, this many tags at the start of the caption stay in place (1 keeps the "
           "trigger word first). Usually 0 or 1.",
           minimum=0, maximum=255, step=1),
        _f("dataset.caption_dropout", "slider", "Caption dropout rate",
           "Chance of training an image with an empty caption: 0.05 = 5% of the time. Usually 0.",
           minimum=0.0, maximum=1.0, step=0.01),
    ),
    "Images & buckets": (
        _f("dataset.flip_aug", "checkbox", "Also train on mirrored images",
           "Adds left-right mirrored copies of the images. Leave it off for subjects that must not flip, "
           "such as text or one-sided designs."),
        _f("dataset.enable_bucket", "checkbox", "Aspect-ratio buckets",
           "Sorts images of similar shape into groups (buckets) that are trained at their own width and "
           "height, so images are not cropped square. Usually on."),
        _f("dataset.min_bucket_reso", "int", "Smallest bucket side (pixels)",
           "No bucket is narrower or lower than this. A multiple of 8; usually 256.",
           minimum=64, maximum=4096, step=8),
        _f("dataset.max_bucket_reso", "int", "Largest bucket side (pixels)",
           "No bucket is wider or taller than this. A multiple of 8. Empty = automatic: 1024 for SD 1.x "
           "and 2.x, 2048 for SDXL.",
           minimum=64, maximum=8192, step=8, nullable=True, placeholder="empty = automatic"),
        _f("dataset.bucket_reso_steps", "int", "Bucket size step (pixels)",
           "Bucket widths and heights are multiples of this. Empty = automatic: 64 for SD 1.x and 2.x, "
           "32 for SDXL.",
           minimum=8, maximum=512, step=8, nullable=True, placeholder="empty = automatic"),
        _f("dataset.bucket_no_upscale", "checkbox", "Never enlarge small images",
           "Images smaller than the training resolution go into a smaller bucket instead of being "
           "enlarged. Usually off."),
    ),
    "Network": (
        _f("network.rank", "int", "Network rank (dim)",
           "The size of the LoRA (called dim in other trainers). Bigger learns more detail but makes a "
           "bigger file and overfits sooner; 8 to 32 is usual.",
           minimum=1, maximum=1024, step=1),
        _f("network.alpha", "number", "Network alpha",
           "Scales the LoRA while it trains: its strength is alpha divided by rank, so a lower alpha "
           "learns more gently. Usually half the rank; empty = same as the rank.",
           minimum=0.01, maximum=None, nullable=True, placeholder="empty = same as the rank"),
        _f("network.train_unet", "checkbox", "Train the image model (UNet)",
           "Trains the part of the model that draws the image. Usually on."),
        _f("network.train_text_encoder", "checkbox", "Train the text encoder",
           "Also trains the part of the model that reads the prompt; needs more VRAM. Usually off."),
        _f("network.dropout", "number", "Network dropout",
           "Randomly leaves out part of the LoRA at each step, which can reduce overfitting. Usually 0 "
           "(0.1 when used); must be below 1.",
           minimum=0.0, maximum=0.99),
    ),
    "Training": (
        _f("training.epochs", "int", "Epochs",
           "How many times training goes through all images (each repeated as often as its folder says, "
           "e.g. 10_mychar = 10 times). Usually 10.",
           minimum=1, step=1),
        _f("training.max_steps", "int", "Stop after this many steps",
           "Ends training after this many steps, even if not all epochs are done. Empty = no limit "
           "(Epochs decides).",
           minimum=1, step=1, nullable=True, placeholder="empty = no limit"),
        _f("training.batch_size", "slider", "Batch size",
           "Images trained together in one step. Larger is faster per image but needs more VRAM; "
           "usually 1 or 2.",
           minimum=1, maximum=64, step=1),
        _f("training.resolution", "text", "Training resolution",
           "Training size in pixels: one number for a square (512 for SD 1.x, 768 for SD 2.x 768 models, "
           "1024 for SDXL) or width x height like 768x512. Multiples of 8.",
           placeholder="512, or width x height like 768x512"),
        _f("training.seed", "int", "Seed",
           "Random seed: the same seed and settings give the same LoRA. Any number; usually 42.",
           minimum=0, maximum=_MAX_SEED, step=1),
        _f("training.noise_offset", "number", "Noise offset",
           "Adds a little noise to the overall brightness while training, so the LoRA can also make very "
           "dark and very bright images. 0 = off; 0.05 to 0.1 when used.",
           minimum=0.0, maximum=1.0),
        _f("training.min_snr_gamma", "number", "Min SNR gamma",
           "Min SNR weighting: gives less weight to the training steps with very little noise, which often "
           "makes training faster and more even. 5 is typical; empty = off.",
           minimum=0.1, maximum=None, nullable=True, placeholder="empty = off"),
        _f("training.max_grad_norm", "number", "Gradient clipping (max norm)",
           "Limits how large a single learning step can get, which stops sudden jumps. Usually 1; "
           "0 turns it off.",
           minimum=0.0),
    ),
    "Optimizer & schedule": (
        _f("training.learning_rate", "number", "Learning rate",
           "How big each learning step is: too high burns the image, too low learns nothing. 0.0001 "
           "(1e-4) is usual; use 1 with Prodigy.",
           minimum=1e-8, maximum=None),
        _f("training.text_encoder_lr", "number", "Text encoder learning rate",
           "Learning rate of the text encoder when it is trained; often half the learning rate. "
           "Empty = the same as Learning rate.",
           minimum=1e-8, maximum=None, nullable=True, placeholder="empty = same as Learning rate"),
        _f("training.optimizer", "dropdown", "Optimizer",
           "The method that updates the LoRA. AdamW is usual; AdamW8bit needs less VRAM (NVIDIA only); "
           "Prodigy sets its own pace (set Learning rate to 1); Adafactor uses little memory.",
           choices=schema.OPTIMIZERS),
        _f("training.optimizer_args", "text", "Extra optimizer settings (JSON)",
           'Extra settings for the optimizer in JSON, e.g. {"weight_decay": 0.01, "betas": [0.9, 0.99]}. '
           "Empty = none; the learning rate is set above, not here.",
           placeholder='e.g. {"weight_decay": 0.01}'),
        _f("training.lr_scheduler", "dropdown", "Learning rate schedule",
           "How the learning rate changes during training: cosine lowers it smoothly towards 0 (usual), "
           "constant keeps it the same.",
           choices=schema.LR_SCHEDULERS),
        _f("training.lr_warmup_steps", "number", "Warm-up",
           "Raises the learning rate slowly at the start. A whole number is a step count (100 = the first "
           "100 steps); a number below 1 is a share of all steps (0.05 = the first 5%). Usually 0.",
           minimum=0),
        _f("training.lr_scheduler_num_cycles", "int", "Restarts (cosine with restarts)",
           "For the cosine_with_restarts schedule only: how many times the learning rate falls and starts "
           "again. Usually 1.",
           minimum=1, maximum=1000, step=1),
        _f("training.lr_scheduler_power", "number", "Curve power (polynomial)",
           "For the polynomial schedule only: the shape of the fall of the learning rate; 1 is a straight "
           "line. Usually 1.",
           minimum=0.01, maximum=None),
    ),
    "Speed & memory": (
        _f("training.mixed_precision", "dropdown", "Mixed precision",
           "A faster number format that needs less VRAM. bf16 needs an RTX 30xx or newer; use fp16 on "
           "older cards and no for full 32-bit (slow).",
           choices=schema.MIXED_PRECISIONS),
        _f("training.gradient_accumulation_steps", "int", "Gradient accumulation steps",
           "Adds up this many batches before each learning step: like a bigger batch size without needing "
           "more VRAM. Usually 1.",
           minimum=1, maximum=1024, step=1),
        _f("training.gradient_checkpointing", "checkbox", "Gradient checkpointing",
           "Uses much less VRAM, but each step is slower. Turn it on if training runs out of VRAM."),
        _f("training.attention", "dropdown", "Attention",
           "How the model's attention layers are computed. sdpa is built into PyTorch and usual; xformers "
           "needs xformers installed.",
           choices=schema.ATTENTIONS),
        _f("training.device", "text", "Device",
           "Where to train: auto uses the GPU if there is one; cpu, cuda, or cuda:1 for the second GPU. "
           "Usually auto.",
           placeholder="auto, cpu, cuda or cuda:1"),
        _f("dataset.cache_latents", "dropdown", "Cache encoded images",
           "Encodes every image once into the compact form the model learns from (latents) and reuses it: "
           "disk keeps it for later runs, memory for this run only, off encodes at every step (slow).",
           choices=schema.CACHE_MODES),
        _f("dataset.cache_dir", "text", "Cache folder",
           "Where disk caching saves the encoded images. Empty = a hidden .lora-trainer-cache folder "
           "inside the dataset folder.",
           nullable=True, placeholder="empty = inside the dataset folder"),
    ),
    "Saving": (
        _f("output.save_every_epochs", "int", "Save every N epochs",
           "Also saves an in-between LoRA every N epochs, so you can pick an earlier one if the last is "
           "overtrained. 0 = only the final file.",
           minimum=0, step=1),
        _f("output.save_precision", "dropdown", "Save precision",
           "Number format of the saved LoRA. fp16 is half the size of fp32 and what the WebUI expects; "
           "usually fp16.",
           choices=schema.SAVE_PRECISIONS),
        _f("output.preferred_weight", "slider", "Preferred weight",
           "The weight the WebUI's Lora tab puts in the prompt when you click this LoRA. Usually 1.",
           minimum=0.0, maximum=2.0, step=0.05),
        _f("output.save_state_on_cancel", "checkbox", "Keep resume data when stopped",
           "When you stop a run, saves what is needed to continue it later. Usually on."),
        _f("output.save_lora_on_cancel", "checkbox", "Save the LoRA when stopped",
           "When you stop a run, still saves the LoRA trained so far. Usually on."),
    ),
    "Samples": (
        _f("samples.every_epochs", "int", "Make samples every N epochs",
           "Makes preview images every N epochs so you can watch the LoRA learn. 0 = never.",
           minimum=0, step=1),
        _f("samples.sampler", "dropdown", "Sampler",
           "Sampler of the preview images; euler_a is Euler a.", choices=schema.SAMPLERS),
        _f("samples.prompts", "textarea", "Sample prompts",
           "One preview prompt per line; {trigger} becomes the trigger word. Options may end a line: "
           "--n negative prompt, --s steps, --l CFG scale, --d seed, --w width, --h height, e.g. "
           "{trigger}, portrait --n blurry --s 25 --w 512 --h 768. Empty = one sample from the first caption.",
           placeholder="{trigger}, portrait photo --n blurry --s 25"),
    ),
    "DreamBooth": (
        _f("dreambooth.instance_prompt", "text", "Instance prompt",
           "DreamBooth only. The prompt used for every image of your subject instead of its caption, e.g. "
           "a photo of {trigger} dog; {trigger} becomes the trigger word. Empty = use the captions.",
           placeholder="empty = use the captions"),
        _f("dreambooth.class_prompt", "text", "Class prompt",
           "DreamBooth only, and needed there. What your subject is in general, e.g. a photo of a dog for "
           "your own dog. The class images are made with this prompt.",
           placeholder="e.g. a photo of a dog"),
        _f("dreambooth.class_negative_prompt", "text", "Class negative prompt",
           "Negative prompt used when the class images are generated. Usually empty."),
        _f("dreambooth.num_class_images", "int", "Number of class images",
           "How many class images DreamBooth uses. Missing ones are generated with the base model before "
           "training starts (this takes a while). Usually 100 to 200.",
           minimum=0, maximum=10000, step=1),
        _f("dreambooth.class_data", "text", "Class images folder",
           "A folder of your own class images (also called regularization images), e.g. photos of other "
           "dogs. Kohya-style subfolders such as 1_dog work too. Empty = generate them with the base model.",
           nullable=True, placeholder="empty = generate them with the base model"),
        _f("dreambooth.prior_loss_weight", "number", "Prior loss weight",
           "Prior preservation keeps the model's idea of the whole class (all dogs, not only yours) from "
           "turning into your subject, by training on the class at the same time. This sets how strongly. "
           "Usually 1.",
           minimum=0.0, maximum=100.0),
        _f("dreambooth.prior", "dropdown", "Prior preservation method",
           "How prior preservation (keeping the class as it was) is done. class-images: also train on "
           "images of the class, generated or your own. lora-off: compare with the base model's own result "
           "with the LoRA switched off, so no class images are needed (DreamBooth LoRA only).",
           choices=schema.PRIORS),
        _f("dreambooth.class_sampler", "dropdown", "Class image sampler",
           "Sampler used to generate the class images; euler_a is Euler a.", choices=schema.SAMPLERS),
        _f("dreambooth.class_steps", "slider", "Class image steps",
           "Sampling steps for each generated class image. Usually 20 to 30.",
           minimum=1, maximum=150, step=1),
        _f("dreambooth.class_cfg_scale", "slider", "Class image CFG scale",
           "CFG scale of the generated class images: how closely they follow the class prompt. Usually 7.",
           minimum=1.0, maximum=30.0, step=0.5),
    ),
}  # fmt: skip

FIELDS: tuple[FieldSpec, ...] = tuple(
    dataclasses.replace(spec, group=group) for group, specs in _TABLE.items() for spec in specs
)
_BY_PATH: dict[str, FieldSpec] = {spec.path: spec for spec in FIELDS}


def field_by_path(path: str) -> FieldSpec:
    """The FieldSpec of a dotted spec path; KeyError for a path the Advanced section does not show."""
    return _BY_PATH[path]


def groups() -> list[tuple[str, list[FieldSpec]]]:
    """(group, its fields) in GROUPS order."""
    return [(g, [s for s in FIELDS if s.group == g]) for g in GROUPS if any(s.group == g for s in FIELDS)]


# ---------------------------------------------------------------- helpers


class _Unparsable(Exception):
    """A component value that cannot be turned into a spec value; the message is for the user."""


def _default(path: str) -> Any:
    node: Any = JobSpec()
    for part in path.split("."):
        node = getattr(node, part)
    return copy.deepcopy(node)


def _get(data: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return False, None
        data = data[part]
    return True, data


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        if not isinstance(data.get(part), dict):
            data[part] = {}
        data = data[part]
    data[leaf] = value


def _num_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _shown(text: Any) -> str:
    text = str(text).strip()
    return json.dumps(text if len(text) <= 40 else text[:37] + "...", ensure_ascii=False)


def _is_int(spec: FieldSpec) -> bool:
    return spec.kind == "int" or (spec.kind == "slider" and isinstance(spec.step, int))


# ---------------------------------------------------------------- spec values -> component values


def _resolution_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(_num_text(v) for v in value)
    return "" if value is None else _num_text(value)


def _json_text(value: Any) -> str:
    if not value:
        return ""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


_PROMPT_FLAGS = (  # flag, SamplePrompt field, whole number?
    ("n", "negative_prompt", False),
    ("w", "width", True),
    ("h", "height", True),
    ("d", "seed", True),
    ("l", "cfg_scale", False),
    ("s", "steps", True),
)
_PROMPT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SamplePrompt)}


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _prompts_text(prompts: Any) -> str:
    if isinstance(prompts, str):
        return prompts
    lines = []
    for item in prompts or ():
        if not isinstance(item, Mapping):
            lines.append(_one_line(item))
            continue
        parts = [_one_line(item.get("prompt") or "")]
        for flag, key, _ in _PROMPT_FLAGS:
            value = item.get(key, _PROMPT_DEFAULTS[key])
            if value is not None and value != _PROMPT_DEFAULTS[key]:
                shown = _one_line(value) if key == "negative_prompt" else _num_text(value)
                parts.append(f"--{flag} {shown}")
        lines.append(" ".join(p for p in parts if p))
    return "\n".join(lines)


def _component_value(spec: FieldSpec, value: Any) -> Any:
    if spec.path == "training.resolution":
        return _resolution_text(value)
    if spec.path == "training.optimizer_args":
        return _json_text(value)
    if spec.path == "samples.prompts":
        return _prompts_text(value)
    if spec.kind == "checkbox":
        return value if isinstance(value, bool) else _default(spec.path)
    if spec.kind == "dropdown":
        if value is None:
            return AUTO if spec.nullable else _default(spec.path)
        return value
    if spec.kind in ("int", "number", "slider"):
        if spec.nullable:  # typed into a text box: "" is null
            return "" if value is None else _num_text(value)
        return _default(spec.path) if value is None else value
    return "" if value is None else str(value)


def values_from_spec(spec_dict: Mapping[str, Any]) -> list[Any]:
    """The component values, in FIELDS order, for a complete or partial spec dict (missing = default).

    Text-like fields get text ("" for null), nullable numbers text too ("" = automatic), nullable choices
    AUTO for null, training.resolution "512" or "768x512", training.optimizer_args JSON text ("" for {}),
    samples.prompts one line per prompt with --n/--s/--l/--d/--w/--h options where they differ from the
    default.
    """
    out = []
    for spec in FIELDS:
        found, value = _get(spec_dict, spec.path)
        out.append(_component_value(spec, value if found else _default(spec.path)))
    return out


# ---------------------------------------------------------------- component values -> spec values


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _parse_number(text: str, whole: bool) -> int | float:
    s = text.strip()
    try:
        return int(s)
    except ValueError:
        pass
    x = float(s)  # ValueError goes to the caller
    return int(x) if whole and math.isfinite(x) and x.is_integer() else x


def _number_value(spec: FieldSpec, value: Any) -> Any:
    if _is_blank(value):
        return None if spec.nullable else _default(spec.path)
    if isinstance(value, str):
        try:
            value = _parse_number(value, whole=True)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        wanted = "a whole number like 16" if _is_int(spec) else "a number like 0.5 or 1e-4"
        empty = ", or leave it empty" if spec.nullable else ""
        raise _Unparsable(f"this is not a number; type {wanted}{empty}")
    if spec.path == "training.lr_warmup_steps" or _is_int(spec):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)  # gradio returns 16.0 for 16; non-whole values are left to the validator
        return value
    return float(value)


def _resolution_value(value: Any) -> Any:
    if _is_blank(value):
        return _default("training.resolution")
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, str):
        return value
    try:
        return parse_resolution(value.strip())
    except argparse.ArgumentTypeError:
        raise _Unparsable(
            f"{_shown(value)} is not a size; type one number like 512, or width x height like 768x512"
        ) from None


def _optimizer_args_value(value: Any) -> Any:
    if _is_blank(value):
        return {}
    if not isinstance(value, str):
        return value
    s = value.strip()
    tries = [s] if s.startswith("{") else [s, "{" + s + "}"]
    for attempt in tries:
        try:
            return json.loads(attempt)
        except json.JSONDecodeError as exc:
            error = exc
    raise _Unparsable(
        f"this is not valid JSON ({error.msg}); type settings like "
        '{"weight_decay": 0.01, "betas": [0.9, 0.99]}, with names in double quotes and true/false in '
        "lower case, or leave it empty"
    )


_FLAG_RE = re.compile(r"(?:^|\s)--([A-Za-z]+)(?=\s|$)")
_FLAG_LIST = "--n (negative prompt), --s (steps), --l (CFG scale), --d (seed), --w (width), --h (height)"


def _prompt_line(line: str, number: int) -> dict[str, Any]:
    where = f"line {number}"
    pieces = _FLAG_RE.split(line)
    item: dict[str, Any] = {"prompt": pieces[0].strip()}
    flags = {flag: (key, whole) for flag, key, whole in _PROMPT_FLAGS}
    for flag, raw in zip(pieces[1::2], pieces[2::2], strict=True):
        flag, text = flag.lower(), raw.strip()
        if flag not in flags:
            raise _Unparsable(f"{where}: unknown option --{flag}; the options are {_FLAG_LIST}")
        key, whole = flags[flag]
        if key in item:
            raise _Unparsable(f"{where}: --{flag} appears twice; keep one")
        if key == "negative_prompt":
            item[key] = text
            continue
        try:
            item[key] = _parse_number(text, whole)
        except ValueError:
            kind = "a whole number" if whole else "a number"
            raise _Unparsable(
                f"{where}: --{flag} needs {kind} after it (like --s 25 or --l 7.5), got "
                f"{_shown(text) if text else 'nothing'}"
            ) from None
        if whole and isinstance(item[key], float):
            raise _Unparsable(f"{where}: --{flag} needs a whole number after it, got {_shown(text)}")
    return item


def _prompts_value(value: Any) -> Any:
    if value is None:
        return []
    if not isinstance(value, str):
        return [dict(p) if isinstance(p, Mapping) else p for p in value]
    return [
        _prompt_line(line, number) for number, line in enumerate(value.splitlines(), start=1) if line.strip()
    ]


def _spec_value(spec: FieldSpec, value: Any) -> Any:
    if spec.path == "training.resolution":
        return _resolution_value(value)
    if spec.path == "training.optimizer_args":
        return _optimizer_args_value(value)
    if spec.path == "samples.prompts":
        return _prompts_value(value)
    if spec.kind == "checkbox":
        if value is None:
            return _default(spec.path)
        if isinstance(value, bool):
            return value
        if value in (0, 1):
            return bool(value)
        raise _Unparsable("expected a tick box value (true or false)")
    if spec.kind in ("int", "number", "slider"):
        return _number_value(spec, value)
    if spec.kind == "dropdown":
        if _is_blank(value) or (spec.nullable and str(value).strip().lower() == AUTO):
            return None if spec.nullable else _default(spec.path)
        return value
    if spec.path == "model.vae":  # empty is meaningful here: the WebUI service reads it as "current"
        return "" if value is None else value
    if _is_blank(value):
        return None if spec.nullable else _default(spec.path)
    return value


def spec_from_values(base: Mapping[str, Any], values: list[Any]) -> dict[str, Any]:
    """A new spec dict: a copy of `base` (the tab's own fields and anything else) with every FIELDS value
    written in, converted back to spec values. Not validated: run spec_from_dict on the result. A value
    that cannot be read at all (bad JSON, a size like "abc", "--s x") raises SpecError for its field."""
    if len(values) != len(FIELDS):
        raise ValueError(f"expected {len(FIELDS)} values (one per form field), got {len(values)}")
    out = copy.deepcopy(dict(base))
    errors: list[tuple[str, str]] = []
    for spec, value in zip(FIELDS, values, strict=True):
        try:
            converted = _spec_value(spec, value)
        except _Unparsable as exc:
            errors.append((spec.path, f"{spec.label}: {exc}"))
            continue
        _set(out, spec.path, converted)
    if errors:
        raise SpecError(errors)
    return out
