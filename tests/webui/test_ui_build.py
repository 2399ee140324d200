"""The Train LoRA tab built with the WebUI's gradio (3.41 in .venv-webui), driven through its own wiring.

The handlers are called the way gradio calls them: the functions registered on the components, with the
inputs those registrations list, so a mismatch between the components and a handler's arguments fails here.
"""

from __future__ import annotations

import html
import sys
import time

import gradio as gr
import pytest
from recording_host import RecordingHost

from lib_trainer.webui import form_fields
from lib_trainer.webui.compare import read_settings
from lib_trainer.webui.service import TrainerService
from lib_trainer.webui.tab_controller import TabController
from lib_trainer.webui.ui import TAB_ID, TAB_TITLE, build_tab

STAND_IN = r"""
import json, sys, time
from pathlib import Path
job = Path(sys.argv[1])
spec = json.loads((job / "job.json").read_text())
out = Path(spec["output"]["dir"])
if spec["output"]["family_folder"]:  # a LoRA's folder; a full fine-tune's checkpoint lies in output.dir
    out = out / spec["name"]
out.mkdir(parents=True, exist_ok=True)
(out / (spec["name"] + ".safetensors")).write_bytes(b"x")
with (job / "events.jsonl").open("a") as f:
    f.write(json.dumps({"seq": 1, "time": time.time(), "type": "start", "name": spec["name"]}) + "\n")
    f.write(json.dumps({"seq": 2, "time": time.time(), "type": "done", "output_name": spec["name"],
                        "files": [str(out / (spec["name"] + ".safetensors"))]}) + "\n")
"""


@pytest.fixture
def tab(tmp_path):
    host = RecordingHost(tmp_path / "webui")
    script = tmp_path / "trainer.py"
    script.write_text(STAND_IN)
    service = TrainerService(
        host, trainer_command=lambda d, r: [sys.executable, str(script), str(d)], watch=False
    )
    built = build_tab(TabController(service))
    return host, service, built


def _handler(blocks, trigger, event: str, fn_name: str):
    """The registered function for `trigger`'s `event`, with its input and output components."""
    by_id = {c._id: c for c in blocks.blocks.values()}
    for dep, fn in zip(blocks.dependencies, blocks.fns, strict=True):
        if trigger._id in dep["targets"] and dep["trigger"] == event and fn.fn.__name__ == fn_name:
            return fn.fn, [by_id[i] for i in dep["inputs"]], [by_id[i] for i in dep["outputs"]]
    raise AssertionError(f"no {fn_name} on {event} of {trigger.elem_id}")


def test_tab_has_every_field_with_its_id_and_tooltip(tab):
    _, _, built = tab
    assert (TAB_TITLE, TAB_ID) == ("Train LoRA/DreamBooth", "lora_trainer")
    ids = {getattr(b, "elem_id", None) for b in built.blocks.blocks.values()}
    for elem_id in (
        "lora_trainer_dataset",
        "lora_trainer_dataset_summary",
        "lora_trainer_name",
        "lora_trainer_trigger",
        "lora_trainer_preset",
        "lora_trainer_start",
        "lora_trainer_model",
        "lora_trainer_checkpoint",
        "lora_trainer_progress",
        "lora_trainer_cancel",
        "lora_trainer_message",
        "lora_trainer_poll",
        "lora_trainer_gallery",
        "lora_trainer_log",
        "lora_trainer_queue",
        "lora_trainer_history",
    ):
        assert elem_id in ids, elem_id
    for spec in form_fields.FIELDS:
        component = built.fields[spec.path]
        assert component.elem_id == spec.elem_id
        assert built.tooltips[spec.elem_id] == spec.tooltip
    built.blocks.get_config_file()  # everything serialises for the browser


def test_model_and_preset_are_shown(tab):
    host, _, built = tab
    assert "base.safetensors [abc]" in built.named["model"].value
    assert "SD 2.x (v-prediction)" in built.named["model"].value
    assert built.named["preset"].value in built.named["preset"].choices


def test_start_poll_and_files_through_the_wiring(tab, tmp_path):
    host, service, built = tab
    blocks, named = built.blocks, built.named
    dataset = tmp_path / "data"
    dataset.mkdir()
    start, inputs, outputs = _handler(blocks, named["start"], "click", "on_start")
    values = {c: c.value for c in inputs}
    values[named["dataset"]] = str(dataset)
    values[named["name"]] = "hero"
    values[named["trigger"]] = "hr"
    message, job_update = start(*[values[c] for c in inputs])
    assert "queued" in message, message
    job_id = job_update["value"]
    assert service.manager.get(job_id).name == "hero"
    deadline = time.time() + 20
    while service.manager.get(job_id).status != "done" and time.time() < deadline:
        service.manager.poll()
        time.sleep(0.05)
    poll, inputs, outputs = _handler(blocks, named["poll"], "click", "on_poll")
    result = dict(zip(outputs, poll(job_id, "Loaded in the WebUI", None), strict=True))
    assert 'data-status="done"' in result[named["progress"]]
    assert "hero.safetensors" in result[named["progress"]]
    assert result[named["job"]]["value"] == job_id
    assert "refresh" in host.calls  # the WebUI's LoRA list was rescanned when the file landed


def test_start_errors_name_the_field(tab):
    _, _, built = tab
    start, inputs, _ = _handler(built.blocks, built.named["start"], "click", "on_start")
    values = {c: c.value for c in inputs}
    message, job_update = start(*[values[c] for c in inputs])
    assert "Dataset folder" in message and "LoRA name" in message
    assert job_update == gr.update()


def test_preset_change_rewrites_the_advanced_fields(tab):
    _, service, built = tab
    change, inputs, outputs = _handler(built.blocks, built.named["preset"], "change", "on_preset")
    sdxl = next(p for p in service.presets.list() if "SDXL" in p.title)
    values = [c.value for c in inputs[1:]]
    result = dict(zip(outputs, change(sdxl.title, *values), strict=True))
    resolution = built.fields["training.resolution"]
    assert str(result[resolution]).startswith("1024")
    assert sdxl.title in result[built.named["message"]]


def test_presets_do_not_stack(tab):
    """Picking a preset gives the same settings whatever was picked before it."""
    _, service, built = tab
    service.presets.save("Only 64 px", {"training": {"resolution": 64}})
    change, inputs, outputs = _handler(built.blocks, built.named["preset"], "change", "on_preset")
    low_vram = next(
        p for p in service.presets.list() if p.builtin and p.spec["training"]["gradient_checkpointing"]
    )
    values = [c.value for c in inputs[1:]]
    after_builtin = dict(zip(outputs, change(low_vram.title, *values), strict=True))
    checkpointing = built.fields["training.gradient_checkpointing"]
    assert after_builtin[checkpointing] is True
    values = [after_builtin[c] for c in inputs[1:]]
    after_user = dict(zip(outputs, change("Only 64 px", *values), strict=True))
    assert after_user[checkpointing] is False  # back to the default, not left over from the previous preset
    assert str(after_user[built.fields["training.resolution"]]) == "64"


def test_a_preset_keeps_the_training_type_and_dreambooth_prompts(tab):
    _, service, built = tab
    change, inputs, outputs = _handler(built.blocks, built.named["preset"], "change", "on_preset")
    values = {c: c.value for c in inputs[1:]}
    values[built.fields["mode"]] = "dreambooth-lora"
    values[built.fields["dreambooth.class_prompt"]] = "a photo of a dog"
    values[built.fields["dreambooth.prior_loss_weight"]] = 0.5
    builtin = next(p for p in service.presets.list() if p.builtin)
    after = dict(zip(outputs, change(builtin.title, *[values[c] for c in inputs[1:]]), strict=True))
    assert after[built.fields["mode"]] == "dreambooth-lora"
    assert after[built.fields["dreambooth.class_prompt"]] == "a photo of a dog"
    assert float(after[built.fields["dreambooth.prior_loss_weight"]]) == 0.5


def test_compare_epochs_through_the_wiring(tab, tmp_path):
    host, service, built = tab
    blocks, named = built.blocks, built.named
    dataset = tmp_path / "data"
    dataset.mkdir()
    start, inputs, _ = _handler(blocks, named["start"], "click", "on_start")
    values = {c: c.value for c in inputs}
    values.update({named["dataset"]: str(dataset), named["name"]: "hero", named["trigger"]: "hr"})
    values[named["compare_when_done"]] = True
    _, job_update = start(*[values[c] for c in inputs])
    job_id = job_update["value"]
    deadline = time.time() + 20
    while "grid" not in host.calls and time.time() < deadline:
        service.manager.poll()
        time.sleep(0.05)
    assert host.calls.count("grid") == 1  # made by itself when the job was done
    reset, inputs, outputs = _handler(blocks, named["compare_reset"], "click", "<lambda>")
    assert inputs == [named["job"]]
    deadline = time.time() + 10
    while time.time() < deadline:
        shown = dict(zip(outputs, reset(job_id), strict=True))
        if shown[named["compare_grid"]]:
            break
        time.sleep(0.05)
    assert shown[named["compare_prompt"]] == "hr <lora:hero:1>"
    assert shown[named["compare_epochs"]] == ""  # this job saved only the final file
    assert (
        shown[named["compare_grid"]].endswith(".png")
        and "Script: X/Y/Z plot" in shown[named["compare_infotext"]]
    )
    run, inputs, outputs = _handler(blocks, named["compare"], "click", "compare")
    assert inputs[0] is named["job"] and named["compare_seed"] in inputs
    grid, infotext, message = run(job_id, "castle", "", "", "0.5, 1", 42)
    assert grid.endswith(".png") and "Grid saved" in message and "strengths 0.5, 1 (seed 42)" in message
    assert host.grid_requests[-1].prompt == "castle <lora:hero:1>"
    _, _, problem = run(job_id, "castle", "", "2", "1", 42)
    assert 'LoRA "hero" has no file for epoch 2. It has only the final file' in html.unescape(problem)
    assert "lora-trainer-problems" in run(None, "", "", "", "", 1)[2]


def _ancestors(component) -> list:
    out, node = [], component.parent
    while node is not None:
        out.append(node)
        node = node.parent
    return out


def test_training_type_is_one_radio_in_the_main_view(tab):
    _, _, built = tab
    mode, class_prompt = built.fields["mode"], built.fields["dreambooth.class_prompt"]
    assert isinstance(mode, gr.Radio) and mode.value == "lora"
    assert [tuple(c) for c in mode.choices] == [
        ("LoRA", "lora"),
        ("DreamBooth LoRA", "dreambooth-lora"),
        ("DreamBooth (full fine-tune, saves a checkpoint)", "dreambooth"),
    ]
    advanced = built.named["advanced"]
    assert advanced not in _ancestors(mode) and advanced not in _ancestors(class_prompt)
    assert class_prompt.visible is False  # shown for the DreamBooth types only
    assert advanced in _ancestors(built.fields["finetune.extract_lora_rank"])
    radios = [b for b in built.blocks.blocks.values() if getattr(b, "elem_id", None) == "lora_trainer_mode"]
    assert radios == [mode]  # no second control for the training type


def test_switching_the_training_type_shows_what_it_needs(tab):
    _, _, built = tab
    named, fields = built.named, built.fields
    on_mode, inputs, outputs = _handler(built.blocks, fields["mode"], "change", "on_mode")
    assert inputs == [fields["mode"]]
    full = dict(zip(outputs, on_mode("dreambooth"), strict=True))
    assert full[fields["dreambooth.class_prompt"]]["visible"] is True
    assert full[named["compare_when_done"]]["visible"] is False  # a full fine-tune has no epochs to compare
    assert full[named["name"]]["label"] == "Checkpoint name"
    assert full[named["advanced"]]["open"] is True
    assert full[named["advanced_tabs"]]["selected"] == "lora_trainer_tab_full_fine_tune"
    assert "new checkpoint" in full[named["message"]]
    dreambooth = dict(zip(outputs, on_mode("dreambooth-lora"), strict=True))
    assert dreambooth[named["advanced_tabs"]]["selected"] == "lora_trainer_tab_dreambooth"
    assert dreambooth[named["compare_when_done"]]["visible"] is True
    lora = dict(zip(outputs, on_mode("lora"), strict=True))
    assert lora[fields["dreambooth.class_prompt"]]["visible"] is False
    assert lora[named["name"]]["label"] == "LoRA name" and lora[named["message"]] == gr.update()
    # gradio accepts every update for its component (a selected id that no tab has would fail in the browser)
    index = next(i for i, fn in enumerate(built.blocks.fns) if fn.fn is on_mode)
    built.blocks.postprocess_data(index, list(on_mode("dreambooth")), {})
    tab_ids = {getattr(b, "id", None) for b in built.blocks.blocks.values() if isinstance(b, gr.Tab)}
    assert {"lora_trainer_tab_full_fine_tune", "lora_trainer_tab_dreambooth"} <= tab_ids


def test_a_preset_that_sets_the_training_type_switches_it(tab):
    _, service, built = tab
    service.presets.save(
        "SD1.5 full fine-tune",
        {"mode": "dreambooth", "training": {"learning_rate": 2e-6}, "dreambooth": {"prior_loss_weight": 0}},
    )
    change, inputs, outputs = _handler(built.blocks, built.named["preset"], "change", "on_preset")
    assert built.fields["mode"] in outputs
    values = [c.value for c in inputs[1:]]
    after = dict(zip(outputs, change("SD1.5 full fine-tune", *values), strict=True))
    assert after[built.fields["mode"]] == "dreambooth"
    assert float(after[built.fields["training.learning_rate"]]) == 2e-6


def test_full_finetune_through_the_wiring(tab, tmp_path):
    host, service, built = tab
    blocks, named, fields = built.blocks, built.named, built.fields
    dataset = tmp_path / "data"
    dataset.mkdir()
    start, inputs, _ = _handler(blocks, named["start"], "click", "on_start")
    values = {c: c.value for c in inputs}
    values.update({named["dataset"]: str(dataset), named["name"]: "hero", named["trigger"]: "hr"})
    values[fields["mode"]] = "dreambooth"
    values[named["compare_when_done"]] = True  # ticked before the switch hid it
    message, _ = start(*[values[c] for c in inputs])
    assert "lora-trainer-problems" in message and "Class prompt" in message
    values[fields["dreambooth.class_prompt"]] = "a photo of a man"
    message, job_update = start(*[values[c] for c in inputs])
    assert "queued" in message and "hero.safetensors" in message, message
    job_id = job_update["value"]
    deadline = time.time() + 20
    while service.manager.get(job_id).status != "done" and time.time() < deadline:
        service.manager.poll()
        time.sleep(0.05)
    poll, _, outputs = _handler(blocks, named["poll"], "click", "on_poll")
    shown = dict(zip(outputs, poll(job_id, "Loaded in the WebUI", None), strict=True))
    assert '<span class="k">Checkpoint</span>' in shown[named["progress"]]
    assert '<span class="k">LoRA</span>' not in shown[named["progress"]]
    assert (host.checkpoint_dir() / "hero.safetensors").is_file()
    assert "refresh_checkpoints" in host.calls and "refresh" not in host.calls
    reset, _, outputs = _handler(blocks, named["compare_reset"], "click", "<lambda>")
    compare = dict(zip(outputs, reset(job_id), strict=True))
    assert "Compare epochs works on LoRA jobs" in html.unescape(compare[named["compare_message"]])
    assert "compare_when_done" not in read_settings(service.manager.get(job_id).job_dir)
    hint, inputs, _ = _handler(blocks, named["name"], "blur", "name_hint")
    assert inputs == [named["name"], fields["mode"], fields["finetune.extract_lora_rank"]]
    assert 'A checkpoint named "hero" already exists' in html.unescape(hint("hero", "dreambooth", 0))
    assert hint("hero", "lora", 0) == ""  # no LoRA of that name
