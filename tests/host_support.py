"""Helpers for the real-host tests (marker ``host``): find the WebUI, start and stop it, talk to its API.

The host tests run only when a WebUI checkout is configured; otherwise they skip:

- ``SD_WEBUI_DIR``: the WebUI checkout (the folder holding ``launch.py``). Required.
- ``SD_WEBUI_PYTHON``: the host's Python. Default: ``$SD_WEBUI_DIR/venv/bin/python``.
- ``SD_WEBUI_HF_HOME``: ``HF_HOME`` for the host. Offline, the host's first model load needs the CLIP
  ViT-L/14 tokenizer and text config in a Hugging Face hub cache; our lab keeps a ready one in
  ``shared/host-lab/hf-cache`` of the work area (see ``shared/research/host-lab.md``). Default: inherited.

The WebUI always runs offline, on the CPU in fp32, bound to 127.0.0.1, in a process group of its own (so
stopping it also stops what it started), with a temp ``--data-dir`` and its output in a log file.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

START_TIMEOUT_S = 360.0
REQUEST_TIMEOUT_S = 600.0
# What A1111's Lora loader prints (with --loglevel DEBUG) when a file or some of its keys do not load.
LOG_PROBLEMS = (
    "didn't match keys",
    "Failed to match keys",
    "unmatched",
    "Failed to load network",
    "loading network",
    "Couldn't find network",
    "Lora not found",
    "Networks with errors",
    "couldn't find supported operation",
)
# A traceback that mentions one of these came from (or through) the Lora extension; others are not ours.
# The extension's own names: a traceback mentioning one of them came from (or through) our code.
EXT_TRACE_WORDS = ("sd-webui-lora-trainer", "lib_trainer", "lora_trainer")
LORA_TRACE_WORDS = ("extensions-builtin/Lora", "networks.py", "network.py", "lora")
# Offline, CPU, fp32, API on, no installs, no downloads, the Lora loader's key-matching messages in the log.
WEBUI_FLAGS = (
    "--api",
    "--skip-prepare-environment",
    "--skip-install",
    "--skip-python-version-check",
    "--skip-torch-cuda-test",
    "--skip-version-check",
    "--use-cpu",
    "all",
    "--no-half",
    "--precision",
    "full",
    "--no-download-sd-model",
    "--loglevel",
    "DEBUG",
)


def host_paths(what: str = "the host tests") -> tuple[Path, Path]:
    """The WebUI checkout and its Python, or skip the calling module saying what to set."""
    webui = os.environ.get("SD_WEBUI_DIR")
    if not webui:
        pytest.skip(f"set SD_WEBUI_DIR to an A1111 WebUI checkout to run {what}", allow_module_level=True)
    webui_dir = Path(webui).expanduser()
    if not (webui_dir / "launch.py").is_file():
        pytest.skip(
            f"SD_WEBUI_DIR={webui_dir} has no launch.py; point it at an A1111 WebUI checkout",
            allow_module_level=True,
        )
    python = os.environ.get("SD_WEBUI_PYTHON")
    host_python = Path(python).expanduser() if python else webui_dir / "venv" / "bin" / "python"
    if not host_python.is_file():
        pytest.skip(
            f"no host Python at {host_python}; set SD_WEBUI_PYTHON to the WebUI's Python",
            allow_module_level=True,
        )
    return webui_dir, host_python


def host_env(**extra: str) -> dict[str, str]:
    """The environment the host runs in: offline, unbuffered, our HF cache, no inherited COMMANDLINE_ARGS
    (A1111 appends that variable to its argv; a run is defined by the flags the test passes)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("COMMANDLINE_ARGS", None)
    if os.environ.get("SD_WEBUI_HF_HOME"):
        env["HF_HOME"] = os.environ["SD_WEBUI_HF_HOME"]
    env.update(extra)
    return env


@dataclass(frozen=True)
class Host:
    """A running WebUI: its base URL (API and UI) and the log file its stdout and stderr go to."""

    url: str
    log: Path
    process: subprocess.Popen
    log_start: int = 0
    """The log's size when this process started (a restarted host appends to the same log)."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the host binds it a few seconds later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_webui(
    webui_dir: Path,
    python: Path,
    data_dir: Path,
    log: Path,
    args: Sequence[str],
    env: dict[str, str] | None = None,
) -> Host:
    """Start `launch.py` with WEBUI_FLAGS, a free port, `--data-dir data_dir` and `args`, in a new session
    (its own process group). The caller must `stop()` it; `wait_for_api()` waits until it answers."""
    port = free_port()
    cmd = [str(python), "launch.py", *WEBUI_FLAGS, "--port", str(port), "--data-dir", str(data_dir), *args]
    log_start = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        process = subprocess.Popen(
            cmd,
            cwd=webui_dir,
            env=env if env is not None else host_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Host(f"http://127.0.0.1:{port}", log, process, log_start)


def request(url: str, payload: dict[str, Any] | None = None, timeout: float = REQUEST_TIMEOUT_S) -> Any:
    """GET (or POST `payload` as JSON) and decode the JSON answer; urllib keeps the test dependency-free."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        # urllib's message is only "Not Found"; the host's answer says why. The body stays readable.
        body = exc.read()
        raise urllib.error.HTTPError(
            url, exc.code, f"{exc.msg}: {body[:2000].decode(errors='replace')}", exc.headers, io.BytesIO(body)
        ) from None


def log_tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


STARTED_LINE = "Startup time:"
"""What A1111 prints once its server is fully set up (webui.py, after `create_api` and after the
`app_started` callbacks, where extensions such as ours add their routes)."""


def wait_for_startup(host: Host, deadline: float) -> None:
    """Wait for STARTED_LINE in the host's log before sending it any request. A1111 v1.10 adds its API
    middleware after the server is already answering, and starlette refuses that once a request has built the
    app's middleware stack: a poll that lands in that window kills the WebUI at start ("Cannot add middleware
    after an application has started"; it took 2 of 6 starts of one host run on this 2-core CPU). And the
    built-in API answers before the extensions' `app_started` callbacks have added their routes, so an answer
    from /sdapi/v1/sd-models alone could be followed by a 404 from ours."""
    while time.monotonic() < deadline:
        if host.process.poll() is not None:
            pytest.fail(f"WebUI exited with {host.process.returncode} while starting:\n{log_tail(host.log)}")
        if host.log.exists():
            with host.log.open("rb") as log:
                log.seek(host.log_start)
                if STARTED_LINE.encode() in log.read():
                    return
        time.sleep(1)
    pytest.fail(f"WebUI did not finish starting (no {STARTED_LINE!r} in its log):\n{log_tail(host.log)}")


def wait_for_api(host: Host, checkpoint: Path, timeout: float = START_TIMEOUT_S) -> None:
    """Poll /sdapi/v1/sd-models, once the host has started, until it lists `checkpoint`; fail early if the host
    process dies."""
    deadline = time.monotonic() + timeout
    wait_for_startup(host, deadline)
    while time.monotonic() < deadline:
        if host.process.poll() is not None:
            pytest.fail(f"WebUI exited with {host.process.returncode} while starting:\n{log_tail(host.log)}")
        try:
            models = request(f"{host.url}/sdapi/v1/sd-models", timeout=10)
            if any(Path(m["filename"]).name == checkpoint.name for m in models):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        time.sleep(2)
    pytest.fail(f"WebUI API did not answer within {timeout:.0f} s:\n{log_tail(host.log)}")


def stop(process: subprocess.Popen) -> None:
    """Terminate the host's whole process group (launch.py starts the server in the same group)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass


def kill_group(pid: int) -> None:
    """SIGKILL whatever is left of a process group (e.g. a trainer the server started), ignoring a gone one."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Generated:
    """One txt2img result: the image as a uint8 array and its infotext."""

    pixels: np.ndarray
    infotext: str


def txt2img_payload(prompt: str) -> dict[str, Any]:
    """A 64x64, 2-step Euler request with a fixed seed: cheap on CPU and deterministic for the same prompt."""
    return {
        "prompt": prompt,
        "negative_prompt": "",
        "seed": 1234,
        "subseed": -1,
        "subseed_strength": 0,
        "sampler_name": "Euler",
        "scheduler": "Automatic",
        "steps": 2,
        "cfg_scale": 7,
        "width": 64,
        "height": 64,
        "batch_size": 1,
        "n_iter": 1,
        "send_images": True,
        "save_images": False,
        # Live previews would want models/VAE-approx under the empty --data-dir (a download, offline).
        "override_settings": {"live_previews_enable": False},
    }


def txt2img(host: Host, prompt: str) -> Generated:
    """The image of `txt2img_payload(prompt)` and its infotext."""
    payload = txt2img_payload(prompt)
    answer = request(f"{host.url}/sdapi/v1/txt2img", payload)
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB")
    info = json.loads(answer["info"])
    return Generated(np.asarray(image), info["infotexts"][0])


def mean_abs_diff(a: Generated, b: Generated) -> float:
    """Mean absolute difference of two images' pixels (0..255)."""
    return float(np.abs(a.pixels.astype(np.int16) - b.pixels.astype(np.int16)).mean())


def log_problems(log_text: str) -> list[str]:
    """Lines of a host log that show the Lora loader did not load a file or some of its keys."""
    return [
        line
        for line in log_text.splitlines()
        if any(p.lower() in line.lower() for p in LOG_PROBLEMS) and not _only_bundled_embeddings(line)
    ]


_UNMATCHED = re.compile(r"didn't match keys: (\{.*\})\s*$")


def _only_bundled_embeddings(line: str) -> bool:
    """A1111's `load_network` reads `bundle_emb.*` entries as embeddings and then also lists them among the
    keys that matched no layer (it does not skip them); a line naming only those is not a problem."""
    match = _UNMATCHED.search(line)
    if not match:
        return False
    try:
        keys = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return False
    return bool(keys) and all(str(k).startswith("bundle_emb.") for k in keys)


def tracebacks_mentioning(
    log_text: str, words: Sequence[str], chars: int = 3000, trim: bool = False
) -> list[str]:
    """The tracebacks in a log (the `chars` after each "Traceback") that mention any of `words`.

    With `trim`, each one ends where the traceback does (its indented lines, plus the exception line when
    that is not indented), so log lines printed after it neither match nor clutter the report.
    """
    found = [log_text[m.start() : m.start() + chars] for m in re.finditer("Traceback", log_text)]
    if trim:
        found = [_trim_traceback(tb) for tb in found]
    return [tb for tb in found if any(word in tb for word in words)]


def _trim_traceback(excerpt: str) -> str:
    lines = excerpt.splitlines()
    kept = lines[:1]
    for line in lines[1:]:
        if line[:1].isspace():
            kept.append(line)
            continue
        if line.strip() and not line.startswith("---"):
            kept.append(line)  # the exception line of an unindented traceback
        break
    return "\n".join(kept)


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, read with the standard library only."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size)).get("__metadata__", {})
