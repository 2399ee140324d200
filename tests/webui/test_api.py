"""The REST API (/lora-trainer/v1) on a FastAPI app, with an injected host object and a real job manager.

The trainer is the same stand-in script as in test_service.py, so jobs really start, write files and end.
"""

from __future__ import annotations

import base64
import io
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from recording_host import RecordingHost
from test_service import STAND_IN_TRAINER

from lib_trainer.webui import api
from lib_trainer.webui.install_status import InstallStatus
from lib_trainer.webui.service import TrainerService
from lib_trainer.webui.uploads import UploadLimits

P = api.PREFIX


def _png(color=(200, 30, 30), size=(64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


class World:
    def __init__(self, tmp_path: Path, credentials=None):
        self.host = RecordingHost(tmp_path / "webui")
        self.data = tmp_path / "dataset"
        self.data.mkdir()
        for i in range(3):
            (self.data / f"img{i}.png").write_bytes(_png((i * 60, 10, 10)))
            (self.data / f"img{i}.txt").write_text(f"hr shape {i}")
        script = tmp_path / "trainer.py"
        script.write_text(STAND_IN_TRAINER)
        self.service = TrainerService(
            self.host, trainer_command=lambda d, r: [sys.executable, str(script), str(d)], watch=False
        )
        self.install: InstallStatus | None = None
        app = FastAPI()
        router = api.build_router(lambda: self.service, lambda: self.install, credentials)
        assert api.mount(app, router) and not api.mount(app, router)  # once only
        self.client = TestClient(app)

    def spec(self, name="hero", **sections):
        spec = {"name": name, "dataset": {"path": str(self.data), "trigger_word": "hr"}}
        spec.update(sections)
        return {"spec": spec}

    def finish(self, job_id: str, status: str = "done") -> None:
        (self.data / "gate").touch()
        deadline = time.time() + 20
        while time.time() < deadline:
            self.service.manager.poll()
            if self.service.manager.get(job_id).status == status:
                return
            time.sleep(0.05)
        raise AssertionError(self.service.manager.get(job_id))


@pytest.fixture
def world(tmp_path):
    made = World(tmp_path)
    yield made
    (made.data / "gate").touch()
    for _ in range(200):
        made.service.manager.poll()
        if not any(r.status in ("queued", "running", "stopping") for r in made.service.manager.list()):
            break
        time.sleep(0.05)


def test_info(world):
    answer = world.client.get(f"{P}/info")
    assert answer.status_code == 200, answer.text
    info = answer.json()
    assert info["version"] and info["trainer"]["ok"] is True
    assert info["model"]["title"] == "base.safetensors [abc]" and info["model"]["model_type"] == "sd2-v"
    assert info["lora_dir"] == str(world.host.lora_dir())
    assert info["checkpoint_dir"] == str(world.host.checkpoint_dir())
    assert info["modes"] == ["lora", "dreambooth-lora", "dreambooth"]
    assert any(p["builtin"] for p in info["presets"]) and info["datasets_dir"].endswith("datasets")


def test_auth_is_required_on_every_route_when_set(tmp_path):
    world = World(tmp_path, credentials={"user": "pass"})
    for method, path in (
        ("get", "/info"),
        ("post", "/check"),
        ("post", "/jobs"),
        ("get", "/jobs"),
        ("get", "/jobs/x"),
        ("get", "/jobs/x/events"),
        ("get", "/jobs/x/files/a.png"),
        ("post", "/jobs/x/cancel"),
        ("post", "/jobs/x/resume"),
        ("delete", "/jobs/x"),
        ("post", "/jobs/x/compare"),
        ("post", "/datasets"),
    ):
        for auth in (None, ("user", "wrong"), ("nobody", "pass")):
            answer = getattr(world.client, method)(f"{P}{path}", auth=auth)
            assert answer.status_code == 401, (method, path, auth, answer.status_code)
    assert world.client.get(f"{P}/info", auth=("user", "pass")).status_code == 200
    assert world.client.get(f"{P}/jobs/x", auth=("user", "pass")).status_code == 404


def test_check_reports_the_dataset_and_field_errors(world):
    answer = world.client.post(f"{P}/check", json=world.spec())
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["ok"] is True, report["dataset"]["problems"]
    assert report["dataset"]["images"] == 3 and report["dataset"]["captioned"] == 3
    assert report["spec"]["model"]["checkpoint"] == world.host.model.checkpoint
    assert sum(report["dataset"]["buckets"].values()) == 3 and report["model"]["title"].startswith("base")
    bad = world.client.post(f"{P}/check", json=world.spec(training={"learning_rate": -1}))
    assert bad.status_code == 422
    assert [f["field"] for f in bad.json()["fields"]] == ["training.learning_rate"]
    unnamed = world.client.post(f"{P}/check", json={"spec": {"dataset": {"path": str(world.data)}}})
    assert unnamed.status_code == 422 and unnamed.json()["fields"][0]["field"] == "name"
    missing = world.client.post(
        f"{P}/check", json={"spec": {"name": "x", "dataset": {"path": "/nope"}}}
    ).json()
    assert missing["ok"] is False and "/nope" in missing["dataset"]["problems"][0]
    assert world.client.post(f"{P}/check", json=world.spec() | {"preset": "nope"}).status_code == 422
    empty = world.data.parent / "empty"
    empty.mkdir()
    report = world.client.post(
        f"{P}/check", json={"spec": {"name": "x", "dataset": {"path": str(empty)}}}
    ).json()
    assert report["ok"] is False and report["dataset"]["problems"]


def test_submit_follow_fetch_and_remove(world):
    answer = world.client.post(f"{P}/jobs", json=world.spec(), auth=None)
    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert job["name"] == "hero" and job["status"] == "queued" and job["position"] == 0
    world.service.manager.poll()
    running = world.client.get(f"{P}/jobs/{job['id']}").json()
    assert running["status"] == "running"
    world.finish(job["id"])
    done = world.client.get(f"{P}/jobs/{job['id']}").json()
    assert done["status"] == "done" and done["files"][0].endswith("hero.safetensors")
    assert done["output_name"] == "hero" and done["last_seq"] >= 3
    assert [j["id"] for j in world.client.get(f"{P}/jobs").json()] == [job["id"]]
    events = world.client.get(f"{P}/jobs/{job['id']}/events", params={"since": 1}).json()
    assert [e["seq"] for e in events["events"]] == list(range(2, events["last_seq"] + 1))
    assert events["events"][-1]["type"] == "done"
    assert (
        world.client.get(f"{P}/jobs/{job['id']}/events", params={"since": events["last_seq"]}).json()[
            "events"
        ]
        == []
    )
    lora = world.client.get(f"{P}/jobs/{job['id']}/files/hero.safetensors")
    assert lora.status_code == 200 and lora.content == b"lora"
    assert world.client.get(f"{P}/jobs/{job['id']}/files/job.json").json()["name"] == "hero"
    removed = world.client.delete(f"{P}/jobs/{job['id']}")
    assert removed.status_code == 200 and "LoRA files stay" in removed.json()["message"]
    assert Path(done["files"][0]).is_file()
    assert world.client.get(f"{P}/jobs/{job['id']}").status_code == 404


def test_file_names_cannot_escape_the_job(world):
    first = world.client.post(f"{P}/jobs", json=world.spec()).json()["id"]
    second = world.client.post(f"{P}/jobs", json=world.spec("villain")).json()["id"]
    (world.host.root / "secret.txt").write_text("no")
    for name in (
        f"../{second}/job.json",
        "../../../secret.txt",
        "%2e%2e/%2e%2e/secret.txt",
        "/etc/passwd",
        "..\\job.json",
        "samples/../../x",
    ):
        answer = world.client.get(f"{P}/jobs/{first}/files/{name}")
        assert answer.status_code in (400, 404), (name, answer.status_code)
        assert answer.text != "no"
    assert world.client.get(f"{P}/jobs/nope/files/job.json").status_code == 404


def test_unknown_ids_and_bad_states(world):
    for method, path in (("get", "/jobs/nope"), ("post", "/jobs/nope/cancel"), ("delete", "/jobs/nope")):
        answer = getattr(world.client, method)(f"{P}{path}")
        assert answer.status_code == 404 and "nope" in answer.json()["error"]
    job = world.client.post(f"{P}/jobs", json=world.spec()).json()["id"]
    world.service.manager.poll()
    assert world.client.delete(f"{P}/jobs/{job}").status_code == 409  # still running
    assert world.client.post(f"{P}/jobs/{job}/resume").status_code == 409
    cancelled = world.client.post(f"{P}/jobs/{job}/cancel").json()
    assert cancelled["status"] in ("stopping", "cancelled")


def test_broken_trainer_environment_gives_503(world):
    world.install = InstallStatus(
        ok=False, message="the trainer environment is missing", fix="run X", venv=Path("v")
    )
    answer = world.client.post(f"{P}/jobs", json=world.spec())
    assert (
        answer.status_code == 503
        and "missing" in answer.json()["error"]
        and "run X" in answer.json()["error"]
    )
    assert world.client.get(f"{P}/info").json()["trainer"] == {
        "ok": False,
        "message": "the trainer environment is missing",
        "fix": "run X",
    }


def test_concurrent_submissions_are_queued_fifo_and_none_is_lost(world):
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        answer = world.client.post(f"{P}/jobs", json=world.spec(f"job{i:02d}"))
        with lock:
            results.append((answer.status_code, answer.json()))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(code for code, _ in results) == [201] * 12
    ids = [body["id"] for _, body in results]
    assert len(set(ids)) == 12
    queued = [j for j in world.client.get(f"{P}/jobs").json() if j["status"] == "queued"]
    assert [j["position"] for j in queued] == list(range(12))
    by_position = sorted(results, key=lambda r: r[1]["position"])
    assert [q["id"] for q in queued] == [body["id"] for _, body in by_position]


def test_compare_returns_the_grid(world):
    (world.data / "epochs").write_text("3")
    job = world.client.post(f"{P}/jobs", json=world.spec(), params={}).json()["id"]
    world.service.manager.poll()
    assert world.client.post(f"{P}/jobs/{job}/compare").status_code == 409  # still training
    world.finish(job)
    answer = world.client.post(f"{P}/jobs/{job}/compare", json={"strengths": "0.5, 1", "seed": 5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert base64.b64decode(body["image"]).startswith(b"\x89PNG") and "Script: X/Y/Z plot" in body["infotext"]
    request = world.host.grid_requests[-1]
    assert (request.epochs, request.strengths, request.seed) == ("1, 2, final", "0.5, 1", 5)
    grid = world.client.get(f"{P}/jobs/{job}/files/{body['file']}")
    assert grid.status_code == 200 and grid.content == base64.b64decode(body["image"])
    bad = world.client.post(f"{P}/jobs/{job}/compare", json={"epochs": "7"})
    assert bad.status_code == 422 and "Saved epochs: 1, 2 and final" in bad.json()["error"]


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def test_dataset_uploads(world):
    items = [
        {"name": "a.png", "data_base64": base64.b64encode(_png()).decode(), "caption": "hr red"},
        {
            "name": "10_hero/b.png",
            "data_base64": "data:image/png;base64," + base64.b64encode(_png()).decode(),
        },
    ]
    answer = world.client.post(f"{P}/datasets", json={"name": "mine", "items": items})
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert (made["images"], made["captions"]) == (2, 1)
    assert (Path(made["path"]) / "a.txt").read_text() == "hr red" and (
        Path(made["path"]) / "10_hero" / "b.png"
    ).is_file()
    # the folder is usable as a job's dataset at once
    check = world.client.post(f"{P}/check", json={"spec": {"name": "m", "dataset": {"path": made["path"]}}})
    assert check.json()["dataset"]["images"] == 2

    data = _zip({"x/1.png": _png(), "x/1.txt": b"cap", "__MACOSX/x/._1.png": b"junk"})
    raw = world.client.post(
        f"{P}/datasets", params={"name": "zipped"}, content=data, headers={"Content-Type": "application/zip"}
    )
    assert raw.status_code == 201, raw.text
    assert raw.json()["path"].endswith("zipped") and raw.json()["skipped"]
    again = world.client.post(
        f"{P}/datasets", json={"name": "zipped", "zip_base64": base64.b64encode(data).decode()}
    )
    assert again.status_code == 201 and again.json()["path"].endswith("zipped_2")

    evil = _zip({"../../evil.png": _png()})
    escaped = world.client.post(
        f"{P}/datasets", params={"name": "evil"}, content=evil, headers={"Content-Type": "application/zip"}
    )
    assert escaped.status_code == 400 and "evil.png" in escaped.json()["error"]
    root = world.service.root / "datasets"
    assert sorted(p.name for p in root.iterdir()) == ["mine", "zipped", "zipped_2"]
    assert not (world.service.root.parent / "evil.png").exists()
    for body, status in (
        ({"name": "x"}, 400),
        ({"name": "x", "items": items, "zip_base64": "AAAA"}, 400),
        ({"name": "x", "zip_base64": "not base64!"}, 400),
        ({"name": "../x", "items": items}, 400),
        ({"items": items}, 400),
    ):
        assert world.client.post(f"{P}/datasets", json=body).status_code == status, body
    assert (
        world.client.post(f"{P}/datasets", content=b"x", headers={"Content-Type": "text/plain"}).status_code
        == 415
    )


def test_oversized_uploads_and_zip_bombs_are_rejected(world, monkeypatch):
    monkeypatch.setattr(
        api, "LIMITS", UploadLimits(max_file_bytes=10_000, max_total_bytes=50_000, max_ratio=50)
    )
    monkeypatch.setattr(api, "MAX_JSON_BODY", 100_000)
    bomb = _zip({"a.png": _png(), "b.txt": b"0" * 5_000_000})
    answer = world.client.post(
        f"{P}/datasets", params={"name": "bomb"}, content=bomb, headers={"Content-Type": "application/zip"}
    )
    assert answer.status_code == 413, answer.text
    big = world.client.post(
        f"{P}/datasets",
        params={"name": "big"},
        content=b"0" * 200_000,
        headers={"Content-Type": "application/zip"},
    )
    assert big.status_code == 413
    assert not (world.service.root / "datasets").exists() or not any(
        (world.service.root / "datasets").iterdir()
    )


def test_openapi_documents_the_routes(world):
    schema = world.client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/info", "/check", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/events", "/datasets"):
        assert f"{P}{path}" in paths, path
    assert "application/zip" in paths[f"{P}/datasets"]["post"]["requestBody"]["content"]
    assert "JobView" in str(schema["components"]["schemas"])


def test_dreambooth_lora_jobs_through_the_api(world):
    spec = world.spec(mode="dreambooth-lora")
    missing = world.client.post(f"{P}/check", json=spec)
    assert missing.status_code == 422 and missing.json()["fields"][0]["field"] == "dreambooth.class_prompt"
    spec["spec"]["dreambooth"] = {"class_prompt": "a photo of a dog", "prior": "lora-off"}
    report = world.client.post(f"{P}/check", json=spec).json()
    assert report["ok"] and report["spec"]["mode"] == "dreambooth-lora"
    assert report["spec"]["dreambooth"]["prior"] == "lora-off"
    full = world.client.post(f"{P}/jobs", json=world.spec(mode="dreambooth"))
    assert full.status_code == 422 and full.json()["fields"][0]["field"] == "dreambooth.class_prompt"


def test_full_finetune_jobs_through_the_api(world):
    body = world.spec(
        "hero",
        mode="dreambooth",
        dreambooth={"class_prompt": "a photo of a man"},
        finetune={"extract_lora_rank": 8},
        training={"learning_rate": 2e-6, "epochs": 2},
    )
    report = world.client.post(f"{P}/check", json=body).json()
    assert report["ok"] and report["spec"]["mode"] == "dreambooth"
    assert report["spec"]["output"]["dir"] == str(world.host.checkpoint_dir())
    assert report["spec"]["output"]["family_folder"] is False
    assert report["spec"]["finetune"] == {
        "ema": False,
        "ema_decay": 0.9999,
        "extract_lora_rank": 8,
        "lora_dir": str(world.host.lora_dir()),
    }
    submitted = world.client.post(f"{P}/jobs", json={**body, "compare_when_done": True})
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()
    assert any("Compare epochs works on LoRA jobs" in note for note in job["notes"])
    world.finish(job["id"])
    view = world.client.get(f"{P}/jobs/{job['id']}").json()
    checkpoint = str(world.host.checkpoint_dir() / "hero.safetensors")
    lora = str(world.host.lora_dir() / "hero.safetensors")
    assert view["training_type"] == "dreambooth"
    assert (view["checkpoint_files"], view["lora_files"], view["files"]) == (
        [checkpoint],
        [lora],
        [checkpoint, lora],
    )
    assert "refresh_checkpoints" in world.host.calls and "refresh" in world.host.calls
    compare = world.client.post(f"{P}/jobs/{job['id']}/compare", json={})
    assert compare.status_code == 422
    assert compare.json()["error"] == (
        'Compare epochs works on LoRA jobs. "hero" is a full fine-tune: pick its checkpoint hero.safetensors '
        "in the WebUI's checkpoint list to try it."
    )
    removed = world.client.delete(f"{P}/jobs/{job['id']}").json()
    assert "its checkpoint files stay" in removed["message"]


def test_lora_jobs_list_their_lora_files(world):
    job = world.client.post(f"{P}/jobs", json=world.spec()).json()["id"]
    world.finish(job)
    view = world.client.get(f"{P}/jobs/{job}").json()
    assert view["training_type"] == "lora" and view["checkpoint_files"] == []
    assert view["lora_files"] == view["files"] == [str(world.host.lora_dir() / "hero" / "hero.safetensors")]
