"""Mistakes a user can make give the documented message, exit code 2, and write nothing to the output folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import base_spec
from PIL import Image

from lib_trainer.cli import main
from lib_trainer.train.events import read_events


def _write_spec(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(spec))
    return path


def _dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "data" / "3_thing"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (96, 96), (i * 100, 50, 50)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("thing, red", encoding="utf-8")
    return tmp_path / "data"


def _run(tmp_path: Path, spec: dict, capsys) -> tuple[int, str, list[dict]]:
    job = tmp_path / "job"
    code = main(["train", str(_write_spec(tmp_path, spec)), "--job-dir", str(job), "--quiet"])
    err = capsys.readouterr().err
    events = read_events(job / "events.jsonl")
    return code, err, events


def _assert_nothing_written(spec: dict) -> None:
    out = Path(spec["output"]["dir"])
    assert not out.exists() or not any(out.iterdir())


CASES = {
    "missing model": (
        lambda s, t: s["model"].update(checkpoint=str(t / "nope.safetensors")),
        "model.checkpoint",
        "not found",
    ),
    "wrong file type": (
        lambda s, t: s["model"].update(checkpoint=str(_text_file(t))),
        "model.checkpoint",
        "not a model file",
    ),
    "lora as model": (
        lambda s, t: s["model"].update(checkpoint=str(_lora_file(t))),
        "model.checkpoint",
        "LoRA",
    ),
    "empty dataset": (
        lambda s, t: s["dataset"].update(path=str(_empty_dir(t))),
        "dataset.path",
        "no training images found",
    ),
    "unreadable image": (
        lambda s, t: _corrupt_image(Path(s["dataset"]["path"])),
        "1.png",
        "could not be read",
    ),
    "non-utf8 caption": (lambda s, t: _latin1_caption(Path(s["dataset"]["path"])), "0.txt", "UTF-8"),
    "adamw8bit on cpu": (
        lambda s, t: s["training"].update(optimizer="AdamW8bit"),
        "training.optimizer",
        "GPU",
    ),
}


def _text_file(tmp: Path) -> Path:
    path = tmp / "model.txt"
    path.write_text("hello")
    return path


def _lora_file(tmp: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    path = tmp / "some_lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)}, str(path))
    return path


def _empty_dir(tmp: Path) -> Path:
    path = tmp / "empty"
    path.mkdir()
    (path / "notes.md").write_text("no images here")
    return path


def _corrupt_image(data: Path) -> None:
    (data / "3_thing" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")


def _latin1_caption(data: Path) -> None:
    (data / "3_thing" / "0.txt").write_bytes("caf\xe9, cr\xe8me".encode("latin-1"))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_reported_and_nothing_is_written(tmp_path, tiny_models, capsys, case):
    mutate, where, words = CASES[case]
    spec = base_spec(tiny_models["sd1"], _dataset(tmp_path), tmp_path / "Lora")
    mutate(spec, tmp_path)
    code, err, events = _run(tmp_path, spec, capsys)
    assert code == 2
    assert events and events[-1]["type"] == "error" and events[-1]["kind"] == "input"
    message = events[-1]["message"]
    assert where in message and words.lower() in message.lower(), message
    assert message in err
    _assert_nothing_written(spec)


def test_unknown_optimizer_is_a_spec_error(tmp_path, tiny_models, capsys):
    spec = base_spec(
        tiny_models["sd1"], _dataset(tmp_path), tmp_path / "Lora", training={"optimizer": "Lion9000"}
    )
    code, err, _ = _run(tmp_path, spec, capsys)
    assert code == 2
    assert "training.optimizer" in err and "AdamW" in err
    _assert_nothing_written(spec)


def test_unknown_field_is_named(tmp_path, tiny_models, capsys):
    spec = base_spec(tiny_models["sd1"], _dataset(tmp_path), tmp_path / "Lora")
    spec["training"]["learning_rat"] = 1e-4
    code, err, _ = _run(tmp_path, spec, capsys)
    assert code == 2 and "training.learning_rat" in err and "learning_rate" in err
