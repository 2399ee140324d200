"""The job spec is the public contract of the CLI, the WebUI tab and the REST API: these tests pin it down."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lib_trainer.spec import (
    CLI_FLAGS,
    DreamBoothSpec,
    FineTuneSpec,
    JobSpec,
    SamplePrompt,
    SpecError,
    apply_overrides,
    default_spec_dict,
    field_paths,
    load_spec_file,
    schema,
    spec_from_dict,
    spec_to_dict,
)
from lib_trainer.spec import load as spec_load

DOCS = Path(__file__).resolve().parents[1] / "docs" / "job-spec.md"

EXAMPLE = {
    "spec_version": 1,
    "name": "mychar",
    "mode": "lora",
    "model": {"checkpoint": "models/base.safetensors", "vae": "current"},
    "dataset": {"path": "data/mychar", "trigger_word": "sks", "caption_extension": ".txt"},
    "network": {"rank": 16, "alpha": 8, "train_text_encoder": False},
    "training": {
        "epochs": 10,
        "max_steps": None,
        "batch_size": 1,
        "resolution": 512,
        "learning_rate": 1e-4,
        "text_encoder_lr": None,
        "optimizer": "AdamW",
        "lr_scheduler": "cosine",
        "mixed_precision": "bf16",
        "seed": 42,
    },
    "output": {"dir": "out", "save_every_epochs": 1, "save_precision": "fp16"},
    "samples": {
        "every_epochs": 1,
        "prompts": [{"prompt": "{trigger}, photo", "negative_prompt": "blurry", "seed": 1}],
    },
}


def minimal(**sections) -> dict:
    """The smallest valid spec, with some sections' fields replaced."""
    data = {
        "name": "t",
        "model": {"checkpoint": "m.safetensors"},
        "dataset": {"path": "d"},
        "output": {"dir": "o"},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return data


def with_field(dotted: str, value) -> dict:
    return apply_overrides(minimal(), {dotted: value})


def errors_of(data) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        spec_from_dict(data)
    return info.value.errors


def one_error(data) -> tuple[str, str]:
    errors = errors_of(data)
    assert len(errors) == 1, errors
    return errors[0]


# ---------------------------------------------------------------- defaults, round trip, the example


def test_defaults_round_trip():
    data = default_spec_dict()
    assert data["spec_version"] == 1
    assert data["name"] is None and data["model"]["checkpoint"] is None
    assert data["dataset"]["path"] is None and data["output"]["dir"] is None
    json.dumps(data)  # JSON-ready
    filled = apply_overrides(
        data, {"name": "x", "model.checkpoint": "m", "dataset.path": "d", "output.dir": "o"}
    )
    spec = spec_from_dict(filled)
    assert spec_to_dict(spec) == filled
    assert spec_from_dict(spec_to_dict(spec)) == spec
    assert (
        spec.training.learning_rate == 1e-4
        and spec.network.alpha == 8.0
        and spec.dataset.cache_latents == "disk"
    )


def test_default_spec_dict_lists_every_field_and_is_a_fresh_copy():
    data = default_spec_dict()
    data["training"]["optimizer_args"]["x"] = 1
    assert default_spec_dict()["training"]["optimizer_args"] == {}
    paths = {f"{s}.{k}" for s, v in data.items() if isinstance(v, dict) for k in v} | {
        k for k, v in data.items() if not isinstance(v, dict)
    }
    assert paths == set(field_paths())


def test_required_placeholders_are_reported_all_at_once():
    paths = [p for p, _ in errors_of(default_spec_dict())]
    assert paths == ["name", "model.checkpoint", "dataset.path", "output.dir"]


def test_example_spec_from_the_contract_validates():
    spec = spec_from_dict(EXAMPLE)
    assert isinstance(spec, JobSpec)
    assert spec.name == "mychar" and spec.model.vae == "current" and spec.training.max_steps is None
    assert spec.samples.prompts == (
        SamplePrompt(prompt="{trigger}, photo", negative_prompt="blurry", seed=1),
    )
    assert spec_to_dict(spec)["samples"]["prompts"][0]["cfg_scale"] == 7.0
    assert spec_from_dict(spec_to_dict(spec)) == spec


def test_non_default_values_round_trip_through_json():
    data = minimal(
        training={"resolution": [512, 768], "lr_warmup_steps": 0.1, "optimizer_args": {"betas": [0.9, 0.99]}},
        network={"alpha": None},
        samples={"prompts": [{"prompt": "a", "width": 640, "height": 384}]},
    )
    spec = spec_from_dict(data)
    assert spec.training.resolution == (512, 768)
    again = spec_from_dict(json.loads(json.dumps(spec_to_dict(spec))))
    assert again == spec
    assert spec_to_dict(spec)["training"]["resolution"] == [512, 768]


def test_input_is_not_modified():
    data = minimal(training={"optimizer": "adamw"})
    before = copy.deepcopy(data)
    spec_from_dict(data)
    assert data == before


def test_spec_is_frozen():
    spec = spec_from_dict(minimal())
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.training.epochs = 3  # type: ignore[misc]


# ---------------------------------------------------------------- unknown fields, many errors


@pytest.mark.parametrize(
    "data, path, hint",
    [
        (minimal(nmae="x"), "nmae", '"name"'),
        (minimal(training={"learningrate": 1e-4}), "training.learningrate", 'did you mean "learning_rate"'),
        (minimal(training={"Epochs": 3}), "training.Epochs", 'did you mean "epochs"'),
        (minimal(network={"network_dim": 8}), "network.network_dim", "rank"),
        (minimal(epochs=3), "epochs", "training.epochs"),
        (minimal(model={"dir": "x"}), "model.dir", "output.dir"),
        (
            minimal(samples={"prompts": [{"promt": "x", "prompt": "y"}]}),
            "samples.prompts[0].promt",
            '"prompt"',
        ),
    ],
)
def test_unknown_field_names_the_field_and_suggests(data, path, hint):
    got_path, message = one_error(data)
    assert got_path == path
    assert message.startswith("unknown field")
    assert hint in message


def test_multiple_errors_are_collected_in_one_pass():
    data = minimal(
        training={"learning_rate": -1, "epochs": 0, "optimizer": "adam"},
        network={"rank": 0, "typo": 1},
        samples={"prompts": [{"prompt": "a", "steps": 0}]},
    )
    data["name"] = "a/b"
    with pytest.raises(SpecError) as info:
        spec_from_dict(data)
    paths = [p for p, _ in info.value.errors]
    assert paths == [
        "name",
        "network.typo",
        "network.rank",
        "training.epochs",
        "training.learning_rate",
        "training.optimizer",
        "samples.prompts[0].steps",
    ]
    lines = str(info.value).splitlines()
    assert len(lines) == len(paths)
    assert "training.learning_rate: expected a number greater than 0, got -1" in lines
    assert isinstance(info.value, ValueError)


def test_spec_error_shortcut_and_pickling():
    err = SpecError("training.epochs", "expected a whole number")
    assert err.errors == [("training.epochs", "expected a whole number")]
    assert str(err) == "training.epochs: expected a whole number"
    again = pickle.loads(pickle.dumps(SpecError([("a", "b"), ("c", "d")])))
    assert again.errors == [("a", "b"), ("c", "d")] and str(again) == "a: b\nc: d"


@pytest.mark.parametrize("data", [[1, 2], "x", None])
def test_spec_must_be_an_object(data):
    path, message = one_error(data)
    assert path == "" and "JSON object" in message


def test_section_must_be_a_table():
    path, message = one_error(minimal(training=[1]))
    assert path == "training" and "table of settings" in message


# ---------------------------------------------------------------- range and type checks


@pytest.mark.parametrize(
    "dotted, value, expected",
    [
        ("model.clip_skip", 0, "from 1 to 12"),
        ("model.clip_skip", 13, "from 1 to 12"),
        ("model.model_type", "sd3", '"sd1", "sd2", "sd2-v", "sdxl", or null'),
        ("model.prediction_type", "x0", '"epsilon", "v_prediction"'),
        ("model.checkpoint", 5, "expected a path in quotes"),
        ("dataset.keep_tokens", -1, "from 0 to 255"),
        ("dataset.caption_dropout", 1.5, "from 0 to 1"),
        ("dataset.caption_dropout", -0.1, "from 0 to 1"),
        ("dataset.min_bucket_reso", 32, "from 64 to 4096"),
        ("dataset.min_bucket_reso", 260, "multiple of 8"),
        ("dataset.max_bucket_reso", 9000, "from 64 to 8192"),
        ("dataset.bucket_reso_steps", 4, "from 8 to 512"),
        ("dataset.bucket_reso_steps", 12, "nearest allowed values are 8 and 16"),
        ("dataset.cache_latents", "ram", '"memory", "disk", "off"'),
        ("dataset.caption_extension", "", "file extension"),
        ("dataset.caption_extension", "a/b", "file extension"),
        ("dataset.trigger_word", 5, "expected text in quotes"),
        ("network.rank", 0, "from 1 to 1024"),
        ("network.rank", 1025, "from 1 to 1024"),
        ("network.alpha", 0, "greater than 0, or null"),
        ("network.dropout", 1.0, "up to but not including 1"),
        ("training.epochs", 0, "of at least 1"),
        ("training.max_steps", 0, "of at least 1, or null"),
        ("training.batch_size", 65, "from 1 to 64"),
        ("training.resolution", 32, "from 64 to 4096"),
        ("training.resolution", 8192, "from 64 to 4096"),
        ("training.resolution", 500, "nearest allowed values are 496 and 504"),
        ("training.resolution", [512], "[width, height]"),
        ("training.resolution", [512, 700], "height: "),
        ("training.learning_rate", 0, "greater than 0"),
        ("training.text_encoder_lr", -1e-5, "greater than 0, or null"),
        ("training.optimizer", "Adam", '"AdamW", "AdamW8bit", "Prodigy", "Adafactor"'),
        ("training.optimizer_args", [1], "table of optimizer settings"),
        ("training.optimizer_args", {"betas": {"a": 1}}, "betas: expected a number"),
        ("training.optimizer_args", {"lr": 1.0}, "training.learning_rate"),
        ("training.lr_scheduler", "cosin", 'did you mean "cosine"'),
        ("training.lr_warmup_steps", 1.5, "fraction"),
        ("training.lr_warmup_steps", -1, "0 or more"),
        ("training.lr_scheduler_num_cycles", 0, "from 1 to 1000"),
        ("training.lr_scheduler_power", 0, "greater than 0"),
        ("training.mixed_precision", "fp32", 'use "no" for full 32-bit'),
        ("training.seed", -1, "from 0 to 4294967295"),
        ("training.gradient_accumulation_steps", 0, "from 1 to 1024"),
        ("training.gradient_accumulation_steps", 1025, "from 1 to 1024"),
        ("training.max_grad_norm", -1, "of at least 0"),
        ("training.attention", "flash", '"sdpa", "xformers"'),
        ("training.noise_offset", 2, "from 0 to 1"),
        ("training.min_snr_gamma", 0, "greater than 0, or null"),
        ("training.device", "gpu", '"cuda:N"'),
        ("training.device", "cuda:x", '"cuda:N"'),
        ("output.save_every_epochs", -1, "of at least 0"),
        ("output.save_precision", "fp8", '"fp16", "bf16", "fp32"'),
        ("output.preferred_weight", 2.5, "from 0 to 2"),
        ("samples.every_epochs", -1, "of at least 0"),
        ("samples.sampler", "plms", '"euler_a", "euler", "ddim", "dpmpp_2m"'),
        ("samples.prompts", "a cat", "expected a list"),
        ("training.learning_rate", float("nan"), "expected a number"),
        ("training.learning_rate", float("inf"), "expected a number"),
    ],
)
def test_range_and_choice_checks(dotted, value, expected):
    path, message = one_error(with_field(dotted, value))
    assert path == dotted
    assert expected in message


@pytest.mark.parametrize(
    "dotted, value, index, expected",
    [
        ("seed", -1, "seed", "from 0 to 4294967295"),
        ("width", 60, "width", "from 64 to 4096"),
        ("height", 100, "height", "multiple of 8"),
        ("cfg_scale", 0.5, "cfg_scale", "from 1 to 30"),
        ("steps", 151, "steps", "from 1 to 150"),
        ("negative_prompt", None, "negative_prompt", "expected text"),
    ],
)
def test_sample_prompt_checks(dotted, value, index, expected):
    data = minimal(samples={"prompts": ["ok", {"prompt": "p", dotted: value}]})
    path, message = one_error(data)
    assert path == f"samples.prompts[1].{index}"
    assert expected in message


def test_missing_sample_prompt_text_is_required():
    path, message = one_error(minimal(samples={"prompts": [{"negative_prompt": "x"}]}))
    assert path == "samples.prompts[0].prompt" and "is required" in message


@pytest.mark.parametrize(
    "dotted, value, stored",
    [
        ("training.epochs", 10.0, 10),
        ("training.learning_rate", 1, 1.0),
        ("training.resolution", [768, 512.0], (768, 512)),
        ("training.resolution", 4096, 4096),
        ("training.lr_warmup_steps", 100, 100),
        ("training.lr_warmup_steps", 100.0, 100),
        ("training.lr_warmup_steps", 0.05, 0.05),
        ("training.max_grad_norm", 0, 0.0),
        ("training.seed", 0, 0),
        ("training.min_snr_gamma", 5, 5.0),
        ("training.max_steps", 500, 500),
        ("network.alpha", None, None),
        ("network.alpha", 0.5, 0.5),
        ("dataset.caption_dropout", 1, 1.0),
        ("output.save_every_epochs", 0, 0),
        ("output.preferred_weight", 0, 0.0),
        ("samples.every_epochs", 0, 0),
    ],
)
def test_accepted_edge_values(dotted, value, stored):
    spec = spec_from_dict(with_field(dotted, value))
    section, name = dotted.split(".")
    got = getattr(getattr(spec, section), name)
    assert got == stored and type(got) is type(stored)


@pytest.mark.parametrize(
    "dotted",
    [
        "dataset.prepend_trigger_word",
        "dataset.shuffle_captions",
        "dataset.flip_aug",
        "dataset.enable_bucket",
        "dataset.bucket_no_upscale",
        "network.train_unet",
        "network.train_text_encoder",
        "training.gradient_checkpointing",
        "output.save_state_on_cancel",
        "output.save_lora_on_cancel",
    ],
)
@pytest.mark.parametrize("value", [0, 1, "true", "false", None])
def test_bool_fields_only_accept_bools(dotted, value):
    path, message = one_error(with_field(dotted, value))
    assert path == dotted and message.startswith("expected true or false")


def test_bool_hints():
    assert "not 1 or 0" in one_error(with_field("dataset.flip_aug", 1))[1]
    assert "without quotes" in one_error(with_field("dataset.flip_aug", "true"))[1]


@pytest.mark.parametrize("value", [True, "10", 10.5, None, [10]])
def test_int_fields_are_strict(value):
    path, message = one_error(with_field("training.epochs", value))
    assert path == "training.epochs" and message.startswith("expected a whole number")


def test_numbers_in_quotes_get_a_hint():
    message = one_error(with_field("training.learning_rate", "1e-4"))[1]
    assert message == 'expected a number greater than 0, got "1e-4" (write the number without quotes)'


def test_strings_must_be_strings():
    for dotted in ("name", "dataset.path", "output.dir", "training.optimizer", "training.device"):
        path, message = one_error(with_field(dotted, 12))
        assert path == dotted and "got 12" in message


@pytest.mark.parametrize(
    "dotted, value, stored",
    [
        ("training.optimizer", "adamw8bit", "AdamW8bit"),
        ("training.optimizer", "PRODIGY", "Prodigy"),
        ("training.optimizer", "adafactor", "Adafactor"),
        ("training.lr_scheduler", "Cosine-With-Restarts", "cosine_with_restarts"),
        ("training.mixed_precision", "BF16", "bf16"),
        ("training.device", " CUDA:1 ", "cuda:1"),
        ("samples.sampler", "Euler a", "euler_a"),
        ("samples.sampler", "DPM++ 2M", "dpmpp_2m"),
        ("model.model_type", "SDXL", "sdxl"),
        ("model.vae", "", "none"),
        ("model.vae", None, "none"),
        ("model.vae", "None", "none"),
        ("model.checkpoint", '"C:\\models\\a b.safetensors"', "C:\\models\\a b.safetensors"),
        ("model.checkpoint", "Current", "current"),
        ("dataset.caption_extension", "caption", ".caption"),
        ("dataset.trigger_word", " sks ", "sks"),
        ("dataset.cache_dir", "", None),
        ("mode", "LoRA", "lora"),
    ],
)
def test_values_are_normalised(dotted, value, stored):
    spec = spec_from_dict(with_field(dotted, value))
    node = spec
    for part in dotted.split("."):
        node = getattr(node, part)
    assert node == stored


def test_prompt_may_be_plain_text():
    spec = spec_from_dict(minimal(samples={"prompts": ["a cat"]}))
    assert spec.samples.prompts == (SamplePrompt(prompt="a cat"),)


# ---------------------------------------------------------------- spec_version, mode, name


@pytest.mark.parametrize("value", [2, 0, "1", True])
def test_spec_version(value):
    path, message = one_error(with_field("spec_version", value))
    assert path == "spec_version"
    if not isinstance(value, (str, bool)):
        assert message.startswith("this trainer understands spec_version 1")


def test_spec_version_defaults_to_1():
    assert spec_from_dict(minimal()).spec_version == 1


@pytest.mark.parametrize("mode", ["dreambooth", "DreamBooth", "dreambooth-lora"])
def test_every_mode_is_available(mode):
    data = with_field("mode", mode)
    data["dreambooth"] = {"class_prompt": "a photo of a dog"}
    assert spec_from_dict(data).mode == mode.lower()


def test_unknown_mode():
    path, message = one_error(with_field("mode", "textual_inversion"))
    assert path == "mode" and '"lora"' in message


@pytest.mark.parametrize(
    "name",
    ["mychar", "My Char v2", "a-b_c.d (1)", "キャラ", "Zoë", "हिन्दी", "x" * 100, "v1.5"],
)
def test_good_names(name):
    assert spec_from_dict(with_field("name", name)).name == name


@pytest.mark.parametrize(
    "name, expected",
    [
        ("", "is required"),
        ("   ", "is required"),
        ("x" * 101, "at most 100"),
        ("a/b", "only a file name"),
        ("a\\b", "only a file name"),
        ("../up", "only a file name"),
        (".hidden", "starts with a dot"),
        ("a:b", '":"'),
        ("what?", '"?"'),
        ("tab\there", "cannot be used"),
        ("emoji😀", "cannot be used"),
        ("trailing ", "Windows cannot save"),
        (" leading", "Windows cannot save"),
        ("dot.", "Windows cannot save"),
        ("CON", "reserved device name"),
        ("nul.v2", "reserved device name"),
    ],
)
def test_bad_names(name, expected):
    path, message = one_error(with_field("name", name))
    assert path == "name" and expected in message


# ---------------------------------------------------------------- rules across fields


def test_nothing_to_train():
    path, message = one_error(minimal(network={"train_unet": False, "train_text_encoder": False}))
    assert path == "network.train_unet" and "both false" in message
    spec_from_dict(minimal(network={"train_unet": False, "train_text_encoder": True}))


def test_bucket_min_above_max():
    path, message = one_error(minimal(dataset={"min_bucket_reso": 1024, "max_bucket_reso": 512}))
    assert path == "dataset.min_bucket_reso" and "max_bucket_reso" in message


def test_sdxl_and_clip_skip():
    path, message = one_error(minimal(model={"model_type": "sdxl", "clip_skip": 2}))
    assert path == "model.clip_skip" and "SDXL" in message
    spec_from_dict(minimal(model={"model_type": "sd1", "clip_skip": 2}))


def test_sd2v_with_epsilon():
    path, _ = one_error(minimal(model={"model_type": "sd2-v", "prediction_type": "epsilon"}))
    assert path == "model.prediction_type"


def test_trigger_placeholder_needs_a_trigger_word():
    path, message = one_error(minimal(samples={"prompts": ["ok", "{trigger} photo"]}))
    assert path == "samples.prompts[1].prompt" and "dataset.trigger_word" in message
    spec_from_dict(minimal(dataset={"trigger_word": "sks"}, samples={"prompts": ["{trigger} photo"]}))


def test_prepend_trigger_needs_a_trigger_word():
    path, _ = one_error(minimal(dataset={"prepend_trigger_word": True}))
    assert path == "dataset.prepend_trigger_word"


# ---------------------------------------------------------------- the dreambooth section


@pytest.fixture()
def dreambooth_modes():
    """Kept as a marker of the tests that use the DreamBooth modes (all modes are available now)."""
    assert schema.AVAILABLE_MODES == schema.MODES


def test_dreambooth_defaults():
    spec = spec_from_dict(minimal())
    assert spec.dreambooth == DreamBoothSpec()
    db = spec.dreambooth
    assert (db.instance_prompt, db.class_prompt, db.class_negative_prompt, db.class_data) == ("", "", "", "")
    assert (db.num_class_images, db.prior_loss_weight, db.prior) == (100, 1.0, "class-images")
    assert (db.class_sampler, db.class_steps, db.class_cfg_scale) == ("euler_a", 30, 7.0)
    assert default_spec_dict()["dreambooth"] == {
        "instance_prompt": "",
        "class_prompt": "",
        "class_negative_prompt": "",
        "num_class_images": 100,
        "class_data": "",
        "prior_loss_weight": 1.0,
        "prior": "class-images",
        "class_sampler": "euler_a",
        "class_steps": 30,
        "class_cfg_scale": 7.0,
    }
    assert [f.name for f in dataclasses.fields(JobSpec)][-3:] == ["samples", "dreambooth", "finetune"]


def test_dreambooth_round_trip():
    data = minimal(
        dataset={"trigger_word": "sks"},
        dreambooth={
            "instance_prompt": "a photo of {trigger} dog",
            "class_prompt": "a photo of a dog",
            "class_negative_prompt": "cartoon, blurry",
            "num_class_images": 0,
            "class_data": "C:/reg/dog",
            "prior_loss_weight": 0,
            "class_sampler": "ddim",
            "class_steps": 150,
            "class_cfg_scale": 30,
        },
    )
    spec = spec_from_dict(data)
    assert spec.dreambooth.num_class_images == 0 and spec.dreambooth.prior_loss_weight == 0.0
    assert type(spec.dreambooth.class_cfg_scale) is float
    again = spec_from_dict(json.loads(json.dumps(spec_to_dict(spec))))
    assert again == spec
    assert spec_to_dict(spec)["dreambooth"]["class_data"] == "C:/reg/dog"


def test_dreambooth_round_trip_with_a_dreambooth_mode(dreambooth_modes):
    data = minimal(dreambooth={"class_prompt": "a photo of a dog", "prior": "lora-off"})
    data["mode"] = "dreambooth-lora"
    spec = spec_from_dict(data)
    assert spec.mode == "dreambooth-lora" and spec.dreambooth.prior == "lora-off"
    assert spec_from_dict(spec_to_dict(spec)) == spec


def test_a_spec_without_the_dreambooth_section_still_loads(tmp_path):
    old = copy.deepcopy(EXAMPLE)
    assert "dreambooth" not in old
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    spec = spec_from_dict(load_spec_file(path))
    assert spec.spec_version == 1 and spec.dreambooth == DreamBoothSpec()
    toml = tmp_path / "old.toml"
    toml.write_text('name = "x"\n[model]\ncheckpoint = "m"\n[dataset]\npath = "d"\n[output]\ndir = "o"\n')
    assert spec_from_dict(load_spec_file(toml)).dreambooth == DreamBoothSpec()
    assert spec_from_dict(minimal(dreambooth={})).dreambooth == DreamBoothSpec()


@pytest.mark.parametrize(
    "dotted, value, expected",
    [
        ("dreambooth.instance_prompt", 5, "expected text in quotes"),
        ("dreambooth.instance_prompt", "x" * 1001, "at most 1000"),
        ("dreambooth.class_prompt", None, "expected text in quotes"),
        ("dreambooth.class_prompt", "x" * 1001, "at most 1000"),
        ("dreambooth.class_negative_prompt", ["a"], "expected text in quotes"),
        ("dreambooth.num_class_images", -1, "from 0 to 10000"),
        ("dreambooth.num_class_images", 10001, "from 0 to 10000"),
        ("dreambooth.num_class_images", 1.5, "a whole number"),
        ("dreambooth.num_class_images", "100", "without quotes"),
        ("dreambooth.class_data", 3, "expected a path in quotes"),
        ("dreambooth.prior_loss_weight", -0.1, "from 0 to 100"),
        ("dreambooth.prior_loss_weight", 101, "from 0 to 100"),
        ("dreambooth.prior_loss_weight", True, "expected a number"),
        ("dreambooth.prior", "class_image", 'did you mean "class-images"'),
        ("dreambooth.prior", "none", '"class-images", "lora-off"'),
        ("dreambooth.class_sampler", "plms", '"euler_a", "euler", "ddim", "dpmpp_2m"'),
        ("dreambooth.class_steps", 0, "from 1 to 150"),
        ("dreambooth.class_steps", 151, "from 1 to 150"),
        ("dreambooth.class_cfg_scale", 0.5, "from 1 to 30"),
        ("dreambooth.class_cfg_scale", 31, "from 1 to 30"),
    ],
)
def test_dreambooth_field_checks(dotted, value, expected):
    path, message = one_error(with_field(dotted, value))
    assert path == dotted
    assert expected in message


@pytest.mark.parametrize(
    "dotted, value, stored",
    [
        ("dreambooth.instance_prompt", "  a photo of sks dog ", "a photo of sks dog"),
        ("dreambooth.class_prompt", " a photo of a dog\n", "a photo of a dog"),
        ("dreambooth.class_negative_prompt", " blurry ", " blurry "),
        ("dreambooth.class_data", '"C:\\reg\\1_dog"', "C:\\reg\\1_dog"),
        ("dreambooth.class_data", "  ", ""),
        ("dreambooth.class_data", None, ""),
        ("dreambooth.prior", "Class Images", "class-images"),
        ("dreambooth.class_sampler", "Euler a", "euler_a"),
        ("dreambooth.class_sampler", "DPM++ 2M", "dpmpp_2m"),
        ("dreambooth.num_class_images", 100.0, 100),
        ("dreambooth.class_cfg_scale", 7, 7.0),
    ],
)
def test_dreambooth_values_are_normalised(dotted, value, stored):
    got = getattr(spec_from_dict(with_field(dotted, value)).dreambooth, dotted.split(".")[1])
    assert got == stored and type(got) is type(stored)


@pytest.mark.parametrize(
    "data, path, hint",
    [
        (
            minimal(dreambooth={"class_prompts": "x"}),
            "dreambooth.class_prompts",
            'did you mean "class_prompt"',
        ),
        (minimal(class_prompt="a dog"), "class_prompt", "dreambooth.class_prompt"),
        (minimal(training={"prior_loss_weight": 1}), "training.prior_loss_weight", "dreambooth"),
    ],
)
def test_dreambooth_unknown_fields(data, path, hint):
    got_path, message = one_error(data)
    assert got_path == path and hint in message


def test_dreambooth_section_must_be_a_table():
    path, message = one_error(minimal(dreambooth="a photo of a dog"))
    assert path == "dreambooth" and "table of settings" in message


def test_instance_prompt_trigger_needs_a_trigger_word():
    path, message = one_error(minimal(dreambooth={"instance_prompt": "a photo of {trigger} dog"}))
    assert path == "dreambooth.instance_prompt" and "dataset.trigger_word" in message
    spec = spec_from_dict(
        minimal(dataset={"trigger_word": "sks"}, dreambooth={"instance_prompt": "a photo of {trigger} dog"})
    )
    assert spec.dreambooth.instance_prompt == "a photo of {trigger} dog"  # replaced when it is used


def _dreambooth_problems(mode, **dreambooth) -> list[tuple[str, str]]:
    """The cross check itself, the way the loader calls it for the top level."""
    return schema._job_checks(
        {"mode": mode, "dataset": None, "samples": None, "dreambooth": DreamBoothSpec(**dreambooth)}
    )


@pytest.mark.parametrize("mode", ["dreambooth-lora", "dreambooth"])
def test_dreambooth_modes_need_a_class_prompt(mode):
    [(path, message)] = _dreambooth_problems(mode)
    assert path == "dreambooth.class_prompt"
    assert f'mode "{mode}"' in message and '"a photo of a dog"' in message
    assert _dreambooth_problems(mode, class_prompt="a photo of a dog") == []


def test_lora_off_only_with_dreambooth_lora():
    assert _dreambooth_problems("dreambooth-lora", class_prompt="a dog", prior="lora-off") == []
    [(path, message)] = _dreambooth_problems("dreambooth", class_prompt="a dog", prior="lora-off")
    assert path == "dreambooth.prior"
    assert '"dreambooth-lora"' in message and '"class-images"' in message
    # mode "lora" does not read the section: nothing in it is an error there
    assert _dreambooth_problems("lora", prior="lora-off") == []


def test_trigger_off_needs_the_trigger_word_not_a_class_prompt():
    data = minimal(dreambooth={"prior": "trigger-off"})
    data["mode"] = "dreambooth-lora"
    path, message = one_error(data)
    assert path == "dataset.trigger_word"
    assert '"trigger-off"' in message and '"ohwx"' in message
    data["dataset"]["trigger_word"] = "ohwx"
    spec = spec_from_dict(data)
    assert spec.dreambooth.prior == "trigger-off" and spec.dreambooth.class_prompt == ""
    # a full fine-tune has no LoRA to switch off
    [(path, message)] = _dreambooth_problems("dreambooth", class_prompt="a dog", prior="trigger-off")
    assert path == "dreambooth.prior" and message.startswith('"trigger-off" works only with mode')
    # without prior preservation the prior's kind does not matter
    data["dataset"]["trigger_word"] = ""
    data["dreambooth"]["prior_loss_weight"] = 0
    assert spec_from_dict(data).dreambooth.prior == "trigger-off"


def test_trigger_off_with_class_images_needs_the_trigger_word_and_a_class_prompt():
    data = minimal(dreambooth={"prior": "trigger-off+class-images", "class_prompt": "a shape"})
    data["mode"] = "dreambooth-lora"
    path, message = one_error(data)
    assert path == "dataset.trigger_word" and '"trigger-off+class-images"' in message
    data["dataset"]["trigger_word"] = "ohwx"
    assert spec_from_dict(data).dreambooth.prior == "trigger-off+class-images"
    # its class images are made from the class prompt (or captioned by it), as for "class-images"
    data["dreambooth"]["class_prompt"] = ""
    assert one_error(data)[0] == "dreambooth.class_prompt"
    [(path, message)] = _dreambooth_problems(
        "dreambooth", class_prompt="a dog", prior="trigger-off+class-images"
    )
    assert path == "dreambooth.prior" and message.startswith(
        '"trigger-off+class-images" works only with mode'
    )


def test_lora_mode_does_not_need_a_class_prompt():
    assert _dreambooth_problems("lora") == []
    assert spec_from_dict(minimal()).dreambooth.class_prompt == ""


def test_no_dreambooth_cross_check_when_the_mode_itself_is_wrong():
    path, _ = one_error(with_field("mode", "dreambooth-full"))
    assert path == "mode"
    assert schema._job_checks({"dreambooth": DreamBoothSpec(prior="lora-off")}) == []
    assert schema._job_checks({"mode": "dreambooth", "dreambooth": None}) == []


@pytest.mark.parametrize("mode", ["dreambooth-lora", "dreambooth"])
def test_no_class_prompt_needed_without_prior_preservation(mode):
    assert _dreambooth_problems(mode, prior_loss_weight=0) == []


@pytest.mark.parametrize("mode", ["dreambooth-lora", "dreambooth"])
def test_dreambooth_cross_checks_fire_once_the_modes_are_available(dreambooth_modes, mode):
    data = minimal()
    data["mode"] = mode
    path, message = one_error(data)
    assert path == "dreambooth.class_prompt" and "is empty" in message
    data["dreambooth"] = {"class_prompt": "a photo of a dog"}
    assert spec_from_dict(data).mode == mode
    data["dreambooth"]["prior"] = "lora-off"
    if mode == "dreambooth":
        assert one_error(data)[0] == "dreambooth.prior"
    else:
        assert spec_from_dict(data).dreambooth.prior == "lora-off"


def test_lora_off_with_mode_lora_is_ignored_like_the_rest_of_the_section():
    assert spec_from_dict(minimal(dreambooth={"prior": "lora-off"})).dreambooth.prior == "lora-off"


def test_all_dreambooth_problems_are_reported_together(dreambooth_modes):
    data = minimal(dreambooth={"prior": "lora-off", "class_steps": 0})
    data["mode"] = "dreambooth"
    # a field that fails its own check leaves the section out of the cross checks (as for other tables)
    assert [p for p, _ in errors_of(data)] == ["dreambooth.class_steps"]
    data["dreambooth"]["class_steps"] = 20
    assert [p for p, _ in errors_of(data)] == ["dreambooth.class_prompt", "dreambooth.prior"]


# ---------------------------------------------------------------- files


def test_load_json_and_toml(tmp_path):
    js = tmp_path / "job.json"
    js.write_text(json.dumps(EXAMPLE), encoding="utf-8")
    assert load_spec_file(js) == EXAMPLE
    toml = tmp_path / "job.toml"
    toml.write_text(
        "name = \"mychar\"\n[model]\ncheckpoint = 'C:\\m\\base.safetensors'\n"
        '[dataset]\npath = "d"\n[output]\ndir = "o"\n[training]\nresolution = [512, 768]\n'
        '[[samples.prompts]]\nprompt = "{trigger}"\n[dataset.x]\n',
        encoding="utf-8",
    )
    data = load_spec_file(str(toml))
    assert data["model"]["checkpoint"] == "C:\\m\\base.safetensors"
    assert data["samples"]["prompts"] == [{"prompt": "{trigger}"}]
    errors = errors_of(data)
    assert [p for p, _ in errors] == ["dataset.x"]


def test_json_with_bom_loads(tmp_path):
    path = tmp_path / "job.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(minimal()).encode())
    assert spec_from_dict(load_spec_file(path)).name == "t"


def test_json_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "job.json"
    path.write_text('{\n  "name": "x",\n  "training": {"epochs": 3,}\n}\n', encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    [(where, message)] = info.value.errors
    assert where == str(path)
    assert message.startswith("not valid JSON at line 3, column 28:")
    assert "comma" in message


def test_json_windows_path_hint(tmp_path):
    path = tmp_path / "job.json"
    path.write_text('{"model": {"checkpoint": "C:\\models\\x.safetensors"}}', encoding="utf-8")
    message = str(_load_error(path))
    assert "line 1" in message and "C:/models" in message


def test_json_duplicate_key(tmp_path):
    path = tmp_path / "job.json"
    path.write_text('{"training": {"epochs": 3, "epochs": 4}}', encoding="utf-8")
    assert '"epochs" appears twice' in str(_load_error(path))


def test_toml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('name = "x"\n[training]\nepochs = 3\nlearning_rate 1e-4\n', encoding="utf-8")
    err = _load_error(path)
    [(where, message)] = err.errors
    assert where == str(path)
    assert message.startswith("not valid TOML at line 4, column ")
    assert "(at line" not in message


def test_toml_null_and_backslash_hints(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text("[training]\nmax_steps = null\n", encoding="utf-8")
    assert "TOML has no null" in str(_load_error(path))
    path.write_text('[model]\ncheckpoint = "C:\\models\\x.safetensors"\n', encoding="utf-8")
    message = str(_load_error(path))
    assert "line 2" in message and "single quotes" in message


def test_toml_error_at_end_of_document(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('name = "x"\nepochs = ', encoding="utf-8")
    assert "at line 2, column" in str(_load_error(path))


def test_toml_without_tomllib_or_tomli(tmp_path, monkeypatch):
    path = tmp_path / "job.toml"
    path.write_text('name = "x"\n', encoding="utf-8")
    monkeypatch.setattr(spec_load, "_toml", None)
    assert "pip install tomli" in str(_load_error(path))


@pytest.mark.parametrize(
    "filename, content, expected",
    [
        ("job.yaml", "name: x", 'unsupported file type ".yaml"'),
        ("job", "{}", "unsupported file type"),
        ("missing.json", None, "file not found"),
        ("list.json", "[1, 2]", "one JSON object"),
        ("bad.json", b"\xff\xfe\x00", "UTF-8"),
    ],
)
def test_file_problems(tmp_path, filename, content, expected):
    path = tmp_path / filename
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    err = _load_error(path)
    assert err.errors[0][0] == str(path) and expected in err.errors[0][1]


def test_folder_instead_of_file(tmp_path):
    folder = tmp_path / "spec.json"
    folder.mkdir()
    assert "folder" in str(_load_error(folder))


def _load_error(path) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    return info.value


# ---------------------------------------------------------------- overrides


def test_overrides_set_nested_values_and_copy():
    data = minimal(training={"epochs": 10})
    before = copy.deepcopy(data)
    out = apply_overrides(
        data, {"training.epochs": 3, "network.rank": 8, "name": "new", "samples.prompts": ["a"]}
    )
    assert data == before
    assert out["training"]["epochs"] == 3 and out["network"] == {"rank": 8} and out["name"] == "new"
    spec = spec_from_dict(out)
    assert (spec.training.epochs, spec.network.rank, spec.samples.prompts[0].prompt) == (3, 8, "a")


def test_override_replaces_null_section():
    out = apply_overrides({"training": None}, {"training.seed": 1})
    assert out == {"training": {"seed": 1}}


def test_override_unknown_paths_are_all_reported():
    with pytest.raises(SpecError) as info:
        apply_overrides(
            minimal(), {"training.epoch": 3, "epochs": 2, "training.nothing_like_it": 1, "name": "ok"}
        )
    errors = dict(info.value.errors)
    assert set(errors) == {"training.epoch", "epochs", "training.nothing_like_it"}
    assert '"training.epochs"' in errors["training.epoch"]
    assert '"training.epochs"' in errors["epochs"]
    assert "docs/job-spec.md" in errors["training.nothing_like_it"]


def test_override_into_a_non_table_section():
    with pytest.raises(SpecError) as info:
        apply_overrides({"training": 5}, {"training.epochs": 1})
    assert info.value.errors[0][0] == "training"


def test_overridden_values_are_validated_later():
    data = apply_overrides(minimal(), {"training.epochs": -5})
    assert one_error(data)[0] == "training.epochs"


# ---------------------------------------------------------------- CLI flags


REQUIRED_FLAGS = {
    "--model": "model.checkpoint",
    "--vae": "model.vae",
    "--data": "dataset.path",
    "--trigger-word": "dataset.trigger_word",
    "--name": "name",
    "--output-dir": "output.dir",
    "--epochs": "training.epochs",
    "--steps": "training.max_steps",
    "--rank": "network.rank",
    "--alpha": "network.alpha",
    "--resolution": "training.resolution",
    "--batch-size": "training.batch_size",
    "--lr": "training.learning_rate",
    "--save-every-epochs": "output.save_every_epochs",
    "--device": "training.device",
    "--seed": "training.seed",
    "--optimizer": "training.optimizer",
    "--lr-scheduler": "training.lr_scheduler",
    "--mixed-precision": "training.mixed_precision",
    "--train-text-encoder": "network.train_text_encoder",
    "--learn-trigger": "network.learn_trigger",
    "--trigger-vectors": "network.trigger_vectors",
    "--text-encoder-lr": "training.text_encoder_lr",
    "--gradient-checkpointing": "training.gradient_checkpointing",
    "--model-type": "model.model_type",
    "--sample-every-epochs": "samples.every_epochs",
    "--save-precision": "output.save_precision",
    "--mode": "mode",
    "--instance-prompt": "dreambooth.instance_prompt",
    "--class-prompt": "dreambooth.class_prompt",
    "--class-negative-prompt": "dreambooth.class_negative_prompt",
    "--num-class-images": "dreambooth.num_class_images",
    "--class-data": "dreambooth.class_data",
    "--prior-loss-weight": "dreambooth.prior_loss_weight",
    "--prior": "dreambooth.prior",
}


def test_cli_flags_cover_the_contract():
    table = {flag: (dotted, kind, help_text) for flag, dotted, kind, help_text in CLI_FLAGS}
    assert len(table) == len(CLI_FLAGS)
    for flag, dotted in REQUIRED_FLAGS.items():
        assert table[flag][0] == dotted
    assert table["--train-text-encoder"][1] is bool and table["--gradient-checkpointing"][1] is bool
    paths = set(field_paths())
    for flag, (dotted, kind, help_text) in table.items():
        assert dotted in paths, flag
        assert callable(kind) and help_text and "%" not in help_text  # argparse formats help with %
    assert "(default: 10)" in table["--epochs"][2] and "(default: off)" in table["--train-text-encoder"][2]


def _cli_parser() -> argparse.ArgumentParser:
    """Built the way lib_trainer/cli.py builds it (bool flags get --no-... too)."""
    parser = argparse.ArgumentParser()
    for flag, dotted, kind, help_text in CLI_FLAGS:
        if kind is bool:
            parser.add_argument(
                flag, dest=dotted, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(flag, dest=dotted, type=kind, default=None, help=help_text)
    return parser


def test_cli_flags_feed_overrides():
    args = _cli_parser().parse_args(
        [
            "--name",
            "cli",
            "--model",
            "m.safetensors",
            "--data",
            "d",
            "--output-dir",
            "o",
            "--epochs",
            "3",
            "--resolution",
            "512x768",
            "--lr",
            "2e-4",
            "--alpha",
            "4",
            "--train-text-encoder",
            "--no-gradient-checkpointing",
            "--optimizer",
            "adamw8bit",
            "--lr-warmup",
            "0.1",
            "--device",
            "cuda:0",
        ]
    )
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    spec = spec_from_dict(apply_overrides({}, overrides))
    assert spec.name == "cli" and spec.training.epochs == 3 and spec.training.resolution == (512, 768)
    assert spec.training.learning_rate == 2e-4 and spec.network.alpha == 4.0
    assert spec.network.train_text_encoder is True and spec.training.gradient_checkpointing is False
    assert spec.training.optimizer == "AdamW8bit" and spec.training.lr_warmup_steps == 0.1
    assert _cli_parser().parse_args(["--resolution", "640"]).__dict__["training.resolution"] == 640
    assert _cli_parser().parse_args(["--lr-warmup", "50"]).__dict__["training.lr_warmup_steps"] == 50
    _cli_parser().format_help()  # help texts must survive argparse's % formatting


def test_cli_flags_set_the_dreambooth_section():
    table = {flag: kind for flag, _, kind, _ in CLI_FLAGS}
    assert table["--num-class-images"] is int and table["--prior-loss-weight"] is float
    args = _cli_parser().parse_args(
        [
            "--instance-prompt",
            "a photo of {trigger} dog",
            "--class-prompt",
            " a photo of a dog ",
            "--class-negative-prompt",
            "cartoon",
            "--num-class-images",
            "200",
            "--class-data",
            "reg/dog",
            "--prior-loss-weight",
            "0.5",
            "--prior",
            "Class Images",
        ]
    )
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    from_file = minimal(
        dataset={"trigger_word": "sks"}, dreambooth={"class_prompt": "a dog", "class_steps": 20}
    )
    spec = spec_from_dict(apply_overrides(from_file, overrides))
    assert spec.dreambooth == DreamBoothSpec(
        instance_prompt="a photo of {trigger} dog",
        class_prompt="a photo of a dog",
        class_negative_prompt="cartoon",
        num_class_images=200,
        class_data="reg/dog",
        prior_loss_weight=0.5,
        prior="class-images",
        class_steps=20,  # from the file: no flag touches it
    )
    assert "(default: 100)" in dict((f, h) for f, _, _, h in CLI_FLAGS)["--num-class-images"]


def test_cli_bad_resolution_is_a_clear_argparse_error(capsys):
    with pytest.raises(SystemExit):
        _cli_parser().parse_args(["--resolution", "big"])
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


# ---------------------------------------------------------------- docs/job-spec.md


def _documented_rows() -> dict[str, list[str]]:
    rows = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        found = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if found:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert found.group(1) not in rows, f"documented twice: {found.group(1)}"
            rows[found.group(1)] = cells
    return rows


def _dataclass_fields() -> dict[str, dataclasses.Field]:
    out = {}
    for f in dataclasses.fields(JobSpec):
        if "section" not in f.metadata:
            out[f.name] = f
            continue
        for g in dataclasses.fields(f.metadata["section"]):
            out[f"{f.name}.{g.name}"] = g
            if "items" in g.metadata:
                for h in dataclasses.fields(g.metadata["items"]):
                    out[f"{f.name}.{g.name}[].{h.name}"] = h
    return out


def test_docs_list_exactly_the_dataclass_fields():
    assert set(_documented_rows()) == set(_dataclass_fields())


def test_docs_defaults_match_the_code():
    fields = _dataclass_fields()
    for dotted, cells in _documented_rows().items():
        f = fields[dotted]
        default_cell = cells[2]
        if f.metadata.get("required"):
            assert default_cell == "*required*", dotted
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        written = json.loads(default_cell.strip("`"))
        assert written == json.loads(json.dumps(default)), dotted


def _code_block(language: str) -> str:
    found = re.search(rf"```{language}\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    assert found, language
    return found.group(1)


def test_docs_examples_validate_and_agree(tmp_path):
    js, toml = tmp_path / "a.json", tmp_path / "a.toml"
    js.write_text(_code_block("json"), encoding="utf-8")
    toml.write_text(_code_block("toml"), encoding="utf-8")
    from_json = spec_to_dict(spec_from_dict(load_spec_file(js)))
    from_toml = spec_to_dict(spec_from_dict(load_spec_file(toml)))
    for section, key in (("model", "checkpoint"), ("dataset", "path"), ("output", "dir")):
        from_toml[section][key] = from_toml[section][key].replace("\\", "/")
    assert from_json == from_toml
    assert set(load_spec_file(js)) == {f.name for f in dataclasses.fields(JobSpec)}


# ---------------------------------------------------------------- stays light


def test_importing_the_spec_does_not_import_torch():
    code = "import sys, lib_trainer.spec; assert 'torch' not in sys.modules, 'torch was imported'"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_readme_mentions_every_field():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for dotted in _dataclass_fields():
        name = dotted.split("[].")[-1]
        assert f"`{dotted if '[]' not in dotted else name}`" in readme, dotted


# ---------------------------------------------------------------- the finetune section (mode "dreambooth")


def test_finetune_defaults_and_round_trip():
    spec = spec_from_dict(minimal())
    assert spec.finetune == FineTuneSpec()
    assert default_spec_dict()["finetune"] == {
        "ema": False,
        "ema_decay": 0.9999,
        "extract_lora_rank": 0,
        "lora_dir": "",
    }
    data = minimal(
        mode="dreambooth",
        dreambooth={"class_prompt": "a dog"},
        finetune={"ema": True, "ema_decay": 0.999, "extract_lora_rank": 32, "lora_dir": "models/Lora"},
    )
    spec = spec_from_dict(data)
    assert spec.finetune == FineTuneSpec(True, 0.999, 32, "models/Lora")
    assert spec_from_dict(json.loads(json.dumps(spec_to_dict(spec)))) == spec


@pytest.mark.parametrize(
    "dotted, value, expected",
    [
        ("finetune.ema", "yes", "true or false"),
        ("finetune.ema_decay", 1, "below 1"),
        ("finetune.ema_decay", 0, "greater than 0"),
        ("finetune.extract_lora_rank", -1, "from 0 to 1024"),
        ("finetune.extract_lora_rank", 1025, "from 0 to 1024"),
        ("finetune.lora_dir", 5, "expected a path in quotes"),
    ],
)
def test_finetune_field_checks(dotted, value, expected):
    path, message = one_error(with_field(dotted, value))
    assert path == dotted
    assert expected in message


def test_extracting_a_lora_needs_a_lora_folder():
    data = minimal(
        mode="dreambooth", dreambooth={"class_prompt": "a dog"}, finetune={"extract_lora_rank": 16}
    )
    path, message = one_error(data)
    assert path == "finetune.lora_dir" and "extract_lora_rank is 16" in message and "models/Lora" in message
    data["finetune"]["lora_dir"] = "models/Lora"
    assert spec_from_dict(data).finetune.extract_lora_rank == 16
    # other modes do not read the section
    data = minimal(finetune={"extract_lora_rank": 16})
    assert spec_from_dict(data).finetune.lora_dir == ""
