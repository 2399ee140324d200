"""The command line as a user runs it: separate processes, a stop file / signal, resume, inspect."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import base_spec
from safetensors import safe_open

from lib_trainer.cli import main
from lib_trainer.train.events import read_events

ROOT = Path(__file__).resolve().parent.parent


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "lib_trainer", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_for_event(job: Path, kind: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(e["type"] == kind for e in read_events(job / "events.jsonl")):
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read().decode(errors="replace"))
        time.sleep(0.1)
    raise AssertionError(f"no {kind} event within {timeout}s")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stop file", "SIGINT"])
def test_stop_then_resume_in_separate_processes(tmp_path, tiny_models, tiny_dataset, how):
    out = tmp_path / "Lora"
    spec = base_spec(
        tiny_models["sd1"], tiny_dataset, out, training={"epochs": 400}, output={"save_every_epochs": 0}
    )
    spec_path = tmp_path / "job.json"
    spec_path.write_text(json.dumps(spec))
    job = tmp_path / "job"
    proc = _start(["train", str(spec_path), "--job-dir", str(job)])
    _wait_for_event(job, "progress", proc)
    if how == "stop file":
        (job / "stop").write_text("")
    else:
        proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 3
    events = read_events(job / "events.jsonl")
    stopped = events[-1]
    assert stopped["type"] == "cancelled" and stopped["resumable"]
    assert Path(stopped["files"][0]).is_file()  # NAME-stepNNNNNNNN.safetensors
    assert (job / "log").read_text().count("stopped at step") == 1
    (job / "stop").unlink(missing_ok=True)

    # Resume and stop again quickly: the step count continues from where it stopped.
    proc = _start(["train", "--resume", str(job)])
    _wait_for_event(job, "info", proc)
    deadline = time.time() + 120
    while time.time() < deadline:
        progress = [
            e for e in read_events(job / "events.jsonl", since=stopped["seq"]) if e["type"] == "progress"
        ]
        if progress:
            break
        time.sleep(0.1)
    (job / "stop").write_text("")
    assert proc.wait(timeout=120) == 3
    assert progress[0]["step"] == stopped["step"] + 1
    assert read_events(job / "events.jsonl")[-1]["step"] > stopped["step"]


def test_tiny_model_and_inspect(tmp_path, capsys):
    path = tmp_path / "x.safetensors"
    assert main(["tiny-model", "--arch", "sdxl", str(path)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "checkpoint" and report["model_type"] == "sdxl"
    assert len(report["text_encoders"]) == 2


def test_inspect_a_trained_lora(tmp_path, tiny_models, tiny_dataset, capsys):
    out = tmp_path / "Lora"
    spec = base_spec(
        tiny_models["sd2"], tiny_dataset, out, training={"epochs": 1}, network={"train_text_encoder": True}
    )
    spec_path = tmp_path / "job.json"
    spec_path.write_text(json.dumps(spec))
    assert main(["train", str(spec_path), "--job-dir", str(tmp_path / "job"), "--quiet"]) == 0
    assert f"LoRA written to: {(out / 't.safetensors').resolve()}" in capsys.readouterr().out
    assert main(["inspect", str(out / "t.safetensors"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "lora"
    assert report["rank"] == 4 and report["alpha"] == 2.0
    with safe_open(str(out / "t.safetensors"), "pt") as f:
        assert report["keys"] == len(list(f.keys()))  # noqa: SIM118 - safe_open is not iterable
    assert report["modules"] * 3 == report["keys"]
    assert "sd2" in str(report["architecture"]).lower() or "v2" in str(report["architecture"]).lower()
    assert main(["inspect", str(out / "t.safetensors")]) == 0
    assert "ss_output_name" in capsys.readouterr().out


def test_flags_override_the_spec_file(tmp_path, tiny_models, tiny_dataset):
    out = tmp_path / "Lora"
    spec = base_spec(tiny_models["sd1"], tiny_dataset, out, training={"epochs": 5})
    spec_path = tmp_path / "job.toml"
    checkpoint, data = spec["model"]["checkpoint"], spec["dataset"]["path"]
    spec_path.write_text(
        f"spec_version = 1\nname = 'fromfile'\n[model]\ncheckpoint = '{checkpoint}'\n[dataset]\npath = '{data}'\n"
        "min_bucket_reso = 64\ncache_latents = 'memory'\n[training]\nresolution = 64\nepochs = 5\ndevice = 'cpu'\n"
        f"mixed_precision = 'no'\n[output]\ndir = '{out}'\n[samples]\nevery_epochs = 0\n"
    )
    job = tmp_path / "job"
    code = main(
        [
            "train",
            str(spec_path),
            "--job-dir",
            str(job),
            "--quiet",
            "--steps",
            "3",
            "--name",
            "flagged",
            "--rank",
            "2",
            "--alpha",
            "1",
            "--save-precision",
            "bf16",
        ]
    )
    assert code == 0
    saved = json.loads((job / "job.json").read_text())
    assert saved["name"] == "flagged" and saved["training"]["max_steps"] == 3
    with safe_open(str(out / "flagged.safetensors"), "pt") as f:
        meta = f.metadata()
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    assert meta["ss_steps"] == "3" and meta["ss_network_dim"] == "2"
    assert {str(d) for d in dtypes} == {"torch.bfloat16"}


def test_run_command_uses_the_job_folder(tmp_path, tiny_models, tiny_dataset, capsys):
    job = tmp_path / "job"
    job.mkdir()
    spec = base_spec(tiny_models["sd1"], tiny_dataset, tmp_path / "Lora", training={"max_steps": 2})
    (job / "job.json").write_text(json.dumps(spec))
    assert main(["run", str(job), "--quiet"]) == 0
    assert read_events(job / "events.jsonl")[-1]["type"] == "done"
    assert main(["run", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err


DREAMBOOTH_FLAGS = [
    "--mode",
    "lora",
    "--instance-prompt",
    "a photo of {trigger} dog",
    "--class-prompt",
    "a photo of a dog",
    "--class-negative-prompt",
    "cartoon",
    "--num-class-images",
    "200",
    "--class-data",
    "reg/dog",
    "--prior-loss-weight",
    "0.5",
    "--prior",
    "class-images",
]


def test_dreambooth_flags_override_the_spec_file(tmp_path):
    """The real train parser: the flags land in the dreambooth section over what the file says."""
    from lib_trainer.cli import _overrides, build_parser
    from lib_trainer.spec import apply_overrides, load_spec_file, spec_from_dict

    spec_path = tmp_path / "job.toml"
    spec_path.write_text(
        "name = 'x'\n[model]\ncheckpoint = 'm.safetensors'\n[dataset]\npath = 'd'\ntrigger_word = 'sks'\n"
        "[output]\ndir = 'o'\n[dreambooth]\nclass_prompt = 'a dog'\nnum_class_images = 50\nclass_steps = 20\n"
    )
    args = build_parser().parse_args(["train", str(spec_path), *DREAMBOOTH_FLAGS])
    spec = spec_from_dict(apply_overrides(load_spec_file(args.spec), _overrides(args)))
    db = spec.dreambooth
    assert spec.mode == "lora"
    assert (db.instance_prompt, db.class_prompt, db.class_negative_prompt) == (
        "a photo of {trigger} dog",
        "a photo of a dog",
        "cartoon",
    )
    assert (db.num_class_images, db.class_data, db.prior_loss_weight, db.prior) == (
        200,
        "reg/dog",
        0.5,
        "class-images",
    )
    assert db.class_steps == 20  # no flag for it: the file's value stays


def test_dreambooth_flags_are_checked_before_training(tmp_path, capsys):
    code = main(
        ["train", "--name", "x", "--model", "m.safetensors", "--data", "d", "--prior", "lora-off"]
        + ["--job-dir", str(tmp_path / "job"), "--num-class-images", "-1"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "dreambooth.num_class_images: expected a whole number from 0 to 10000" in err
    assert not (tmp_path / "job").exists()
    job = ["--job-dir", str(tmp_path / "job2")]
    code = main(["train", "--name", "x", "--model", "m", "--data", "d", "--mode", "dreambooth-lora", *job])
    assert code == 2
    assert "dreambooth.class_prompt: is empty" in capsys.readouterr().err
    assert main(["train", "--name", "x", "--model", "m", "--data", "d", "--mode", "dreambooth", *job]) == 2
    assert 'dreambooth.class_prompt: is empty, but mode "dreambooth"' in capsys.readouterr().err
    full = ["--mode", "dreambooth", "--class-prompt", "a dog", "--extract-lora-rank", "8"]
    assert main(["train", "--name", "x", "--model", "m", "--data", "d", *full, *job]) == 2
    assert "finetune.lora_dir: is empty, but finetune.extract_lora_rank is 8" in capsys.readouterr().err
    assert not (tmp_path / "job2").exists()


def test_train_help_lists_the_dreambooth_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in DREAMBOOTH_FLAGS[::2]:
        assert flag in out, flag
