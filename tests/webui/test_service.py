"""The WebUI-side job service and GPU handoff, against an injected host object (no WebUI, no gradio).

The trainer is a small stand-in script (events like the real one), so these tests are fast and run in the
WebUI's stand-in Python (.venv-webui), which has no torch.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
from recording_host import GIB, RecordingHost

from lib_trainer.jobs import DONE, FAILED, RUNNING, JobManager
from lib_trainer.spec import SpecError
from lib_trainer.webui.compare import CompareRequest, latest_grid, read_settings
from lib_trainer.webui.handoff import (
    EXCLUSIVE,
    SHARED,
    FullFineTune,
    GpuHandoff,
    choose_gpu_mode,
    estimated_full_need_bytes,
    estimated_need_bytes,
    spec_need_bytes,
)
from lib_trainer.webui.host_api import Host
from lib_trainer.webui.service import CompareError, CompareUnsupported, TrainerService

STAND_IN_TRAINER = r"""
import json, sys, time
from pathlib import Path
job = Path(sys.argv[1])
spec = json.loads((job / "job.json").read_text())
seq = 0
def emit(kind, **fields):
    global seq
    seq += 1
    with (job / "events.jsonl").open("a") as f:
        f.write(json.dumps({"seq": seq, "time": time.time(), "type": kind, **fields}) + "\n")
gate = Path(spec["dataset"]["path"]) / "gate"
emit("start", name=spec["name"])
name = spec["name"]
out = Path(spec["output"]["dir"])
if spec["output"].get("family_folder"):
    out = out / name
out.mkdir(parents=True, exist_ok=True)
emit("info", message="training", total_steps=2, total_epochs=1, output_name=name)
while not gate.exists() and not (job / "stop").exists():
    time.sleep(0.02)
files = []
epochs_file = Path(spec["dataset"]["path"]) / "epochs"
for epoch in range(1, int(epochs_file.read_text()) if epochs_file.exists() else 1):
    files.append(out / f"{name}-{epoch:06d}.safetensors")
files.append(out / f"{name}.safetensors")
for path in files:
    path.write_bytes(b"lora")
    emit("checkpoint", path=str(path), epoch=1, step=2, **({"model_file": True} if spec["mode"] == "dreambooth" else {}))
rank = (spec.get("finetune") or {}).get("extract_lora_rank")
if spec["mode"] == "dreambooth" and rank:
    lora = Path(spec["finetune"]["lora_dir"]) / (name + ".safetensors")
    lora.parent.mkdir(parents=True, exist_ok=True)
    lora.write_bytes(b"lora")
    emit("lora_extracted", path=str(lora), rank=rank, layers=1)
    files.append(lora)
emit("done", files=[str(f) for f in files], output_name=name, steps=2)
"""


@pytest.fixture
def world(tmp_path):
    host = RecordingHost(tmp_path / "webui")
    data = tmp_path / "dataset"
    data.mkdir()
    script = tmp_path / "trainer.py"
    script.write_text(STAND_IN_TRAINER)
    services = []

    def make(**kwargs) -> TrainerService:
        service = TrainerService(
            host, trainer_command=lambda d, r: [sys.executable, str(script), str(d)], watch=False, **kwargs
        )
        services.append(service)
        return service

    yield host, data, make
    (data / "gate").touch()  # lets every stand-in trainer finish, including ones started by this teardown
    for service in services:
        deadline = time.time() + 20
        while time.time() < deadline:
            service.manager.poll()
            if not any(r.status in ("running", "stopping", "queued") for r in service.manager.list()):
                break
            time.sleep(0.05)


def _spec(data: Path, name: str = "hero") -> dict:
    return {
        "name": name,
        "dataset": {"path": str(data), "trigger_word": "hr"},
        "model": {"checkpoint": "current"},
    }


def _wait(manager: JobManager, job_id: str, status: str, timeout: float = 20.0):
    end = time.time() + timeout
    while time.time() < end:
        manager.poll()
        record = manager.get(job_id)
        if record.status == status:
            return record
        time.sleep(0.05)
    raise AssertionError(f"{job_id} is {manager.get(job_id).status}, not {status}")


def test_the_host_object_satisfies_the_protocol(tmp_path):
    assert isinstance(RecordingHost(tmp_path), Host)


def test_spec_gets_the_hosts_model_vae_type_and_lora_folder(world):
    host, data, make = world
    service = make()
    spec, notes = service.prepare_spec(_spec(data))
    assert spec["model"]["checkpoint"] == host.model.checkpoint
    assert spec["model"]["vae"] == host.model.vae
    assert spec["model"]["model_type"] == "sd2-v" and spec["model"]["prediction_type"] == "v_prediction"
    assert spec["output"]["dir"] == str(host.lora_dir()) and spec["output"]["family_folder"] is True
    assert spec["name"] == "hero" and notes == []
    # Another checkpoint from the list: the host's type knowledge is not carried over to it.
    spec, _ = service.prepare_spec(_spec(data), checkpoint="other.safetensors [def]")
    assert spec["model"]["checkpoint"].endswith("other.safetensors") and spec["model"]["model_type"] is None
    with pytest.raises(SpecError) as err:
        service.prepare_spec(_spec(data), checkpoint="missing.safetensors [000]")
    assert err.value.errors[0][0] == "model.checkpoint"
    host.model = None
    with pytest.raises(SpecError, match="no model loaded"):
        service.prepare_spec(_spec(data))


@pytest.mark.parametrize(("kind", "named"), [("forge", "Forge"), ("reforge", "reForge")])
def test_a_learnt_trigger_word_on_forge_or_reforge_is_said_to_be_ignored_there(world, kind, named):
    host, data, make = world
    service = make()
    learnt = {**_spec(data), "network": {"learn_trigger": True}}
    assert service.prepare_spec(learnt)[1] == []  # another host (AUTOMATIC1111 reads them)
    host.kind = kind
    _, notes = service.prepare_spec(learnt)
    assert len(notes) == 1 and f"{named} ignores the learnt word" in notes[0], notes
    assert service.prepare_spec(_spec(data))[1] == []  # nothing to say without the option


def test_taken_and_queued_names_are_never_reused(world):
    host, data, make = world
    service = make()
    (host.lora_dir() / "chars").mkdir(parents=True)
    (host.lora_dir() / "chars" / "hero.safetensors").write_bytes(b"x")
    spec, notes = service.prepare_spec(_spec(data))
    assert spec["name"] == "hero_2" and "hero_2" in notes[0]
    first = service.submit(_spec(data))
    second = service.submit(_spec(data))  # the first has not written anything yet
    assert (first.output_name, second.output_name) == ("hero_2", "hero_3")


def test_auto_gpu_mode(world):
    host, data, make = world
    need = estimated_need_bytes("sdxl")
    assert choose_gpu_mode(host, "auto", need)[0] == EXCLUSIVE  # no CUDA: never compete for the CPU
    host.free_vram = 40 * GIB
    assert choose_gpu_mode(host, "auto", need)[0] == SHARED
    host.free_vram = 8 * GIB
    assert choose_gpu_mode(host, "auto", need)[0] == EXCLUSIVE
    assert choose_gpu_mode(host, SHARED, need)[0] == SHARED
    assert estimated_need_bytes("sdxl", gradient_checkpointing=True) < need < estimated_need_bytes("sdxl", 4)
    submitted = make().submit(_spec(data))
    assert submitted.gpu_mode == EXCLUSIVE and submitted.record.mode == EXCLUSIVE
    assert submitted.record.gpu == "1" and any("GPU sharing" in n for n in submitted.notes)


def test_exclusive_job_holds_the_generation_lock_and_restores_the_model(world):
    host, data, make = world
    service = make()
    job = service.submit(_spec(data), gpu_mode=EXCLUSIVE).record.id
    service.manager.poll()
    assert service.manager.get(job).status == RUNNING
    assert host.calls == ["lock", "unload"]
    assert not host.lock.acquire(timeout=0.2)  # image generation would wait now
    (data / "gate").touch()
    record = _wait(service.manager, job, DONE)
    assert record.files == [str(host.lora_dir() / "hero" / "hero.safetensors")]
    assert host.calls == ["lock", "unload", "restore", "unlock", "refresh"]
    assert host.lock.acquire(timeout=1)  # generation can go on
    host.lock.release()


def test_shared_job_touches_nothing_but_the_lora_list(world):
    host, data, make = world
    service = make()
    job = service.submit(_spec(data), gpu_mode=SHARED).record.id
    service.manager.poll()
    assert host.lock.acquire(timeout=1)
    host.lock.release()
    (data / "gate").touch()
    _wait(service.manager, job, DONE)
    assert host.calls == ["refresh"]


def test_exclusive_start_waits_for_a_running_generation(world):
    host, data, make = world
    service = make()
    host.lock.acquire()  # a generation is under way
    job = service.submit(_spec(data), gpu_mode=EXCLUSIVE).record.id
    poller = threading.Thread(target=service.manager.poll)
    poller.start()
    time.sleep(0.3)
    assert host.calls == [] and service.manager.progress(job)["status"] == RUNNING  # waiting for the lock
    assert service.manager.get(job).pid is None  # no trainer process yet
    host.lock.release()
    poller.join(10)
    assert host.calls == ["lock", "unload"] and service.manager.get(job).pid is not None


def test_a_failed_unload_gives_the_lock_back_and_fails_the_job(world):
    host, data, make = world

    def broken():
        raise RuntimeError("out of memory while moving the model")

    host.unload_model = broken
    service = make()
    job = service.submit(_spec(data), gpu_mode=EXCLUSIVE).record.id
    service.manager.poll()
    record = service.manager.get(job)
    assert record.status == FAILED and "out of memory" in record.error
    assert host.lock.acquire(timeout=1)
    host.lock.release()


def test_reattach_after_a_webui_restart_redoes_the_handoff(world):
    host, data, make = world
    handoff = GpuHandoff(host)
    record = type("R", (), {"id": "j1", "mode": EXCLUSIVE})()
    handoff.after_reattach(record)
    handoff.after_reattach(record)  # once only
    assert host.calls == ["lock", "unload"] and handoff.holds("j1")
    handoff.after_finish(record)
    handoff.after_finish(record)
    assert host.calls == ["lock", "unload", "restore", "unlock"]


def test_new_epoch_files_refresh_the_lora_list_once(world):
    host, data, make = world
    service = make()
    assert service.refresh_if_new_files("j", ["a.safetensors", "a.json"])
    assert not service.refresh_if_new_files("j", ["a.safetensors", "a.json"])
    assert service.refresh_if_new_files("j", ["a.safetensors", "b.safetensors"])
    assert host.calls == ["refresh", "refresh"]


def test_compare_makes_the_grid_under_the_generation_lock_and_keeps_it(world):
    host, data, make = world
    (data / "epochs").write_text("3")
    service = make()
    job = service.submit(_spec(data), gpu_mode=SHARED).record.id
    service.manager.poll()
    with pytest.raises(CompareError, match="still training"):
        service.compare(job)
    (data / "gate").touch()
    _wait(service.manager, job, DONE)
    done = service.compare(job)
    request = host.grid_requests[-1]
    assert request.epochs == "1, 2, final" and request.prompt == "hr <lora:hero:1>"
    assert host.calls[-4:] == ["refresh", "lock", "grid", "unlock"]
    assert latest_grid(service.manager.get(job).job_dir) == (done.path, done.infotext)
    edited = CompareRequest(family="hero", prompt="castle", epochs="2", strengths="1", seed=9)
    service.compare(job, edited)
    assert host.grid_requests[-1].prompt == "castle <lora:hero:1>" and host.grid_requests[-1].seed == 9
    with pytest.raises(CompareError, match="not an epoch number"):
        service.compare(job, CompareRequest(family="hero", prompt="x", epochs="best"))


def test_compare_waits_for_no_exclusive_run_and_notes_another_model(world):
    host, data, make = world
    service = make()
    first = service.submit(_spec(data), gpu_mode=SHARED).record.id
    (data / "gate").touch()
    _wait(service.manager, first, DONE)
    (data / "gate").unlink()
    second = service.submit(_spec(data, "villain"), gpu_mode=EXCLUSIVE).record.id
    service.manager.poll()
    assert service.manager.get(second).status == RUNNING
    with pytest.raises(CompareError, match="paused image generation"):
        service.compare(first)
    (data / "gate").touch()
    _wait(service.manager, second, DONE)
    host.model = type(host.model)(checkpoint=str(host.root / "models" / "other.safetensors"), title="other")
    assert "trained on base.safetensors" in service.compare(first).notes[0]


def test_compare_when_done_runs_once_after_the_job(world):
    host, data, make = world
    (data / "epochs").write_text("2")
    service = make()
    job = service.submit(_spec(data), gpu_mode=EXCLUSIVE, compare_when_done=True).record.id
    (data / "gate").touch()
    record = _wait(service.manager, job, DONE)
    deadline = time.time() + 10
    while (
        read_settings(record.job_dir).get("auto_compare", {}).get("status") != "done"
        and time.time() < deadline
    ):
        time.sleep(0.05)
    settings = read_settings(record.job_dir)
    assert settings["auto_compare"]["status"] == "done" and latest_grid(record.job_dir) is not None
    assert host.calls.count("grid") == 1 and host.grid_requests[0].epochs == "1, final"
    # the exclusive run gave the lock back before the grid took it
    assert host.calls.index("unlock") < host.calls.index("grid")


# ---------------------------------------------------------------- the full fine-tune (mode "dreambooth")


def _full(data: Path, name: str = "hero", **finetune) -> dict:
    spec = _spec(data, name)
    spec.update(mode="dreambooth", dreambooth={"class_prompt": "a photo of a man"}, finetune=finetune)
    spec["training"] = {"learning_rate": 2e-6, "epochs": 2}
    return spec


def test_full_finetune_saves_into_the_checkpoint_folder_and_lora_jobs_stay_as_they_were(world):
    host, data, make = world
    service = make()
    spec, notes = service.prepare_spec(_full(data))
    assert spec["output"]["dir"] == str(host.checkpoint_dir()) and spec["output"]["family_folder"] is False
    assert spec["finetune"]["lora_dir"] == str(host.lora_dir())
    assert notes == [f"The checkpoint will be saved in {host.checkpoint_dir()} as hero.safetensors."]
    lora, _ = service.prepare_spec(
        {**_spec(data), "mode": "dreambooth-lora", "dreambooth": {"class_prompt": "x"}}
    )
    assert lora["output"]["dir"] == str(host.lora_dir()) and lora["output"]["family_folder"] is True
    assert lora["finetune"]["lora_dir"] == ""  # only a full fine-tune extracts a LoRA
    # a caller's own folders are replaced by the WebUI's
    given = _full(data, lora_dir="/elsewhere/loras")
    spec, _ = service.prepare_spec({**given, "output": {"dir": "/elsewhere", "family_folder": True}})
    assert spec["output"]["dir"] == str(host.checkpoint_dir()) and spec["finetune"]["lora_dir"] == str(
        host.lora_dir()
    )


def test_full_finetune_notes_warn_about_rate_disk_and_vram(world):
    host, data, make = world
    service = make()
    spec = _full(data)
    spec["training"] = {"learning_rate": 1e-4, "epochs": 10}
    spec["model"]["model_type"] = "sdxl"
    host.free_vram = 20 * GIB  # of 24 GiB in all
    _, notes = service.prepare_spec(spec)
    assert any("learning rate 0.0001 is high" in n for n in notes)
    assert any("up to 10 checkpoints" in n for n in notes)  # epochs 1-9 and the final file
    assert any("needs about" in n and "the GPU has 24 GiB" in n for n in notes)
    spec["model"]["model_type"] = "sd1"
    spec["training"] = {
        "learning_rate": 1.0,
        "optimizer": "Prodigy",
        "epochs": 2,
        "gradient_checkpointing": True,
    }
    _, notes = service.prepare_spec(spec)
    assert len(notes) == 1, notes  # only where it is saved: Prodigy sets its own pace, and SD 1.5 fits


def test_full_finetune_names_are_free_among_checkpoints(world):
    host, data, make = world
    service = make()
    models = host.checkpoint_dir()
    (models / "people").mkdir(parents=True)
    (models / "people" / "Hero.safetensors").write_bytes(b"x")  # any case, any subfolder
    (models / "villain-v2.ckpt").write_bytes(b"x")  # a file starting with "villain-"
    (host.lora_dir() / "sage").mkdir(parents=True)
    (host.lora_dir() / "sage" / "sage.safetensors").write_bytes(b"x")
    assert service.prepare_spec(_full(data))[0]["name"] == "hero_2"
    spec, notes = service.prepare_spec(_full(data, "villain"))
    assert spec["name"] == "villain_2" and 'A checkpoint named "villain"' in notes[0]
    assert service.prepare_spec(_full(data, "base"))[0]["name"] == "base_2"  # in the WebUI's list elsewhere
    assert service.prepare_spec(_full(data, "sage"))[0]["name"] == "sage"  # LoRAs are another list...
    spec, notes = service.prepare_spec(_full(data, "sage", extract_lora_rank=32))
    assert spec["name"] == "sage_2" and "checkpoint or LoRA" in notes[0]  # ...unless a LoRA is extracted
    assert service.prepare_spec(_spec(data, "villain"))[0]["name"] == "villain"  # LoRA jobs: LoRA folder only
    first = service.submit(_full(data, "twin"))
    assert first.output_name == "twin" and service.submit(_full(data, "twin")).output_name == "twin_2"


def test_a_finished_full_finetune_refreshes_the_checkpoint_list_and_the_lora_list_for_its_lora(world):
    host, data, make = world
    (data / "epochs").write_text("2")
    service = make()
    job = service.submit(_full(data, extract_lora_rank=16), gpu_mode=SHARED).record.id
    (data / "gate").touch()
    record = _wait(service.manager, job, DONE)
    checkpoints = [
        str(host.checkpoint_dir() / "hero-000001.safetensors"),
        str(host.checkpoint_dir() / "hero.safetensors"),
    ]
    lora = str(host.lora_dir() / "hero.safetensors")
    assert record.files == [*checkpoints, lora]
    assert service.file_kinds(job, record.files) == {**dict.fromkeys(checkpoints, "checkpoint"), lora: "lora"}
    assert sorted(host.calls) == ["refresh", "refresh_checkpoints"]
    plain = service.submit(_full(data, "plain"), gpu_mode=SHARED).record.id
    _wait(service.manager, plain, DONE)
    assert host.calls.count("refresh_checkpoints") == 2 and host.calls.count("refresh") == 1


def test_new_checkpoints_refresh_the_checkpoint_list_once_each(world):
    host, data, make = world
    service = make()
    job = service.submit(_full(data)).record.id
    folder = host.checkpoint_dir()
    assert service.refresh_if_new_files(job, [str(folder / "hero-000001.safetensors")])
    assert not service.refresh_if_new_files(job, [str(folder / "hero-000001.safetensors"), "x.png"])
    assert service.refresh_if_new_files(
        job, [str(folder / "hero-000001.safetensors"), str(folder / "hero.safetensors")]
    )
    assert host.calls == ["refresh_checkpoints", "refresh_checkpoints"]


def test_compare_is_refused_for_a_full_finetune(world):
    host, data, make = world
    service = make()
    submitted = service.submit(_full(data), gpu_mode=SHARED, compare_when_done=True)
    assert any("Compare epochs works on LoRA jobs" in n for n in submitted.notes)
    job = submitted.record.id
    (data / "gate").touch()
    record = _wait(service.manager, job, DONE)
    assert "compare_when_done" not in read_settings(record.job_dir)
    message = (
        'Compare epochs works on LoRA jobs. "hero" is a full fine-tune: pick its checkpoint hero.safetensors '
        "in the WebUI's checkpoint list to try it."
    )
    with pytest.raises(CompareUnsupported) as err:
        service.compare(job)
    assert str(err.value) == message
    with pytest.raises(CompareUnsupported):
        service.compare_request(job)
    assert "grid" not in host.calls


def test_vram_estimates_know_the_full_finetune():
    gb = 1e9
    sd15 = estimated_full_need_bytes("sd1", 1, True, FullFineTune(optimizer="AdamW8bit"))
    assert 12 * gb < sd15 < 16 * gb  # about 14 GB, as users of 24 GB cards report
    assert estimated_full_need_bytes("sd1", 1, False, FullFineTune(optimizer="AdamW8bit")) > sd15
    assert estimated_full_need_bytes("sd1", 1, True, FullFineTune(optimizer="AdamW")) > sd15
    assert estimated_full_need_bytes("sd1", 1, True, FullFineTune(optimizer="AdamW8bit", ema=True)) > sd15
    assert estimated_full_need_bytes("sdxl", 1, True, FullFineTune(optimizer="AdamW8bit")) > 38 * gb
    assert estimated_need_bytes("sd1", 1, True, mode="dreambooth", full=FullFineTune()) == sd15
    assert estimated_need_bytes("sd1", 1, True, mode="dreambooth-lora") == estimated_need_bytes(
        "sd1", 1, True
    )
    lora_spec = {
        "mode": "lora",
        "model": {"model_type": "sd1"},
        "network": {"train_unet": True, "train_text_encoder": False},
        "training": {"batch_size": 1, "gradient_checkpointing": True, "optimizer": "AdamW8bit"},
    }
    assert spec_need_bytes(lora_spec) == estimated_need_bytes("sd1", 1, True)
    full_spec = {**lora_spec, "mode": "dreambooth", "finetune": {"ema": False}}
    assert spec_need_bytes(full_spec) == sd15 > 2 * spec_need_bytes(lora_spec)
    with_te = {**full_spec, "network": {"train_unet": True, "train_text_encoder": True}}
    assert spec_need_bytes(with_te) > sd15
