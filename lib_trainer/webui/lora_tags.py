"""Rewriting `<lora:NAME:W>` tags for the "LoRA NUM" and "LoRA STRENGTH" X/Y/Z plot axes (issue 4).

A trained LoRA is a family of files: `NAME-000001` ... per epoch and `NAME` for the final one. The NUM axis
switches each tag of a family to one of its epoch files, the STRENGTH axis sets the tag's weight. Pure text
work, host-free: the axes in the WebUI pass in the names the WebUI's Lora list knows.

Tag syntax (A1111 extra networks): `<lora:name:te[:unet[:dyn]]>` or named `te=`/`unet=`/`dyn=` items; the
UNet weight defaults to the text-encoder weight, so setting the strength sets both where they are given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..export.lora_names import family_of

FINAL = "final"
_TAG = re.compile(r"<(lora|lyco):([^>]+)>")
_EPOCH_STEM = re.compile(r"^(?P<family>.+)-(?P<epoch>\d{6})$")
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*(?:\(\s*\+?(\d+)\s*\)|\[\s*(\d+)\s*\])?\s*$")


def expand_num_values(text: str) -> list[str]:
    """The NUM axis' values: epoch numbers, `000003`-style suffixes, `final`, and ranges the host's numeric
    axes accept (`1-10`, `1-10 (+2)`, `1-10 [5]` = five values). Returns "3"-style strings and "final"."""
    out: list[str] = []
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        if raw.lower() == FINAL:
            out.append(FINAL)
            continue
        match = _RANGE.match(raw)
        if match:
            start, end, step, count = match.groups()
            lo, hi = int(start), int(end)
            if count:
                n = max(1, int(count))
                values = [round(lo + (hi - lo) * i / max(1, n - 1)) for i in range(n)]
            else:
                stride = max(1, int(step or 1))
                values = list(range(lo, hi + 1, stride)) if hi >= lo else list(range(lo, hi - 1, -stride))
            out.extend(str(v) for v in values)
            continue
        if raw.isdigit():
            out.append(str(int(raw)))
            continue
        raise ValueError(f'"{raw}" is not an epoch number, a range like 1-10 (+2), or "final"')
    return out


def num_label(value: str) -> str:
    """How a NUM value reads in the grid: "epoch 3" or "final"."""
    return FINAL if value == FINAL else f"epoch {int(value)}"


def epoch_stem(family: str, value: str) -> str:
    return family if value == FINAL else f"{family}-{int(value):06d}"


def families_with_epochs(names: Iterable[str]) -> dict[str, list[int]]:
    """family -> sorted epoch numbers, for every family that has per-epoch files among `names`."""
    found: dict[str, set[int]] = {}
    for name in names:
        match = _EPOCH_STEM.match(name)
        if match:
            found.setdefault(match["family"], set()).add(int(match["epoch"]))
    return {family: sorted(epochs) for family, epochs in found.items()}


def tag_names(prompt: str) -> list[str]:
    return [m.group(2).split(":")[0].strip() for m in _TAG.finditer(prompt or "")]


def trained_families(prompts: Iterable[str], names: Iterable[str]) -> list[str]:
    """The families (with epoch files) that the prompts' LoRA tags belong to, in order of appearance."""
    known = families_with_epochs(names)
    out: list[str] = []
    for prompt in prompts:
        for name in tag_names(prompt):
            family = family_of(name)
            if family in known and family not in out:
                out.append(family)
    return out


def missing_epochs_message(family: str, values: Iterable[str], names: Iterable[str]) -> str | None:
    """None when every value has a file, else a message listing what is available."""
    names = set(names)
    missing = [v for v in values if epoch_stem(family, v) not in names]
    if not missing:
        return None
    epochs = families_with_epochs(names).get(family, [])
    wanted = ", ".join(num_label(v) for v in missing)
    if epochs:
        have = ", ".join(str(e) for e in epochs) + (" and final" if family in names else "")
        listing = f"Saved epochs: {have}."
    elif family in names:
        listing = "It has only the final file (no per-epoch files were saved)."
    else:
        listing = "The WebUI's LoRA list has no file of it."
    return f'LoRA "{family}" has no file for {wanted}. {listing}'


def _set_weight(items: list[str], weight: float) -> list[str]:
    text = f"{weight:g}"
    named = [i for i, item in enumerate(items) if "=" in item]
    positional = [i for i, item in enumerate(items) if i > 0 and "=" not in item]
    out = list(items)
    for i in named:
        key = out[i].split("=", 1)[0].strip()
        if key in ("te", "unet"):
            out[i] = f"{key}={text}"
    if positional:
        out[positional[0]] = text  # te
        if len(positional) > 1:
            out[positional[1]] = text  # unet
    elif not any(out[i].split("=", 1)[0].strip() == "te" for i in named):
        out.insert(1, text)
    return out


def rewrite(
    prompt: str,
    families: Iterable[str] = (),
    *,
    value: str | None = None,
    weight: float | None = None,
) -> str:
    """The prompt with every tag of `families` switched to epoch `value` and/or set to `weight`. With no
    families, a weight applies to every LoRA tag (a strength axis for LoRAs not trained here)."""
    families = set(families)

    def replace(match: re.Match) -> str:
        items = match.group(2).split(":")
        name = items[0].strip()
        family = family_of(name)
        if families and family not in families:
            return match.group(0)
        if value is not None and family in families:
            items[0] = epoch_stem(family, value)
        if weight is not None:
            items = _set_weight(items, weight)
        return f"<{match.group(1)}:{':'.join(items)}>"

    return _TAG.sub(replace, prompt or "")
