"""Getting a job spec in and out: dicts, .json/.toml files, dotted overrides and the CLI flag table.

The CLI, the WebUI tab and the REST API all go through `spec_from_dict`, so a spec that works in one works
in all three, and every problem is reported with its field path in a single pass.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .schema import CROSS_CHECKS, Invalid, JobSpec, Problems, SpecError, show

try:
    import tomllib as _toml
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as _toml
    except ModuleNotFoundError:
        _toml = None


# ---------------------------------------------------------------- dict -> JobSpec


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _sections() -> dict[str, type]:
    return {f.name: f.metadata["section"] for f in dataclasses.fields(JobSpec) if "section" in f.metadata}


def _unknown_field(key: str, cls: type, prefix: str) -> str:
    """Point a misspelt or misplaced setting at the name the user most likely meant."""
    names = [f.name for f in dataclasses.fields(cls)]
    homes = [s for s, sec in _sections().items() if key in {f.name for f in dataclasses.fields(sec)}]
    if homes and cls is not _sections().get(homes[0]):
        return f'unknown field; this setting belongs in the "{homes[0]}" section ({homes[0]}.{key})'
    lowered = {n.lower(): n for n in names}
    close = (
        [lowered[key.lower()]]
        if key.lower() in lowered
        else difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    )
    if close:
        return f'unknown field; did you mean "{close[0]}"?'
    where = f'in "{prefix}"' if prefix else "at the top level"
    return f"unknown field; the fields allowed {where} are: {', '.join(names)}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _read(cls: type, data: Any, prefix: str, errors: Problems) -> Any:
    """Check one table into an instance of `cls`; None if anything in it was wrong (problems go to errors)."""
    if not isinstance(data, Mapping):
        errors.append(
            (prefix, f"expected a table of settings ({{...}} in JSON, [{prefix}] in TOML), got {show(data)}")
        )
        return None
    before = len(errors)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            errors.append((_join(prefix, str(key)), _unknown_field(str(key), cls, prefix)))
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        where, meta = _join(prefix, f.name), f.metadata
        if "section" in meta:
            values[f.name] = _read(meta["section"], data.get(f.name, {}), where, errors)
        elif "items" in meta:
            values[f.name] = _read_list(meta["items"], data.get(f.name, []), where, errors)
        elif meta["required"] and _missing(data.get(f.name)):
            errors.append((where, f"is required; {meta['required']}"))
        elif f.name not in data:
            values[f.name] = _default(f)
        else:
            try:
                values[f.name] = meta["check"](data[f.name])
            except Invalid as exc:
                errors.append((where, str(exc)))
    cross = CROSS_CHECKS.get(cls)
    if cross:
        errors.extend((_join(prefix, name), msg) for name, msg in cross(values))
    if len(errors) > before:
        return None
    return cls(**values)


def _read_list(cls: type, data: Any, prefix: str, errors: Problems) -> tuple | None:
    """A list of tables (sample prompts); a bare string is shorthand for {"prompt": "..."}."""
    if not isinstance(data, (list, tuple)):
        errors.append((prefix, f'expected a list like [{{"prompt": "..."}}], got {show(data)}'))
        return None
    items = [
        _read(cls, {"prompt": item} if isinstance(item, str) else item, f"{prefix}[{i}]", errors)
        for i, item in enumerate(data)
    ]
    return None if any(item is None for item in items) else tuple(items)


def spec_from_dict(data: Mapping[str, Any]) -> JobSpec:
    """Validate a whole spec; raises SpecError listing every problem. The input is not modified."""
    errors: Problems = []
    if not isinstance(data, Mapping):
        raise SpecError(
            [("", f"a job spec must be a JSON object {{...}} (or a TOML file), got {show(data)}")]
        )
    spec = _read(JobSpec, data, "", errors)
    if errors or spec is None:
        raise SpecError(errors)
    return spec


# ---------------------------------------------------------------- JobSpec -> dict


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    """JSON-ready dict with every field (spec_version included); spec_from_dict of it gives the same spec."""
    return _plain(dataclasses.asdict(spec))


def _blank_required(cls: type, data: dict[str, Any]) -> None:
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            _blank_required(f.metadata["section"], data[f.name])
        elif f.metadata.get("required"):
            data[f.name] = None


def default_spec_dict() -> dict[str, Any]:
    """Every field at its default; required fields (name, model.checkpoint, dataset.path, output.dir) are null."""
    data = spec_to_dict(JobSpec())
    _blank_required(JobSpec, data)
    return data


# ---------------------------------------------------------------- overrides


def field_paths() -> list[str]:
    """Every settable dotted path ("training.epochs"); samples.prompts is set as a whole list."""
    out = []
    for f in dataclasses.fields(JobSpec):
        if "section" in f.metadata:
            out += [f"{f.name}.{g.name}" for g in dataclasses.fields(f.metadata["section"])]
        else:
            out.append(f.name)
    return out


def _unknown_path(dotted: str, paths: list[str]) -> str:
    """Suggest by the last part first ("epochs" -> "training.epochs"), then by spelling within the section."""
    *section, leaf = dotted.split(".")
    candidates = [p for p in paths if p.split(".")[-1] == leaf]
    if not candidates:
        here = [p for p in paths if p.split(".")[:-1] == section]
        leaves = {p.split(".")[-1]: p for p in here}
        close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
        candidates = [leaves[c] for c in close] or difflib.get_close_matches(dotted, paths, n=1, cutoff=0.8)
    if candidates:
        return f'no such setting; did you mean "{candidates[0]}"?'
    return "no such setting; see docs/job-spec.md for the list of settings"


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, object]) -> dict[str, Any]:
    """A copy of `data` with {"training.epochs": 3, ...} set; values are checked later by spec_from_dict."""
    out = copy.deepcopy(dict(data))
    paths = field_paths()
    errors: Problems = []
    for dotted, value in overrides.items():
        if dotted not in paths:
            errors.append((dotted, _unknown_path(dotted, paths)))
            continue
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                errors.append((part, f"expected a table of settings, got {show(node[part])}"))
                break
            node = node[part]
        else:
            node[leaf] = copy.deepcopy(value)
    if errors:
        raise SpecError(errors)
    return out


# ---------------------------------------------------------------- files

_JSON_HINTS = {
    "Invalid \\escape": r"; in JSON write Windows paths with / or doubled \\ (C:/models/x.safetensors)",
    "Expecting property name enclosed in double quotes": "; JSON allows no comma before } and names need double quotes",
    "Expecting ',' delimiter": "; a comma is probably missing at the end of the previous value",
}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f'the setting "{key}" appears twice in the same section; keep only one')
        seen[key] = value
    return seen


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        hint = next((h for start, h in _JSON_HINTS.items() if exc.msg.startswith(start)), "")
        raise SpecError(
            [(where, f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}{hint}")]
        ) from None
    except ValueError as exc:
        raise SpecError([(where, str(exc))]) from None


def _parse_toml(text: str, where: str) -> Any:
    if _toml is None:
        raise SpecError(
            [
                (
                    where,
                    "reading .toml files on Python 3.10 needs the tomli package "
                    "(pip install tomli); or save the spec as .json",
                )
            ]
        )
    try:
        return _toml.loads(text)
    except _toml.TOMLDecodeError as exc:
        message = str(exc)
        found = re.search(r"\(at line (\d+), column (\d+)\)", message)
        if found:
            line, col = int(found.group(1)), int(found.group(2))
        else:  # "(at end of document)"
            line, col = text.count("\n") + 1, len(text.rsplit("\n", 1)[-1]) + 1
        message = re.sub(r"\s*\(at [^)]*\)\s*$", "", message)
        source = text.splitlines()[line - 1] if 0 < line <= len(text.splitlines()) else ""
        if "\\" in message:
            message += r"; in TOML put Windows paths in single quotes ('C:\models\x.safetensors') or use /"
        elif re.search(r"=\s*(null|None)\b", source):
            message += "; TOML has no null: leave the setting out to use its default"
        raise SpecError([(where, f"not valid TOML at line {line}, column {col}: {message}")]) from None


def load_spec_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a .json or .toml job spec into a plain dict (not validated yet: run spec_from_dict on it)."""
    file = Path(path)
    where = str(file)
    suffix = file.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise SpecError(
            [
                (
                    where,
                    f"unsupported file type {show(suffix or '(none)')}; save the job spec as .json or .toml",
                )
            ]
        )
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SpecError([(where, "file not found; check the path")]) from None
    except IsADirectoryError:
        raise SpecError([(where, "is a folder; give the .json or .toml file itself")]) from None
    except UnicodeDecodeError:
        raise SpecError([(where, "is not UTF-8 text; save it with UTF-8 encoding")]) from None
    except OSError as exc:
        raise SpecError([(where, f"cannot be read: {exc.strerror or exc}")]) from None
    data = _parse_json(text, where) if suffix == ".json" else _parse_toml(text, where)
    if not isinstance(data, dict):
        raise SpecError([(where, "the file must hold one JSON object {...} with the job settings")])
    return data


# ---------------------------------------------------------------- command line flags


def parse_resolution(text: str) -> int | list[int]:
    """--resolution 512 or 512x768 (also 512,768)."""
    parts = [p for p in re.split(r"[x×,\s]+", text.strip().lower()) if p]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use 512 or WIDTHxHEIGHT like 512x768")
    return sizes[0] if len(sizes) == 1 else sizes


def parse_warmup(text: str) -> int | float:
    """--lr-warmup 100 (steps) or 0.05 (a fraction of the run)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number; use steps like 100 or a fraction like 0.05"
        ) from None


def _lookup_default(dotted: str) -> Any:
    node: Any = JobSpec()
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _flag(
    flag: str, dotted: str, kind: Callable[[str], Any], help_text: str
) -> tuple[str, str, Callable, str]:
    """Add the real default to the help text so the two cannot disagree (no % signs: argparse formats help)."""
    default = _lookup_default(dotted)
    if isinstance(default, bool):
        help_text += f" (default: {'on' if default else 'off'})"
    elif default not in (None, ""):
        help_text += f" (default: {default})"
    return (flag, dotted, kind, help_text)


CLI_FLAGS: list[tuple[str, str, Callable[[str], Any], str]] = [
    _flag("--name", "name", str, "name of the LoRA file, without .safetensors"),
    _flag(
        "--mode",
        "mode",
        str,
        "what to train: lora, dreambooth-lora (a LoRA with prior preservation) or dreambooth (a full "
        "fine-tune saved as a checkpoint in output.dir)",
    ),
    _flag("--model", "model.checkpoint", str, "base model to train on: a .safetensors or .ckpt file"),
    _flag("--vae", "model.vae", str, "separate VAE file; 'none' uses the VAE inside the model"),
    _flag(
        "--model-type",
        "model.model_type",
        str,
        "force the model type: sd1, sd2, sd2-v or sdxl (default: detect it)",
    ),
    _flag(
        "--clip-skip",
        "model.clip_skip",
        int,
        "CLIP skip for SD1/SD2 models, 1 to 12; many anime models use 2",
    ),
    _flag("--data", "dataset.path", str, "folder with your training images and their caption files"),
    _flag("--trigger-word", "dataset.trigger_word", str, "word that calls up your LoRA in prompts, e.g. sks"),
    _flag("--caption-extension", "dataset.caption_extension", str, "file ending of the caption files"),
    _flag(
        "--flip-aug",
        "dataset.flip_aug",
        bool,
        "also train on mirrored images; leave off if left and right matter (text, one-sided details)",
    ),
    _flag(
        "--cache-latents",
        "dataset.cache_latents",
        str,
        "keep the encoded images on disk (reused next run), in memory, or off",
    ),
    _flag(
        "--rank",
        "network.rank",
        int,
        "LoRA size (network dim), 1 to 1024; bigger means a larger file and more detail",
    ),
    _flag(
        "--alpha",
        "network.alpha",
        float,
        "LoRA alpha; scales how strongly the LoRA learns, often half the rank",
    ),
    _flag(
        "--train-unet",
        "network.train_unet",
        bool,
        "train the image model (UNet); --no-train-unet trains only the text encoder",
    ),
    _flag("--train-text-encoder", "network.train_text_encoder", bool, "also train the text encoder"),
    _flag(
        "--learn-trigger",
        "network.learn_trigger",
        bool,
        "also learn an embedding for the trigger word and save it inside the LoRA file (needs --trigger-word)",
    ),
    _flag(
        "--trigger-vectors",
        "network.trigger_vectors",
        int,
        "how many token slots the learnt trigger word takes, 1 to 16",
    ),
    _flag("--epochs", "training.epochs", int, "how many times to go through all images"),
    _flag("--steps", "training.max_steps", int, "stop after this many training steps; overrides --epochs"),
    _flag("--batch-size", "training.batch_size", int, "images per step, 1 to 64; more needs more VRAM"),
    _flag(
        "--resolution",
        "training.resolution",
        parse_resolution,
        "training size in pixels: 512, or WIDTHxHEIGHT like 512x768",
    ),
    _flag("--lr", "training.learning_rate", float, "learning rate"),
    _flag(
        "--text-encoder-lr",
        "training.text_encoder_lr",
        float,
        "learning rate of the text encoder (default: same as --lr)",
    ),
    _flag(
        "--optimizer",
        "training.optimizer",
        str,
        "AdamW, AdamW8bit (NVIDIA only, less VRAM), Prodigy (sets its own pace; use --lr 1) or Adafactor",
    ),
    _flag(
        "--lr-scheduler",
        "training.lr_scheduler",
        str,
        "how the learning rate changes: constant, constant_with_warmup, linear, cosine, cosine_with_restarts or polynomial",
    ),
    _flag(
        "--lr-warmup",
        "training.lr_warmup_steps",
        parse_warmup,
        "warm-up at the start: steps like 100, or a fraction of the run like 0.05",
    ),
    _flag(
        "--mixed-precision",
        "training.mixed_precision",
        str,
        "no, fp16 or bf16; bf16 needs an RTX 30xx or newer, use fp16 on older cards",
    ),
    _flag(
        "--gradient-accumulation-steps",
        "training.gradient_accumulation_steps",
        int,
        "add up this many batches per step: a bigger batch without more VRAM",
    ),
    _flag(
        "--gradient-checkpointing",
        "training.gradient_checkpointing",
        bool,
        "use less VRAM at the cost of slower steps",
    ),
    _flag("--device", "training.device", str, "auto, cpu, cuda, or cuda:N to pick GPU number N"),
    _flag("--seed", "training.seed", int, "random seed; same seed and settings give the same result"),
    _flag(
        "--output-dir", "output.dir", str, "folder the LoRA files are saved to, e.g. your WebUI's models/Lora"
    ),
    _flag(
        "--save-every-epochs",
        "output.save_every_epochs",
        int,
        "also save a LoRA every N epochs; 0 saves only the final file",
    ),
    _flag(
        "--save-precision",
        "output.save_precision",
        str,
        "number format of the saved LoRA: fp16, bf16 or fp32",
    ),
    _flag(
        "--sample-every-epochs",
        "samples.every_epochs",
        int,
        "make sample images every N epochs; 0 means never",
    ),
    _flag(
        "--instance-prompt",
        "dreambooth.instance_prompt",
        str,
        "DreamBooth: prompt used for every image of your subject instead of its caption, "
        "e.g. 'a photo of {trigger} dog'; {trigger} becomes the trigger word",
    ),
    _flag(
        "--class-prompt",
        "dreambooth.class_prompt",
        str,
        "DreamBooth: the class your subject belongs to, e.g. 'a photo of a dog'",
    ),
    _flag(
        "--class-negative-prompt",
        "dreambooth.class_negative_prompt",
        str,
        "DreamBooth: negative prompt for generating the class images",
    ),
    _flag(
        "--num-class-images",
        "dreambooth.num_class_images",
        int,
        "DreamBooth: how many class images to use; missing ones are generated",
    ),
    _flag(
        "--class-data",
        "dreambooth.class_data",
        str,
        "DreamBooth: folder of your own class images (default: generate them with the base model)",
    ),
    _flag(
        "--prior-loss-weight",
        "dreambooth.prior_loss_weight",
        float,
        "DreamBooth: weight of the prior-preservation loss, which keeps the class "
        "(e.g. other dogs) from turning into your subject",
    ),
    _flag(
        "--prior",
        "dreambooth.prior",
        str,
        "DreamBooth: what keeps the class in place: class-images, lora-off (the base model's "
        "own result with the LoRA switched off; no class images needed; dreambooth-lora only), or trigger-off "
        "(each caption without the trigger word, against the base model; needs --trigger-word; "
        "dreambooth-lora only), or trigger-off+class-images (both: the trigger-off pair and a batch of class "
        "images each step; needs --trigger-word and --class-prompt; dreambooth-lora only)",
    ),
    _flag(
        "--ema",
        "finetune.ema",
        bool,
        "full fine-tune: save a moving average of the weights (smoother; needs memory for one more UNet)",
    ),
    _flag("--ema-decay", "finetune.ema_decay", float, "full fine-tune: how slowly the average moves"),
    _flag(
        "--extract-lora-rank",
        "finetune.extract_lora_rank",
        int,
        "full fine-tune: also save a LoRA of the change, cut to this rank, in --lora-dir; 0 means no LoRA",
    ),
    _flag("--lora-dir", "finetune.lora_dir", str, "full fine-tune: the folder for the extracted LoRA"),
]
