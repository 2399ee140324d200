"""The LoRA NUM / LoRA STRENGTH axes against a stand-in of the X/Y/Z plot script's public pieces.

The stand-in has what our code touches in the host's `scripts/xyz_grid.py` (A1111 v1.10.1): the
`AxisOption` constructor signature, the module-level `axis_options` list, and the order in which the
script uses an axis (prepare the value text, cast with `type`, `confirm` once, then `apply` on a shallow
copy of `p` per cell, `format_value` for the labels). The real script is exercised by the real-host test.
"""

from __future__ import annotations

import inspect
from copy import copy
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from lib_trainer.webui.xyz_axes import (
    NUM_LABEL,
    STRENGTH_LABEL,
    AxisError,
    LoraAxes,
    axis_index,
    register_axes,
    xyz_run_kwargs,
)


class AxisOption:  # the host's constructor signature (xyz_grid.py:214-223)
    def __init__(
        self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None
    ):
        self.label, self.type, self.apply, self.format_value = label, type, apply, format_value
        self.confirm, self.cost, self.choices, self.prepare = confirm, cost, choices, prepare


def _xyz_module():
    return SimpleNamespace(AxisOption=AxisOption, axis_options=[AxisOption("Nothing", str, None)])


@dataclass
class P:
    prompt: str
    hr_prompt: str = ""
    negative_prompt: str = ""


class Names:
    """The WebUI's Lora list: a refresh picks up files written since the last read."""

    def __init__(self, names, on_disk=None):
        self.listed, self.on_disk, self.refreshes = set(names), set(on_disk or names), 0

    def __call__(self, refresh):
        if refresh:
            self.refreshes += 1
            self.listed = set(self.on_disk)
        return self.listed


def _values(opt, text):
    values = opt.prepare(text) if opt.prepare else [v.strip() for v in text.split(",") if v.strip()]
    return [opt.type(v) for v in values]


def _grid(p, x_opt, x_text, y_opt=None, y_text=""):
    """What the host's script does with two axes: values, confirm, then one shallow copy of p per cell."""
    xs = _values(x_opt, x_text)
    ys = _values(y_opt, y_text) if y_opt else [None]
    x_opt.confirm and x_opt.confirm(p, xs)
    y_opt and y_opt.confirm and y_opt.confirm(p, ys)
    cells = {}
    for y in ys:
        for x in xs:
            pc = copy(p)
            x_opt.apply(pc, x, xs)
            if y_opt:
                y_opt.apply(pc, y, ys)
            cells[(x_opt.format_value(p, x_opt, x), y_opt.format_value(p, y_opt, y) if y_opt else "")] = pc
    return cells


NAMES = ["hero", "hero-000001", "hero-000002", "hero-000003", "style", "villain-000001", "villain"]


@pytest.fixture
def axes():
    xyz = _xyz_module()
    names = Names(NAMES)
    assert register_axes(xyz, LoraAxes(names)) == [NUM_LABEL, STRENGTH_LABEL]
    options = {o.label: o for o in xyz.axis_options}
    return options[NUM_LABEL], options[STRENGTH_LABEL], names


def test_registration_is_idempotent_and_survives_a_fresh_list():
    xyz = _xyz_module()
    axes = LoraAxes(Names(NAMES))
    register_axes(xyz, axes)
    assert register_axes(xyz, axes) == []
    assert [o.label for o in xyz.axis_options] == ["Nothing", NUM_LABEL, STRENGTH_LABEL]
    xyz.axis_options = [AxisOption("Nothing", str, None)]  # "Reload UI" re-executes the script: a new list
    assert register_axes(xyz, axes) == [NUM_LABEL, STRENGTH_LABEL]
    num = xyz.axis_options[1]
    assert num.type is str and num.prepare is not None and num.cost > 0 and xyz.axis_options[2].type is float


def test_an_older_axis_class_without_prepare_still_gets_both_axes():
    class OldAxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None):
            self.label = label

    xyz = SimpleNamespace(AxisOption=OldAxisOption, axis_options=[])
    assert register_axes(xyz, LoraAxes(Names(NAMES))) == [NUM_LABEL, STRENGTH_LABEL]


def test_num_by_strength_grid_rewrites_prompt_and_hires_prompt(axes):
    num, strength, _ = axes
    p = P(prompt="a knight <lora:hero:1> <lora:style:0.5>", hr_prompt="detailed <lora:hero:0.9>")
    cells = _grid(p, num, "1-2, final", strength, "0, 1")
    assert list(cells) == [
        ("epoch 1", "strength 0"),
        ("epoch 2", "strength 0"),
        ("final", "strength 0"),
        ("epoch 1", "strength 1"),
        ("epoch 2", "strength 1"),
        ("final", "strength 1"),
    ]
    cell = cells[("epoch 2", "strength 0")]
    assert cell.prompt == "a knight <lora:hero-000002:0> <lora:style:0.5>"  # the other LoRA is left alone
    assert cell.hr_prompt == "detailed <lora:hero-000002:0>"
    assert cells[("final", "strength 1")].prompt == "a knight <lora:hero:1> <lora:style:0.5>"
    assert p.prompt == "a knight <lora:hero:1> <lora:style:0.5>"  # the original is never changed


def test_num_values_suffixes_ranges_and_final(axes):
    num, _, _ = axes
    assert _values(num, "000001, 3, final") == ["1", "3", "final"]
    assert _values(num, "1-3 (+2)") == ["1", "3"]
    with pytest.raises(AxisError, match="LoRA NUM:.*not an epoch number"):
        _values(num, "best")


def test_an_empty_hires_prompt_stays_empty(axes):
    num, _, _ = axes
    cell = _grid(P(prompt="<lora:hero-000001:0.7>"), num, "3")[("epoch 3", "")]
    assert cell.prompt == "<lora:hero-000003:0.7>" and cell.hr_prompt == ""


def test_several_trained_families_switch_together_and_te_unet_weights_are_set(axes):
    num, strength, _ = axes
    p = P(prompt="<lora:hero:1:0.5> and <lora:villain:te=0.8:unet=0.2>")
    cell = _grid(p, num, "1", strength, "0.6")[("epoch 1", "strength 0.6")]
    assert cell.prompt == "<lora:hero-000001:0.6:0.6> and <lora:villain-000001:te=0.6:unet=0.6>"


def test_missing_epoch_fails_before_any_image_with_the_listing(axes):
    num, _, _ = axes
    with pytest.raises(AxisError) as err:
        _grid(P(prompt="<lora:hero:1> <lora:villain:1>"), num, "2, 4")
    message = str(err.value)
    assert 'LoRA "hero" has no file for epoch 4. Saved epochs: 1, 2, 3 and final.' in message
    assert 'LoRA "villain" has no file for epoch 2, epoch 4. Saved epochs: 1 and final.' in message


def test_num_needs_a_tag_of_a_trained_family(axes):
    num, _, _ = axes
    with pytest.raises(
        AxisError, match=r"needs a tag like <lora:NAME:1>.*in the prompt: style.*files: hero, villain"
    ):
        _grid(P(prompt="castle <lora:style:1>"), num, "1")
    with pytest.raises(AxisError, match="has no values"):
        num.confirm(P(prompt="<lora:hero:1>"), [])


def test_files_written_after_the_list_was_read_are_found_by_a_rescan(axes):
    num, _, names = axes
    names.on_disk |= {"fresh", "fresh-000001", "fresh-000002"}
    cells = _grid(P(prompt="<lora:fresh:1>"), num, "2")
    assert cells[("epoch 2", "")].prompt == "<lora:fresh-000002:1>" and names.refreshes == 1
    _grid(P(prompt="<lora:fresh:1>"), num, "1")  # all files known: no second rescan
    assert names.refreshes == 1


def test_strength_of_a_lora_not_trained_here_sets_every_tag(axes):
    _, strength, _ = axes
    cells = _grid(P(prompt="<lora:style:1> <lyco:other:0.3>"), strength, "0, 0.5")
    assert cells[("strength 0.5", "")].prompt == "<lora:style:0.5> <lyco:other:0.5>"
    trained_and_other = _grid(P(prompt="<lora:hero:1> <lora:style:1>"), strength, "0.25")
    assert trained_and_other[("strength 0.25", "")].prompt == "<lora:hero:0.25> <lora:style:1>"
    with pytest.raises(AxisError, match="needs a LoRA tag"):
        _grid(P(prompt="no tags"), strength, "1")


def test_num_works_with_a_prompt_sr_axis(axes):
    """Prompt S/R (host: replaces xs[0] by x in the prompt) on another axis: both changes land."""
    num, _, _ = axes

    def apply_sr(p, x, xs):
        p.prompt = p.prompt.replace(xs[0], x)

    sr = AxisOption("Prompt S/R", str, apply_sr, format_value=lambda p, o, x: x)
    cells = _grid(P(prompt="a cat <lora:hero:1>"), num, "1, 2", sr, "cat, dog")
    assert cells[("epoch 2", "dog")].prompt == "a dog <lora:hero-000002:1>"


def test_axis_index_and_run_kwargs_by_parameter_name():
    labels = ["Nothing", "Seed", NUM_LABEL, STRENGTH_LABEL]
    assert axis_index(labels, STRENGTH_LABEL) == 3
    with pytest.raises(AxisError, match="Restart the WebUI"):
        axis_index(labels[:2], NUM_LABEL)

    def a1111_run(
        p,
        x_type,
        x_values,
        x_values_dropdown,
        y_type,
        y_values,
        y_values_dropdown,
        z_type,
        z_values,
        z_values_dropdown,
        draw_legend,
        include_lone_images,
        include_sub_grids,
        no_fixed_seeds,
        vary_seeds_x,
        vary_seeds_y,
        vary_seeds_z,
        margin_size,
        csv_mode,
    ):
        pass

    def reforge_run(
        p,
        x_type,
        x_values,
        x_values_dropdown,
        y_type,
        y_values,
        y_values_dropdown,
        z_type,
        z_values,
        z_values_dropdown,
        draw_legend,
        draw_individual_labels,
        skip_grid,
        items_per_grid,
        include_lone_images,
        include_sub_grids,
        no_fixed_seeds,
        vary_seeds_x,
        vary_seeds_y,
        vary_seeds_z,
        margin_size,
        csv_mode,
    ):
        pass

    axes = [(NUM_LABEL, "1, final"), (STRENGTH_LABEL, "0, 1")]
    kwargs = xyz_run_kwargs(a1111_run, labels, axes)
    assert list(kwargs) == list(inspect.signature(a1111_run).parameters)[1:]
    assert (kwargs["x_type"], kwargs["x_values"], kwargs["y_type"], kwargs["z_type"]) == (2, "1, final", 3, 0)
    assert kwargs["csv_mode"] is True and kwargs["no_fixed_seeds"] is False
    forked = xyz_run_kwargs(reforge_run, labels, axes)
    assert forked["skip_grid"] is False and forked["items_per_grid"] == 0

    def future_run(p, x_type, new_required_thing):
        pass

    with pytest.raises(AxisError, match="new_required_thing"):
        xyz_run_kwargs(future_run, labels, axes)
