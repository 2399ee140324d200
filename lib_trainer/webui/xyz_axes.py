"""The "LoRA NUM" and "LoRA STRENGTH" axes of the WebUI's X/Y/Z plot script (host-free).

The X/Y/Z plot script is a file of the host (`scripts/xyz_grid.py`) whose module is reachable only through
the host's script list; the adapter (`host.py`) finds it and hands it in here. Everything here works on
that module's public pieces only: its `AxisOption` class and its module-level `axis_options` list, and on
the processing object `p` the script passes to an axis (`p.prompt`, `p.hr_prompt`).

Why both registration points: the script's `ui()` copies `axis_options` when the UI (or, under --nowebui,
the API) is built, and "Reload UI" re-executes the script with a fresh list. So the extension appends at
its own import time and again before every UI build, skipping labels that are already there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Iterable
from typing import Any

from .lora_tags import (
    epoch_stem,
    expand_num_values,
    families_with_epochs,
    missing_epochs_message,
    num_label,
    rewrite,
    tag_names,
    trained_families,
)

NUM_LABEL = "LoRA NUM"
STRENGTH_LABEL = "LoRA STRENGTH"
NOTHING_LABEL = "Nothing"
XYZ_TITLE = "x/y/z plot"  # the host's API finds scripts by lower-cased title
# Epoch files are loaded from disk on a change, a strength change only re-patches weights: the host runs
# the costlier axis in the outer loop (checkpoint 1.0, VAE 0.7).
NUM_COST = 0.5

# Lists the names the WebUI's Lora list knows (file stems); True asks it to rescan the LoRA folder first.
NamesProvider = Callable[[bool], Collection[str]]


class AxisError(RuntimeError):
    """A value or prompt the axis cannot work with. Raised from `confirm`, so before any image is made."""


def _prompts(p: Any) -> list[str]:
    """The prompt texts of a processing object an axis rewrites: the prompt, and the hires prompt when
    the user set one (an empty hires prompt means "same as the prompt" to the host)."""
    out: list[str] = []
    for attr in ("prompt", "hr_prompt"):
        value = getattr(p, attr, None)
        if isinstance(value, str) and value:
            out.append(value)
        elif isinstance(value, list | tuple):
            out.extend(v for v in value if isinstance(v, str))
    return out


def _rewrite_prompts(p: Any, families: Iterable[str], **change: Any) -> None:
    """Assign new prompt strings (never mutate shared ones: cells are shallow copies of one object)."""
    families = list(families)
    for attr in ("prompt", "hr_prompt"):
        value = getattr(p, attr, None)
        if isinstance(value, str) and value:
            setattr(p, attr, rewrite(value, families, **change))
        elif isinstance(value, list | tuple):
            setattr(p, attr, [rewrite(v, families, **change) if isinstance(v, str) else v for v in value])


class LoraAxes:
    """apply / confirm / format functions of both axes, bound to a source of LoRA names."""

    def __init__(self, names: NamesProvider):
        self._names = names

    def names(self, refresh: bool = False) -> set[str]:
        return set(self._names(refresh))

    # ------------------------------------------------------------ LoRA NUM

    @staticmethod
    def prepare_num(text: str) -> list[str]:
        """The host calls this with the raw value text (no choices list): numbers, ranges, `final`."""
        try:
            return expand_num_values(text or "")
        except ValueError as error:
            raise AxisError(f"LoRA NUM: {error}.") from None

    @staticmethod
    def format_num(_p: Any, _opt: Any, value: Any) -> str:
        return num_label(str(value))

    def _families_for_num(self, p: Any, values: list[str]) -> tuple[list[str], set[str]]:
        prompts = _prompts(p)
        names = self.names()
        families = trained_families(prompts, names)
        wanted = {epoch_stem(f, v) for f in families for v in values}
        if not families or not wanted <= names:
            names = self.names(refresh=True)  # files written since the list was last read
            families = trained_families(prompts, names)
        return families, names

    def confirm_num(self, p: Any, values: list[str]) -> None:
        values = [str(v) for v in values]
        if not values:
            raise AxisError(
                'LoRA NUM has no values. Give epoch numbers, e.g. "1, 2, 3", "1-10 (+2)" or "final".'
            )
        families, names = self._families_for_num(p, values)
        if not families:
            trained = sorted(families_with_epochs(names))
            listed = ", ".join(trained[:10]) if trained else "none (train with 'save every N epochs' on)"
            in_prompt = ", ".join(tag_names(" ".join(_prompts(p)))) or "none"
            raise AxisError(
                "LoRA NUM needs a tag like <lora:NAME:1> in the prompt, where NAME is a LoRA with saved epoch "
                f"files. LoRAs in the prompt: {in_prompt}. LoRAs with epoch files: {listed}."
            )
        problems = [m for f in families if (m := missing_epochs_message(f, values, names))]
        if problems:
            raise AxisError(" ".join(problems))

    def apply_num(self, p: Any, value: Any, _values: Any) -> None:
        value = str(value)
        families = trained_families(_prompts(p), self.names())
        _rewrite_prompts(p, families, value=value)

    # ------------------------------------------------------------ LoRA STRENGTH

    @staticmethod
    def format_strength(_p: Any, _opt: Any, value: Any) -> str:
        return f"strength {round(float(value), 4):g}"

    def confirm_strength(self, p: Any, values: list[float]) -> None:
        if not values:
            raise AxisError(
                'LoRA STRENGTH has no values. Give weights, e.g. "0.4, 0.6, 0.8, 1" or "0-1 (+0.25)".'
            )
        if not tag_names(" ".join(_prompts(p))):
            raise AxisError("LoRA STRENGTH needs a LoRA tag in the prompt, e.g. <lora:NAME:1>.")

    def apply_strength(self, p: Any, value: Any, _values: Any) -> None:
        # Tags of trained families only, or every tag when none is one (a LoRA from elsewhere).
        families = trained_families(_prompts(p), self.names())
        _rewrite_prompts(p, families, weight=float(value))


def register_axes(xyz: Any, axes: LoraAxes) -> list[str]:
    """Append both axes to the X/Y/Z script module's `axis_options`, once. Returns the labels added."""
    options = xyz.axis_options
    present = {getattr(option, "label", None) for option in options}
    has_prepare = "prepare" in inspect.signature(xyz.AxisOption).parameters
    added: list[str] = []
    if NUM_LABEL not in present:
        extra = {"prepare": axes.prepare_num} if has_prepare else {}
        options.append(
            xyz.AxisOption(
                NUM_LABEL,
                str,
                axes.apply_num,
                format_value=axes.format_num,
                confirm=axes.confirm_num,
                cost=NUM_COST,
                **extra,
            )
        )
        added.append(NUM_LABEL)
    if STRENGTH_LABEL not in present:
        options.append(
            xyz.AxisOption(
                STRENGTH_LABEL,
                float,
                axes.apply_strength,
                format_value=axes.format_strength,
                confirm=axes.confirm_strength,
            )
        )
        added.append(STRENGTH_LABEL)
    return added


def axis_index(labels: list[str], label: str) -> int:
    """The index an API caller passes as x_type/y_type/z_type: the position of `label` in the script's axis
    list of that tab (it depends on which extensions added axes, so it is looked up, never hard-coded)."""
    for i, name in enumerate(labels):
        if name == label:
            return i
    raise AxisError(f'The X/Y/Z plot has no "{label}" axis. Restart the WebUI so the extension can add it.')


# Run arguments the forks add, with the values the host's own UI starts with (reForge: xyz_grid.py:603).
_FORK_DEFAULTS = {"draw_individual_labels": False, "skip_grid": False, "items_per_grid": 0}


def xyz_run_kwargs(run: Callable[..., Any], labels: list[str], axes: list[tuple[str, str]]) -> dict[str, Any]:
    """Keyword arguments for the X/Y/Z script's `run(p, ...)` for up to three (label, values text) axes.
    Built by parameter name, because reForge inserts parameters in the middle of the positional list."""
    if not 1 <= len(axes) <= 3:
        raise ValueError("an X/Y/Z plot has one to three axes")
    padded = list(axes) + [(NOTHING_LABEL, "")] * (3 - len(axes))
    values: dict[str, Any] = {
        "draw_legend": True,
        "include_lone_images": False,
        "include_sub_grids": False,
        "no_fixed_seeds": False,
        "vary_seeds_x": False,
        "vary_seeds_y": False,
        "vary_seeds_z": False,
        "margin_size": 0,
        "csv_mode": True,  # values are text, never the dropdown lists
        **_FORK_DEFAULTS,
    }
    for letter, (label, text) in zip("xyz", padded, strict=True):
        values[f"{letter}_type"] = axis_index(labels, label)
        values[f"{letter}_values"] = text
        values[f"{letter}_values_dropdown"] = []
    kwargs: dict[str, Any] = {}
    for name, param in list(inspect.signature(run).parameters.items())[1:]:  # after p
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in values:
            kwargs[name] = values[name]
        elif param.default is param.empty:
            raise AxisError(f"This WebUI's X/Y/Z plot has an unknown argument {name!r}; cannot run it.")
    return kwargs
