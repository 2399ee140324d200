"""The REST API in a real AUTOMATIC1111 WebUI (v1.10.x) started with --api --api-auth: the README's scripted
session, run as it is printed there, end to end.

The WebUI starts offline on CPU with this repository linked in as an extension and the repository's own
.venv as the trainer environment. The test takes the Python block marked ``<!-- scripted-session -->`` from
README.md and runs its ``scripted_session()`` with tiny settings (64 px, 2 epochs): upload a zip, check,
submit, poll, fetch samples, compare epochs, generate with the new LoRA through /sdapi/v1/txt2img. It also
checks that our routes answer 401 without the credentials and that /docs lists them.

Opt-in (marker ``host``), skipped unless ``SD_WEBUI_DIR`` is set (see ``host_support.py``);
``SD_WEBUI_TEST_CKPT`` may name an existing full-size SD1 ``.safetensors``. Costs: a few minutes on CPU,
up to ~12 GiB of RAM while the WebUI and the trainer both hold the model.
"""

from __future__ import annotations

import base64
import io
import os
import re
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from host_support import (
    EXT_TRACE_WORDS,
    Host,
    host_paths,
    log_tail,
    start_webui,
    stop,
    tracebacks_mentioning,
    wait_for_startup,
)
from PIL import Image

pytestmark = pytest.mark.host

WEBUI_DIR, HOST_PYTHON = host_paths("the REST API test")
REPO = Path(__file__).resolve().parent.parent
USER, PASSWORD = "user", "s3cret-pass"
NAME, TRIGGER = "apihero", "sks"
TINY = {
    "dataset": {"cache_latents": "memory", "min_bucket_reso": 64, "max_bucket_reso": 128},
    "network": {"rank": 4, "alpha": 2},
    "training": {
        "resolution": 64,
        "epochs": 2,
        "batch_size": 2,
        "mixed_precision": "no",
        "learning_rate": 1e-3,
    },
    "output": {"save_every_epochs": 1, "save_precision": "fp32"},
    "samples": {
        "every_epochs": 1,
        "prompts": [{"prompt": "a sks shape", "steps": 2, "width": 64, "height": 64}],
    },
}


@dataclass(frozen=True)
class Lab:
    host: Host
    root: Path
    lora_dir: Path


def _wait_for_api(host: Host, timeout: float = 360.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    wait_for_startup(host, deadline)
    while time.monotonic() < deadline:
        if host.process.poll() is not None:
            pytest.fail(f"WebUI exited while starting:\n{log_tail(host.log)}")
        try:
            _get(host, "/sdapi/v1/sd-models", auth=True)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(2)
    pytest.fail(f"WebUI API did not answer within {timeout:.0f} s:\n{log_tail(host.log)}")


def _get(host: Host, path: str, auth: bool | tuple[str, str] = True) -> bytes:
    request = urllib.request.Request(f"{host.url}{path}")
    user, password = (USER, PASSWORD) if auth is True else (auth or (None, None))
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=60) as answer:
        return answer.read()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    import torch

    from lib_trainer.models.tiny import write_random_checkpoint

    root = tmp_path_factory.mktemp("host-api")
    given = os.environ.get("SD_WEBUI_TEST_CKPT")
    checkpoint = (
        Path(given).expanduser().resolve()
        if given
        else write_random_checkpoint(
            root / "models" / "Stable-diffusion" / "sd1-random.safetensors",
            "sd1",
            size="full",
            dtype=torch.float16,
        )
    )
    data_dir = root / "webui-data"
    (data_dir / "extensions").mkdir(parents=True)
    (data_dir / "extensions" / "sd-webui-lora-trainer").symlink_to(REPO, target_is_directory=True)
    lora_dir = root / "models" / "Lora"
    args = [
        "--api-auth",
        f"{USER}:{PASSWORD}",
        "--ckpt-dir",
        str(checkpoint.parent),
        "--lora-dir",
        str(lora_dir),
        "--ckpt",
        str(checkpoint),
        "--lora-trainer-venv",
        str(REPO / ".venv"),
    ]
    host = start_webui(WEBUI_DIR, HOST_PYTHON, data_dir, root / "webui.log", args)
    try:
        _wait_for_api(host)
        yield Lab(host, root, lora_dir)
    finally:
        stop(host.process)
        sys.stderr.write(f"\nWebUI log: {host.log}\n")
        if not given:
            checkpoint.unlink(missing_ok=True)


def test_routes_need_the_api_auth_credentials(lab: Lab) -> None:
    for auth in (None, (USER, "wrong"), ("other", PASSWORD)):
        for path in ("/lora-trainer/v1/info", "/lora-trainer/v1/jobs"):
            with pytest.raises(urllib.error.HTTPError) as err:
                _get(lab.host, path, auth=auth or False)
            assert err.value.code == 401, (path, auth)
    info = _get(lab.host, "/lora-trainer/v1/info")
    assert b'"lora_dir"' in info and NAME.encode() not in info


def test_docs_list_the_routes(lab: Lab) -> None:
    try:
        schema = _get(lab.host, "/openapi.json").decode()
    except urllib.error.HTTPError as exc:
        pytest.fail(f"/openapi.json: {exc.code}")
    for path in (
        "/lora-trainer/v1/jobs",
        "/lora-trainer/v1/jobs/{job_id}/compare",
        "/lora-trainer/v1/datasets",
    ):
        assert f'"{path}"' in schema, path


def _readme_session():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- scripted-session -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md has no <!-- scripted-session --> python block"
    namespace: dict = {"__name__": "readme_session"}
    exec(compile(match.group(1), "README.md scripted session", "exec"), namespace)  # noqa: S102 - our README
    return namespace["scripted_session"]


def _dataset_zip(root: Path) -> Path:
    from lib_trainer.demo import make_dataset

    folder = make_dataset(root / "dataset", count=4)
    path = root / "dataset.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(folder).as_posix())
    return path


def test_the_readme_session_end_to_end(lab: Lab) -> None:
    session = _readme_session()
    out = lab.root / "session"
    out.mkdir()
    result = session(
        lab.host.url, (USER, PASSWORD), _dataset_zip(lab.root), NAME, TRIGGER, settings=TINY, out=out
    )
    job = result["job"]
    assert job["status"] == "done" and job["output_name"] == NAME, job
    names = sorted(p.name for p in (lab.lora_dir / NAME).glob("*.safetensors"))
    assert names == [f"{NAME}-000001.safetensors", f"{NAME}.safetensors"], names
    assert result["samples"], "the job reported no samples"
    for path in [*result["samples"], result["grid"], result["image"]]:
        with Image.open(path) as image:
            assert image.size[0] >= 64, path
    with Image.open(result["grid"]) as grid:
        parameters = grid.info.get("parameters", "")
        assert "X Type: LoRA NUM" in parameters and 'X Values: "1, final"' in parameters, parameters
    datasets = lab.root / "webui-data" / "outputs" / "lora-trainer" / "datasets"
    assert (datasets / NAME).is_dir() and len(list((datasets / NAME).rglob("*.png"))) == 4
    problems = tracebacks_mentioning(lab.host.log.read_text(errors="replace"), EXT_TRACE_WORDS, trim=True)
    assert not problems, "\n\n".join(problems)


def test_bad_requests_answer_with_json_errors(lab: Lab) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(lab.host, "/lora-trainer/v1/jobs/nope")
    assert err.value.code == 404 and b"nope" in err.value.read()
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../../evil.png", b"x")
    request = urllib.request.Request(
        f"{lab.host.url}/lora-trainer/v1/datasets?name=evil",
        data=evil.getvalue(),
        headers={
            "Content-Type": "application/zip",
            "Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
        },
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    assert err.value.code == 400 and b"evil.png" in err.value.read()
