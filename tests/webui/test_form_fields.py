"""The Advanced section's field table: it covers every job-spec field, offers only values the trainer
accepts, and converts spec dicts to component values and back without losing anything."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from lib_trainer.spec import JobSpec, SpecError, default_spec_dict, schema, spec_from_dict, spec_to_dict
from lib_trainer.webui import form_fields as ff
from lib_trainer.webui.form_fields import (
    AUTO,
    BASIC_PATHS,
    FIELDS,
    GROUPS,
    KINDS,
    MAIN_VIEW,
    TAB_FIELDS,
    field_by_path,
    groups,
    main_view_fields,
    spec_from_values,
    values_from_spec,
)

REPO = Path(__file__).resolve().parents[2]

SCHEMA_CHOICES = {
    "mode": schema.AVAILABLE_MODES,
    "model.model_type": schema.MODEL_TYPES,
    "model.prediction_type": schema.PREDICTION_TYPES,
    "dataset.cache_latents": schema.CACHE_MODES,
    "training.optimizer": schema.OPTIMIZERS,
    "training.lr_scheduler": schema.LR_SCHEDULERS,
    "training.mixed_precision": schema.MIXED_PRECISIONS,
    "training.attention": schema.ATTENTIONS,
    "output.save_precision": schema.SAVE_PRECISIONS,
    "samples.sampler": schema.SAMPLERS,
    "dreambooth.prior": schema.PRIORS,
    "dreambooth.class_sampler": schema.SAMPLERS,
}


def _leaves(cls: type, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every leaf field of a spec dataclass by dotted path; a list of tables (samples.prompts) is one leaf."""
    out = {}
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if "section" in f.metadata:
            out.update(_leaves(f.metadata["section"], path + "."))
        else:
            out[path] = f
    return out


LEAVES = _leaves(JobSpec)


def _check(path: str):
    return LEAVES[path].metadata["check"]


def _accepts(path: str, value) -> bool:
    try:
        _check(path)(value)
    except schema.Invalid:
        return False
    return True


@pytest.fixture()
def base(tmp_path: Path) -> dict:
    """The defaults with the tab's own fields filled (spec_from_dict does not look at the disk, but real
    paths keep this honest if it ever does)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"")
    spec = default_spec_dict()
    spec["name"] = "mychar"
    spec["model"]["checkpoint"] = str(tmp_path / "model.safetensors")
    spec["dataset"]["path"] = str(tmp_path / "data")
    spec["dataset"]["trigger_word"] = "sks"
    spec["output"]["dir"] = str(tmp_path / "out")
    return spec


def _normal(spec: dict) -> dict:
    return spec_to_dict(spec_from_dict(spec))


def _changed(base: dict, tmp_path: Path) -> dict:
    """A spec with every form field away from its default (dreambooth.prior "lora-off" is only valid with
    mode "dreambooth-lora"; the finetune section is not read by that mode, so any valid value will do)."""
    spec = _normal(base)
    spec["mode"] = "dreambooth-lora"
    spec["model"].update(
        vae=str(tmp_path / "vae.safetensors"), model_type="sd2", prediction_type="v_prediction", clip_skip=2
    )
    spec["dataset"].update(
        caption_extension=".caption",
        prepend_trigger_word=True,
        shuffle_captions=True,
        keep_tokens=1,
        caption_dropout=0.05,
        flip_aug=True,
        enable_bucket=False,
        min_bucket_reso=320,
        max_bucket_reso=1536,
        bucket_reso_steps=32,
        bucket_no_upscale=True,
        cache_latents="memory",
        cache_dir=str(tmp_path / "cache"),
    )
    spec["network"].update(
        rank=32,
        alpha=None,
        train_unet=False,
        train_text_encoder=True,
        dropout=0.1,
        learn_trigger=True,
        trigger_vectors=3,
        trigger_init="dog",
        trigger_step_scale=10.0,
        trigger_train_fraction=0.5,
    )
    spec["training"].update(
        epochs=7,
        max_steps=500,
        batch_size=3,
        resolution=[768, 512],
        learning_rate=3e-5,
        text_encoder_lr=5e-5,
        optimizer="Prodigy",
        optimizer_args={"weight_decay": 0.01, "betas": [0.9, 0.99], "use_bias_correction": True},
        lr_scheduler="cosine_with_restarts",
        lr_warmup_steps=0.05,
        lr_scheduler_num_cycles=3,
        lr_scheduler_power=2.0,
        mixed_precision="fp16",
        seed=1234,
        gradient_accumulation_steps=4,
        max_grad_norm=0.0,
        gradient_checkpointing=True,
        attention="xformers",
        noise_offset=0.0357,
        min_snr_gamma=5.0,
        device="cuda:1",
    )
    spec["output"].update(
        save_every_epochs=2,
        save_precision="bf16",
        save_state_on_cancel=False,
        save_lora_on_cancel=False,
        preferred_weight=0.8,
    )
    spec["samples"].update(
        every_epochs=3,
        sampler="dpmpp_2m",
        prompts=[
            {"prompt": "{trigger}, portrait photo", "negative_prompt": "blurry, lowres", "seed": 7},
            {
                "prompt": "{trigger} riding a bicycle",
                "width": 512,
                "height": 768,
                "steps": 25,
                "cfg_scale": 5.5,
            },
        ],
    )
    spec["dreambooth"].update(
        instance_prompt="a photo of {trigger} dog",
        class_prompt="a photo of a dog",
        class_negative_prompt="cartoon, blurry",
        num_class_images=200,
        class_data=str(tmp_path / "reg"),
        prior_loss_weight=0.5,
        prior="lora-off",
        class_sampler="ddim",
        class_steps=25,
        class_cfg_scale=6.5,
    )
    spec["finetune"].update(ema=True, ema_decay=0.999, extract_lora_rank=64)
    return _normal(spec)


# ---------------------------------------------------------------- the table


def test_every_spec_field_is_in_the_form_or_set_by_the_tab():
    form = {spec.path for spec in FIELDS}
    assert not form & TAB_FIELDS
    assert set(LEAVES) == form | TAB_FIELDS, "a spec field has no row in form_fields (or a row is stale)"
    assert {
        "spec_version",
        "name",
        "dataset.path",
        "dataset.trigger_word",
        "model.checkpoint",
        "output.dir",
        "output.family_folder",
        "finetune.lora_dir",
    } == TAB_FIELDS


def test_table_is_well_formed():
    paths = [spec.path for spec in FIELDS]
    elem_ids = [spec.elem_id for spec in FIELDS]
    assert len(paths) == len(set(paths))
    assert len(elem_ids) == len(set(elem_ids))
    for spec in FIELDS:
        assert spec.elem_id == "lora_trainer_" + spec.path.replace(".", "_")
        assert spec.group in GROUPS
        assert spec.kind in KINDS
        assert spec.label.strip() and spec.tooltip.strip(), spec.path
        assert spec.label == spec.label.strip() and len(spec.label) <= 50, spec.path
        assert (spec.choices is not None) == (spec.kind in ("dropdown", "radio")), spec.path
        assert (spec.choice_labels is not None) == (spec.kind == "radio"), spec.path
        if spec.choice_labels:
            assert len(spec.choice_labels) == len(spec.choices) == len(set(spec.choice_labels)), spec.path
        if spec.kind == "slider":
            assert None not in (spec.minimum, spec.maximum, spec.step), spec.path
            assert not spec.nullable, "a slider cannot be left empty"
        if spec.kind in ("checkbox", "dropdown", "radio", "text", "textarea"):
            assert spec.minimum is None and spec.maximum is None, spec.path
        if spec.nullable and spec.kind != "dropdown":
            assert "empty" in (spec.tooltip + spec.placeholder).lower(), f"{spec.path}: say what empty means"
    advanced = [s for s in FIELDS if s.path not in MAIN_VIEW]
    assert [g for g, _ in groups()] == [g for g in GROUPS if any(s.group == g for s in advanced)]
    assert [s for _, specs in groups() for s in specs] == sorted(
        advanced, key=lambda s: GROUPS.index(s.group)
    )
    assert [s.path for s in main_view_fields()] == list(MAIN_VIEW)
    for path in BASIC_PATHS:
        assert field_by_path(path).path == path
    with pytest.raises(KeyError):
        field_by_path("name")


def test_dropdown_choices_are_the_schemas():
    dropdowns = {spec.path: spec for spec in FIELDS if spec.kind in ("dropdown", "radio")}
    assert set(dropdowns) == set(SCHEMA_CHOICES)
    for path, spec in dropdowns.items():
        nullable = LEAVES[path].default is None
        assert spec.nullable == nullable, path
        expected = (AUTO, *SCHEMA_CHOICES[path]) if nullable else SCHEMA_CHOICES[path]
        assert spec.choices == tuple(expected), path
        for choice in SCHEMA_CHOICES[path]:
            assert _check(path)(choice) == choice
        if nullable:
            assert not _accepts(path, AUTO), "AUTO must not collide with a real choice"


def test_nullable_matches_the_schema():
    for spec in FIELDS:
        if spec.path in ("model.vae", "samples.prompts", "training.optimizer_args", "training.resolution"):
            continue
        assert spec.nullable == _accepts(spec.path, None), spec.path


def test_ui_ranges_are_accepted_and_never_looser_than_the_schema():
    numeric = [spec for spec in FIELDS if spec.kind in ("int", "number", "slider")]
    assert numeric
    for spec in numeric:
        whole = ff._is_int(spec)
        if spec.minimum is not None:
            assert _accepts(spec.path, spec.minimum), f"{spec.path}: minimum {spec.minimum} is refused"
        else:  # no UI bound: the schema must have none either
            assert _accepts(spec.path, -(10**12) if whole else -1e12), f"{spec.path}: give a minimum"
        if spec.maximum is not None:
            assert _accepts(spec.path, spec.maximum), f"{spec.path}: maximum {spec.maximum} is refused"
            assert spec.minimum is None or spec.minimum < spec.maximum
        else:
            assert _accepts(spec.path, 10**12 if whole else 1e12), f"{spec.path}: give a maximum"
        if whole:
            assert isinstance(spec.step, int), f"{spec.path}: whole-number fields need an int step"
            assert isinstance(spec.minimum, int)
            assert spec.maximum is None or isinstance(spec.maximum, int)
            assert _accepts(spec.path, spec.minimum + spec.step), spec.path
            assert not _accepts(spec.path, spec.minimum + 0.5), f"{spec.path} takes fractions: not an int"
        if spec.kind == "slider":
            steps = (spec.maximum - spec.minimum) / spec.step
            assert abs(steps - round(steps)) < 1e-9, f"{spec.path}: the maximum is not on a step"


def test_ui_extremes_pass_the_whole_spec_check(base):
    """The per-field checks above, once more through spec_from_dict with the form's own conversion (the
    smallest bucket side is at its minimum, so that no largest side is below it)."""
    start = values_from_spec(base)
    start[FIELDS.index(field_by_path("dataset.min_bucket_reso"))] = 64
    for spec in FIELDS:
        if spec.kind not in ("int", "number", "slider"):
            continue
        for bound in (spec.minimum, spec.maximum):
            if bound is None:
                continue
            values = list(start)
            values[FIELDS.index(spec)] = str(bound) if spec.nullable else float(bound)
            spec_from_dict(spec_from_values(base, values))


def test_training_type_is_one_main_view_radio_with_plain_labels():
    mode = field_by_path("mode")
    assert mode.kind == "radio" and mode.choices == schema.AVAILABLE_MODES == (
        "lora",
        "dreambooth-lora",
        "dreambooth",
    )
    assert mode.choice_labels == (
        "LoRA",
        "DreamBooth LoRA",
        "DreamBooth (full fine-tune, saves a checkpoint)",
    )
    assert "checkpoint" in mode.tooltip and "Class prompt" in mode.tooltip
    advanced = [s.path for _, specs in groups() for s in specs]
    assert "mode" not in advanced and "dreambooth.class_prompt" not in advanced  # one component each
    assert MAIN_VIEW == ("mode", "dreambooth.class_prompt")


def test_full_finetune_group():
    group = dict(groups())["Full fine-tune"]
    assert [s.path for s in group] == ["finetune.ema", "finetune.ema_decay", "finetune.extract_lora_rank"]
    assert all("Full fine-tune" in s.tooltip for s in group)
    assert "finetune.lora_dir" in TAB_FIELDS  # the service sets it to the WebUI's LoRA folder


def test_a_shown_mode_label_is_read_as_its_value(base):
    values = values_from_spec({**base, "mode": "dreambooth"})
    at = FIELDS.index(field_by_path("mode"))
    assert values[at] == "dreambooth"  # the radio's value is the spec value; the label is only shown
    values[at] = "DreamBooth LoRA"
    assert spec_from_values(base, values)["mode"] == "dreambooth-lora"


# ---------------------------------------------------------------- round trips


def test_round_trip_of_the_defaults(base):
    expected = _normal(base)
    values = values_from_spec(expected)
    assert len(values) == len(FIELDS)
    assert _normal(spec_from_values(base, values)) == expected
    # a partial spec (only the tab's fields) gives the same values as the full one
    partial = {k: base[k] for k in ("name",)}
    assert values_from_spec(partial) == values


def test_round_trip_of_a_spec_with_every_field_changed(base, tmp_path):
    changed = _changed(base, tmp_path)
    defaults = _normal(base)
    for spec in FIELDS:
        found, value = ff._get(changed, spec.path)
        assert found and value != ff._get(defaults, spec.path)[1], f"{spec.path} is not changed by the test"
    values = values_from_spec(changed)
    assert _normal(spec_from_values(base, values)) == changed
    by_path = dict(zip([s.path for s in FIELDS], values, strict=True))
    assert by_path["training.resolution"] == "768x512"
    assert by_path["network.alpha"] == ""
    assert by_path["training.max_steps"] == "500"
    assert by_path["model.model_type"] == "sd2"
    assert by_path["samples.prompts"].splitlines() == [
        "{trigger}, portrait photo --n blurry, lowres --d 7",
        "{trigger} riding a bicycle --w 512 --h 768 --l 5.5 --s 25",
    ]
    # and back from the changed spec to the defaults
    assert _normal(spec_from_values(changed, values_from_spec(defaults))) == defaults


def test_values_as_gradio_returns_them(base):
    values = values_from_spec(base)
    at = {s.path: i for i, s in enumerate(FIELDS)}
    values[at["network.rank"]] = 16.0  # gr.Number without precision
    values[at["training.epochs"]] = 5.0
    values[at["model.clip_skip"]] = 2.0  # gr.Slider
    values[at["network.alpha"]] = " 4 "
    values[at["training.max_steps"]] = "300.0"
    values[at["training.text_encoder_lr"]] = "1e-5"
    values[at["training.lr_warmup_steps"]] = 100.0
    values[at["training.learning_rate"]] = None  # a cleared gr.Number
    values[at["training.resolution"]] = " 1024 × 768 "
    values[at["training.optimizer_args"]] = '"weight_decay": 0.1'  # braces are optional
    values[at["model.model_type"]] = ""
    values[at["training.device"]] = ""
    values[at["dataset.cache_dir"]] = "   "
    values[at["samples.prompts"]] = "\n a cat --S 30 --n  \n\n--w 512\n"
    spec = spec_from_values(base, values)
    assert spec["network"]["rank"] == 16 and isinstance(spec["network"]["rank"], int)
    assert spec["training"]["epochs"] == 5 and isinstance(spec["training"]["epochs"], int)
    assert spec["model"]["clip_skip"] == 2 and isinstance(spec["model"]["clip_skip"], int)
    assert spec["network"]["alpha"] == 4.0
    assert spec["training"]["max_steps"] == 300
    assert spec["training"]["text_encoder_lr"] == 1e-5
    assert spec["training"]["lr_warmup_steps"] == 100 and isinstance(spec["training"]["lr_warmup_steps"], int)
    assert spec["training"]["learning_rate"] == 1e-4
    assert spec["training"]["resolution"] == [1024, 768]
    assert spec["training"]["optimizer_args"] == {"weight_decay": 0.1}
    assert spec["model"]["model_type"] is None
    assert spec["training"]["device"] == "auto"
    assert spec["dataset"]["cache_dir"] is None
    assert spec["samples"]["prompts"] == [
        {"prompt": "a cat", "steps": 30, "negative_prompt": ""},
        {"prompt": "", "width": 512},
    ]
    assert spec["name"] == "mychar"  # the tab's fields come from base
    with pytest.raises(SpecError) as err:  # not validated here: the line without a prompt fails later
        spec_from_dict(spec)
    assert [p for p, _ in err.value.errors] == ["samples.prompts[1].prompt"]


def test_base_is_not_modified_and_missing_sections_are_created(base):
    before = _normal(base)
    values = values_from_spec(_changed(base, Path("/tmp")))
    spec_from_values(base, values)
    assert _normal(base) == before
    minimal = {"name": "x", "model": None}
    out = spec_from_values(minimal, values)
    assert out["model"]["clip_skip"] == 2 and out["training"]["epochs"] == 7
    with pytest.raises(ValueError):
        spec_from_values(base, values[:-1])


# ---------------------------------------------------------------- unreadable values


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        ("training.resolution", "abc", "768x512"),
        ("training.resolution", "512x512x3", "512"),
        ("training.optimizer_args", '{"weight_decay": 0.01,}', "JSON"),
        ("training.optimizer_args", "weight_decay=0.01", "JSON"),
        ("samples.prompts", "a cat --s x", "--s"),
        ("samples.prompts", "a cat\na dog --s 2.5", "line 2"),
        ("samples.prompts", "a cat --l", "nothing"),
        ("samples.prompts", "a cat --q 3", "--n"),
        ("samples.prompts", "a cat --s 3 --s 4", "twice"),
        ("training.max_steps", "ten", "whole number"),
        ("network.alpha", "eight", "empty"),
        ("training.learning_rate", "fast", "1e-4"),
        ("training.epochs", True, "number"),
        ("dataset.flip_aug", "yes", "true or false"),
    ],
)
def test_unreadable_values_name_the_field(base, path, value, words):
    values = values_from_spec(base)
    values[FIELDS.index(field_by_path(path))] = value
    with pytest.raises(SpecError) as err:
        spec_from_values(base, values)
    assert len(err.value.errors) == 1
    where, message = err.value.errors[0]
    assert where == path
    assert message.startswith(field_by_path(path).label + ": ")
    assert words in message


def test_all_unreadable_values_are_reported_at_once(base):
    values = values_from_spec(base)
    values[FIELDS.index(field_by_path("training.resolution"))] = "big"
    values[FIELDS.index(field_by_path("training.optimizer_args"))] = "{"
    with pytest.raises(SpecError) as err:
        spec_from_values(base, values)
    assert [p for p, _ in err.value.errors] == ["training.resolution", "training.optimizer_args"]


def test_wrong_but_readable_values_are_left_to_the_validator(base):
    values = values_from_spec(base)
    values[FIELDS.index(field_by_path("training.resolution"))] = "500"
    values[FIELDS.index(field_by_path("network.rank"))] = 16.5
    spec = spec_from_values(base, values)
    with pytest.raises(SpecError) as err:
        spec_from_dict(spec)
    assert {p for p, _ in err.value.errors} == {"training.resolution", "network.rank"}


# ---------------------------------------------------------------- stays light


def test_import_does_not_pull_in_torch_or_gradio():
    code = (
        "import sys; import lib_trainer.webui.form_fields; "
        "heavy = [m for m in ('torch', 'gradio', 'numpy', 'PIL', 'safetensors') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
