"""Training presets: built-ins that validate, a user store that survives broken files, and merging that
never touches the per-run fields (name, dataset, trigger word, model, output folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_trainer.spec import SpecError, default_spec_dict, spec_from_dict
from lib_trainer.webui.presets import (
    BUILTIN_DIR,
    BUILTIN_ORDER,
    Preset,
    PresetStore,
    apply_preset,
    default_builtin,
    fragment_from_spec,
    slugify,
)

BUILTIN_TITLES = [
    "SD1.5 · 6 GB VRAM",
    "SD1.5 · 8 GB VRAM",
    "SD1.5 · 12 GB+ VRAM",
    "SDXL · 12 GB VRAM",
    "SDXL · 16 GB VRAM",
    "SDXL · 24 GB+ VRAM",
    "SD1.5 · DreamBooth full fine-tune · 24 GB VRAM",
]


def _full_spec(tmp_path: Path) -> dict:
    spec = default_spec_dict()
    spec["name"] = "mychar"
    spec["model"]["checkpoint"] = str(tmp_path / "model.safetensors")
    spec["model"]["vae"] = str(tmp_path / "vae.safetensors")
    spec["dataset"]["path"] = str(tmp_path / "data")
    spec["dataset"]["trigger_word"] = "sks"
    spec["output"]["dir"] = str(tmp_path / "out")
    spec["dreambooth"]["class_prompt"] = "a photo of a dog"  # the user's own, as the trigger word
    return spec


@pytest.fixture
def store(tmp_path: Path) -> PresetStore:
    return PresetStore(tmp_path / "presets")


def test_builtins_listed_in_order(store: PresetStore) -> None:
    presets = store.list()
    assert [p.title for p in presets] == BUILTIN_TITLES
    assert all(p.builtin and p.description and p.path for p in presets)
    assert [Path(p.path).stem for p in presets] == list(BUILTIN_ORDER)
    assert store.problems == []


def test_default_builtin_is_the_first_of_the_models_family(store: PresetStore) -> None:
    presets = store.list()
    assert default_builtin(presets, sdxl=False).title == "SD1.5 · 6 GB VRAM"
    assert default_builtin(presets, sdxl=True).title == "SDXL · 12 GB VRAM"
    # a user preset is never the default, and with no built-in of the family the first built-in is
    user = Preset("SDXL mine", "", {}, builtin=False)
    only_sd15 = [user, *(p for p in presets if "SDXL" not in p.title)]
    assert default_builtin(only_sd15, sdxl=True).title == "SD1.5 · 6 GB VRAM"
    assert default_builtin([user], sdxl=True) is None


@pytest.mark.parametrize("stem", BUILTIN_ORDER)
def test_builtin_validates_on_a_complete_spec(tmp_path: Path, stem: str) -> None:
    data = json.loads((BUILTIN_DIR / f"{stem}.json").read_text(encoding="utf-8"))
    assert set(data) == {"title", "description", "spec"}
    assert fragment_from_spec(data["spec"]) == data["spec"]  # no per-run field, no spec_version
    spec = spec_from_dict(apply_preset(_full_spec(tmp_path), Preset(data["title"], "", data["spec"])))
    sdxl = stem.startswith("sdxl")
    assert spec.training.resolution == (1024 if sdxl else 512)
    if spec.mode == "dreambooth":  # the full fine-tune: no LoRA size, a fine-tune's learning rate
        assert stem == "sd15-dreambooth-24gb" and spec.training.learning_rate <= 5e-6
        assert spec.training.gradient_checkpointing and spec.training.optimizer == "AdamW8bit"
        assert spec.output.save_every_epochs == 0 and spec.dreambooth.prior == "class-images"
        return
    assert spec.mode == "lora"
    assert spec.network.alpha == spec.network.rank / 2
    assert spec.training.min_snr_gamma == 5.0
    if sdxl:
        assert not spec.network.train_text_encoder
    if stem in ("sd15-6gb", "sdxl-12gb"):
        assert spec.training.gradient_checkpointing and spec.training.optimizer == "AdamW8bit"
        assert spec.training.batch_size == 1


def test_save_list_get_delete(store: PresetStore, tmp_path: Path) -> None:
    spec = _full_spec(tmp_path)
    spec["training"]["optimizer"] = "adamw8bit"  # stored in the spec's own spelling
    spec["training"]["epochs"] = 4
    saved = store.save("  My  fast preset ", spec, description="quick tests")
    assert saved.title == "My fast preset" and not saved.builtin
    assert Path(saved.path).name == "my-fast-preset.json"
    assert saved.spec["training"]["optimizer"] == "AdamW8bit"
    assert "name" not in saved.spec and "spec_version" not in saved.spec
    assert "path" not in saved.spec["dataset"] and "trigger_word" not in saved.spec["dataset"]
    assert "checkpoint" not in saved.spec["model"] and "vae" not in saved.spec["model"]
    assert "dir" not in saved.spec["output"]
    assert saved.spec["mode"] == "lora"

    store.save("Another", {"network": {"rank": 8}})
    titles = [p.title for p in store.list()]
    assert titles == [*BUILTIN_TITLES, "Another", "My fast preset"]
    got = store.get("my fast preset")  # case does not matter
    assert got.spec["training"]["epochs"] == 4 and got.description == "quick tests"

    again = store.save("My fast preset", {"training": {"epochs": 2}})  # same title: replaced in place
    assert again.path == saved.path
    assert store.get("My fast preset").spec == {"training": {"epochs": 2}}
    assert len(list(store.user_dir.glob("*.json"))) == 2
    assert not list(store.user_dir.glob("*.tmp"))

    store.delete("My fast preset")
    assert not Path(saved.path).exists()
    with pytest.raises(KeyError, match="no preset called 'My fast preset'"):
        store.get("My fast preset")
    with pytest.raises(KeyError):
        store.delete("My fast preset")


def test_builtins_cannot_be_replaced_or_deleted(store: PresetStore) -> None:
    with pytest.raises(ValueError, match="pick another name"):
        store.save("sdxl · 12 gb vram", {"training": {"epochs": 3}})
    with pytest.raises(ValueError, match="built-in"):
        store.delete("SDXL · 12 GB VRAM")
    assert not store.user_dir.exists()


def test_invalid_settings_are_refused(store: PresetStore) -> None:
    with pytest.raises(SpecError) as err:
        store.save("bad", {"training": {"epochs": 0, "optimizr": "AdamW"}})
    fields = [path for path, _ in err.value.errors]
    assert "training.epochs" in fields and "training.optimizr" in fields
    with pytest.raises(ValueError, match="title"):
        store.save("   ", {"training": {"epochs": 3}})
    assert not store.user_dir.exists() or not list(store.user_dir.iterdir())


def test_trigger_prompts_and_same_slug(store: PresetStore) -> None:
    # {trigger} needs a trigger word, which a preset never stores: checked with a stand-in
    store.save("Prompts", {"samples": {"prompts": ["{trigger}, portrait"]}})
    assert store.get("Prompts").spec["samples"]["prompts"][0]["prompt"] == "{trigger}, portrait"
    a = store.save("Con", {"training": {"epochs": 3}})
    b = store.save("con!", {"training": {"epochs": 4}})
    assert Path(a.path).name == "con-preset.json" and Path(b.path).name == "con-preset-2.json"
    assert store.get("Con").spec["training"]["epochs"] == 3
    assert store.get("con!").spec["training"]["epochs"] == 4


def test_broken_user_files_are_skipped(store: PresetStore) -> None:
    store.save("Good", {"training": {"epochs": 3}})
    folder = store.user_dir
    (folder / "not-json.json").write_text("{oops", encoding="utf-8")
    (folder / "list.json").write_text("[1, 2]", encoding="utf-8")
    (folder / "no-title.json").write_text('{"spec": {}}', encoding="utf-8")
    (folder / "bad-value.json").write_text(
        '{"title": "Bad value", "spec": {"training": {"optimizer": "SGD"}}}', encoding="utf-8"
    )
    (folder / "clash.json").write_text('{"title": "SD1.5 · 6 GB VRAM", "spec": {}}', encoding="utf-8")
    (folder / "latin1.json").write_bytes(b'{"title": "caf\xe9", "spec": {}}')
    titles = [p.title for p in store.list()]
    assert titles == [*BUILTIN_TITLES, "Good"]
    assert len(store.problems) == 6
    joined = "\n".join(store.problems)
    for name in (
        "not-json.json",
        "list.json",
        "no-title.json",
        "bad-value.json",
        "clash.json",
        "latin1.json",
    ):
        assert name in joined
    assert "training.optimizer" in joined
    assert store.get("Good").spec == {"training": {"epochs": 3}}


def test_fragment_from_spec(tmp_path: Path) -> None:
    spec = _full_spec(tmp_path)
    fragment = fragment_from_spec(spec)
    assert "spec_version" not in fragment and "name" not in fragment and fragment["mode"] == "lora"
    assert "output" in fragment and "dir" not in fragment["output"]
    assert spec["name"] == "mychar"  # the input is not modified
    assert fragment_from_spec({"name": "x", "output": {"dir": "y"}}) == {}


def test_apply_preset_keeps_per_run_fields(tmp_path: Path) -> None:
    spec = _full_spec(tmp_path)
    spec["training"]["optimizer_args"] = {"weight_decay": 0.1, "eps": 1e-6}
    spec["samples"]["prompts"] = [{"prompt": "a"}, {"prompt": "b"}]
    hostile = {
        "name": "other",
        "spec_version": 9,
        "model": {"checkpoint": "x.safetensors", "vae": "current", "clip_skip": 2},
        "dataset": {"path": "/elsewhere", "trigger_word": "zzz", "flip_aug": True},
        "output": {"dir": "/tmp/x", "save_every_epochs": 3},
        "training": {"epochs": 3, "optimizer_args": {"weight_decay": 0.01}},
        "samples": {"prompts": ["c"]},
    }
    merged = apply_preset(spec, Preset("t", "", hostile))
    for section, key in [(None, "name"), ("model", "checkpoint"), ("model", "vae"), ("dataset", "path")]:
        assert (merged if section is None else merged[section])[key] == (
            spec if section is None else spec[section]
        )[key]
    assert merged["dataset"]["trigger_word"] == "sks" and merged["output"]["dir"] == spec["output"]["dir"]
    assert merged["spec_version"] == 1
    assert merged["model"]["clip_skip"] == 2 and merged["dataset"]["flip_aug"] is True
    assert merged["output"]["save_every_epochs"] == 3
    assert merged["training"]["epochs"] == 3 and merged["training"]["batch_size"] == 1  # others kept
    assert merged["training"]["optimizer_args"] == {"weight_decay": 0.01}  # replaced whole
    assert merged["samples"]["prompts"] == ["c"]  # lists replaced
    assert spec["training"]["epochs"] == 10  # the input is not modified
    spec_from_dict(merged)
    assert apply_preset({}, {"training": {"epochs": 2}}) == {"training": {"epochs": 2}}


def test_slugify() -> None:
    assert slugify("SD1.5 · 8 GB VRAM") == "sd1-5-8-gb-vram"
    assert slugify("Ünïcode_name!!") == "ünïcode-name"
    assert slugify("../..") == "preset"
    assert slugify("nul") == "nul-preset"
