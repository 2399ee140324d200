"""The conversion between a job-spec dict and the list of the tab's form component values (in `FIELDS`
order). The table of fields itself is in `form_table`; its names are re-exported here.

Pure data and stdlib: no gradio, no torch.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from ..spec.load import parse_resolution
from ..spec.schema import JobSpec, SamplePrompt, SpecError
from .form_table import (
    AUTO,
    BASIC_PATHS,
    FIELDS,
    GROUPS,
    KINDS,
    MAIN_VIEW,
    TAB_FIELDS,
    FieldSpec,
    field_by_path,
    groups,
    main_view_fields,
)

__all__ = [
    "AUTO",
    "BASIC_PATHS",
    "FIELDS",
    "GROUPS",
    "KINDS",
    "MAIN_VIEW",
    "TAB_FIELDS",
    "FieldSpec",
    "field_by_path",
    "groups",
    "main_view_fields",
    "spec_from_values",
    "values_from_spec",
]

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
    if spec.kind in ("dropdown", "radio"):
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


def _choice_value(spec: FieldSpec, value: Any) -> Any:
    """A choice's spec value; a shown label (a radio's "LoRA") is read as the choice it stands for."""
    labels = dict(zip(spec.choice_labels or (), spec.choices or (), strict=False))
    return labels.get(value, value)


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
    if spec.kind in ("dropdown", "radio"):
        if _is_blank(value) or (spec.nullable and str(value).strip().lower() == AUTO):
            return None if spec.nullable else _default(spec.path)
        return _choice_value(spec, value)
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
