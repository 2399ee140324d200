"""The "Compare epochs" request built from a finished job, its checks, and where grids are kept."""

from __future__ import annotations

import pytest

from lib_trainer.webui.compare import (
    CompareRequest,
    GridResult,
    checked,
    default_epochs_text,
    default_request,
    describe,
    latest_grid,
    read_settings,
    save_grid,
    saved_epochs,
    write_settings,
)
from lib_trainer.webui.xyz_axes import NUM_LABEL, STRENGTH_LABEL, AxisError

FILES = [f"/l/hero/hero-00000{i}.safetensors" for i in (1, 2, 3)] + [
    "/l/hero/hero.safetensors",
    "/l/hero/hero.json",
]


def test_saved_epochs_and_default_epoch_text():
    assert saved_epochs("hero", FILES) == ([1, 2, 3], True)
    assert saved_epochs("hero", ["/l/hero/hero.safetensors"]) == ([], True)
    assert default_epochs_text([1, 2, 3], True) == "1, 2, 3, final"
    many = default_epochs_text(list(range(1, 20)), True)
    assert many.split(", ")[0] == "1" and many.endswith("final") and len(many.split(", ")) == 8


def test_default_request_from_the_jobs_first_sample():
    spec = {
        "dataset": {"trigger_word": "hrx"},
        "training": {"resolution": [768, 512]},
        "samples": {
            "sampler": "dpmpp_2m",
            "prompts": [
                {"prompt": "hrx knight", "negative_prompt": "blurry", "seed": 77, "steps": 12, "cfg_scale": 5}
            ],
        },
    }
    request = default_request(spec, "hero", FILES)
    assert request.prompt == "hrx knight <lora:hero:1>" and request.negative_prompt == "blurry"
    assert (request.seed, request.steps, request.cfg_scale, request.sampler) == (77, 12, 5.0, "DPM++ 2M")
    assert (request.width, request.height) == (768, 512)
    assert request.axes() == [(NUM_LABEL, "1, 2, 3, final"), (STRENGTH_LABEL, "0.4, 0.6, 0.8, 1")]


def test_default_request_from_the_trigger_word_and_without_epoch_files():
    request = default_request({"dataset": {"trigger_word": "hrx"}}, "hero", ["/l/hero/hero.safetensors"])
    assert request.prompt == "hrx <lora:hero:1>" and request.epochs == ""
    assert request.axes() == [(STRENGTH_LABEL, "0.4, 0.6, 0.8, 1")]
    bare = default_request({}, "hero", FILES)
    assert bare.prompt == "<lora:hero:1>" and (bare.width, bare.height) == (512, 512)
    assert "epoch 1, epoch 2, epoch 3, final x strengths" in describe(bare)


def test_checked_keeps_a_users_tag_and_names_the_field_to_fix():
    edited = CompareRequest(
        family="hero", prompt="a <lora:hero-000002:0.7> b", epochs=" 1, final ", seed=2**32 + 5
    )
    ok = checked(edited)
    assert ok.prompt == edited.prompt and ok.epochs == "1, final" and ok.seed == 5
    assert checked(CompareRequest(family="hero", prompt="castle")).prompt == "castle <lora:hero:1>"
    for change, message in (
        ({"epochs": "best"}, "not an epoch number"),
        ({"strengths": "strong"}, "Strengths:"),
        ({"strengths": " "}, "Strengths:"),
        ({"epochs": "1-30", "strengths": "0.1, 0.2, 0.3, 0.4"}, "120 images"),
        ({"width": 500}, "Width must be a multiple of 8"),
        ({"steps": 0}, "Steps must be between"),
    ):
        with pytest.raises((AxisError, ValueError), match=message):
            checked(CompareRequest(family="hero", prompt="x", **change))


def test_grids_are_kept_in_the_job_folder_with_their_infotext(tmp_path):
    assert latest_grid(tmp_path) is None
    request = CompareRequest(family="hero", prompt="x <lora:hero:1>")
    first = save_grid(tmp_path, request, GridResult(png=b"\x89PNG one", infotext="one"))
    second = save_grid(tmp_path, request, GridResult(png=b"\x89PNG two", infotext="two"))
    assert first != second and first.parent == tmp_path / "compare"
    path, infotext = latest_grid(tmp_path)
    assert path == second and infotext == "two" and path.read_bytes() == b"\x89PNG two"
    assert not list((tmp_path / "compare").glob(".*tmp"))


def test_per_job_settings_merge(tmp_path):
    assert read_settings(tmp_path) == {}
    write_settings(tmp_path, compare_when_done=True)
    write_settings(tmp_path, auto_compare={"status": "done"})
    assert read_settings(tmp_path) == {"compare_when_done": True, "auto_compare": {"status": "done"}}
    (tmp_path / "webui.json").write_text("not json")
    assert read_settings(tmp_path) == {}
