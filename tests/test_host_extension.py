"""The extension in a real AUTOMATIC1111 WebUI (v1.10.x): installed the way the Extensions tab installs it,
used through its "Train LoRA/DreamBooth" tab in a real browser, updated and removed, with the host's Python packages
never changed.

The steps run in order and share one WebUI (module scope); each test is one step and names it when it fails:

1. The host Python's ``pip freeze`` (and its site-packages listing) is recorded before anything.
2. Install: the repository under test (committed history plus the working tree's uncommitted files) is
   cloned into ``<data dir>/extensions/sd-webui-lora-trainer`` and its installer runs exactly as the WebUI
   runs it (``launch.run_extension_installer``). It builds the trainer environment, reusing the host's
   torch; a second run is a quick no-op; the host's packages are unchanged.
3. The WebUI starts offline on CPU with that data dir and a full-size random SD1 checkpoint; the extension
   loads without a traceback; a baseline image is generated.
4. In headless Chromium (Playwright), the "Train LoRA/DreamBooth" tab shows the loaded checkpoint (screenshot).
5. A 4-step, 2-epoch LoRA is trained from the tab: dataset folder, name, trigger word, a user preset,
   "Compare epochs when done", Start; the progress panel reaches "done" (screenshot). The epoch x strength
   grid made by itself after the job is shown under "Compare epochs"; a second grid with edited strengths
   is made with the button (screenshot); both are PNGs with the X/Y/Z plot's parameters in the job folder.
6. The LoRA, its Lora-card JSON and preview are in the WebUI's Lora folder; the host lists it without a
   refresh call; it changes the image and loads every key; the host model is back and unchanged.
7. The WebUI stops; "update" (the installer again) is a no-op; removing the extension folder leaves the
   host's packages as they were.

Opt-in (marker ``host``), skipped unless ``SD_WEBUI_DIR`` is set (see ``host_support.py`` for
``SD_WEBUI_PYTHON`` and ``SD_WEBUI_HF_HOME``). Further settings:

- ``SD_WEBUI_TEST_CKPT``: an existing full-size SD1 ``.safetensors`` to use instead of making a random one
  (saves ~20 s and 4.3 GB of temp disk).
- ``LORA_TRAINER_TEST_VENV``: a persistent trainer environment (passed as ``--lora-trainer-venv``) instead of
  a fresh one inside the extension folder, to make reruns cheaper.
- ``LORA_TRAINER_SCREENSHOT_DIR``: also copy the screenshots there, and at the end the WebUI log and the
  job's log (pytest keeps only its last few temp folders, and other pytest runs rotate them away).
- ``LORA_TRAINER_CHROMIUM``: the Chromium binary (default ``/usr/bin/chromium`` if present, else
  Playwright's own browser). Needs the ``playwright`` package (``lib_trainer/requirements-dev.txt``).

Example::

    SD_WEBUI_DIR=~/stable-diffusion-webui SD_WEBUI_HF_HOME=~/hf-cache \\
        python -m pytest -m host -x -s tests/test_host_extension.py

Costs: a fresh trainer environment (pip downloads unless cached), ~4.3 GB of temp disk, up to ~15 GiB of
RAM while the host and the trainer both hold the model, several minutes on CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from host_support import (
    EXT_TRACE_WORDS,
    LORA_TRACE_WORDS,
    Generated,
    Host,
    host_env,
    host_paths,
    kill_group,
    log_problems,
    log_tail,
    mean_abs_diff,
    request,
    start_webui,
    stop,
    tracebacks_mentioning,
    txt2img,
    wait_for_api,
)

pytestmark = pytest.mark.host

WEBUI_DIR, HOST_PYTHON = host_paths("the host extension test")

REPO = Path(__file__).resolve().parent.parent
EXT_NAME = "sd-webui-lora-trainer"
LORA_NAME = "hostext_lora"
TRIGGER = "hxtrig"
PROMPT = f"a {TRIGGER} shape"
PRESET_TITLE = "Host test (tiny)"
PRESET = {
    "title": PRESET_TITLE,
    "description": "2 epochs of 2 steps at 64 px",
    "spec": {
        "training": {
            "resolution": 64,
            "max_steps": 4,
            "epochs": 2,
            "batch_size": 6,  # 6 images x 2 repeats: 2 steps per epoch
            "learning_rate": 1e-3,
            "mixed_precision": "no",
            "optimizer": "AdamW",
        },
        "dataset": {"min_bucket_reso": 64, "enable_bucket": True},
        "network": {"rank": 4, "alpha": 2, "train_text_encoder": True},
        "output": {"save_every_epochs": 1, "save_precision": "fp32"},
        "samples": {
            "every_epochs": 1,
            "prompts": [{"prompt": "a photo", "steps": 2, "width": 64, "height": 64}],
        },
    },
}
INSTALL_TIMEOUT_S = 1500.0
NOOP_INSTALL_MAX_S = 20.0
UI_TIMEOUT_MS = 180_000
TRAIN_TIMEOUT_S = 600.0
FAILED_STATUSES = ("failed", "cancelled", "resumable")


@dataclass
class Lab:
    """Everything the steps share: paths, the host snapshot, the running WebUI and browser, timings."""

    root: Path
    data_dir: Path
    ext_dir: Path
    shots: Path
    log: Path
    venv: Path  # the trainer environment the installer builds
    persistent_venv: bool
    snapshot_before: dict[str, Any]
    checkpoint: Path | None = None
    made_checkpoint: bool = False
    dataset: Path | None = None
    host: Host | None = None
    browser: Any = None
    page: Any = None
    playwright: Any = None
    done: set[str] = field(default_factory=set)
    images: dict[str, Generated] = field(default_factory=dict)
    timings: list[tuple[str, float]] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)
    job_id: str | None = None

    def need(self, *steps: str) -> None:
        missing = [s for s in steps if s not in self.done]
        if missing:
            pytest.fail(f"an earlier step did not complete: {', '.join(missing)}")

    def timed(self, label: str, start: float) -> float:
        took = time.monotonic() - start
        self.timings.append((label, took))
        print(f"[host-ext] {label}: {took:.1f} s", flush=True)
        return took


def _say(message: str) -> None:
    print(f"[host-ext] {message}", flush=True)


def _host_snapshot() -> dict[str, Any]:
    """The host Python's `pip freeze --all` and the names in its site-packages folders (a .pth file or a
    package dropped there without pip would not show in pip freeze)."""
    freeze = subprocess.run(
        [str(HOST_PYTHON), "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    listing = subprocess.run(
        [
            str(HOST_PYTHON),
            "-c",
            "import json, os, site; print(json.dumps({d: sorted(n for n in os.listdir(d) if n != '__pycache__')"
            " for d in site.getsitepackages() if os.path.isdir(d)}))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return {"freeze": freeze.splitlines(), "site": json.loads(listing)}


def _assert_host_unchanged(lab: Lab, when: str) -> None:
    now = _host_snapshot()
    before = lab.snapshot_before
    added = sorted(set(now["freeze"]) - set(before["freeze"]))
    removed = sorted(set(before["freeze"]) - set(now["freeze"]))
    assert not added and not removed, f"{when}: the host's pip freeze changed: +{added} -{removed}"
    for folder, names in before["site"].items():
        new = sorted(set(now["site"].get(folder, [])) - set(names))
        gone = sorted(set(names) - set(now["site"].get(folder, [])))
        assert not new and not gone, f"{when}: {folder} changed: +{new} -{gone}"
    _say(f"{when}: host pip freeze ({len(now['freeze'])} packages) and site-packages unchanged")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Step 1 (record the host's packages) and the teardown that always stops the WebUI and the browser."""
    started = time.monotonic()
    root = tmp_path_factory.mktemp("host-ext")
    data_dir = root / "webui-data"
    ext_dir = data_dir / "extensions" / EXT_NAME
    persistent = os.environ.get("LORA_TRAINER_TEST_VENV")
    venv = Path(persistent).expanduser().resolve() if persistent else ext_dir / ".venv"
    snapshot = _host_snapshot()
    state = Lab(
        root=root,
        data_dir=data_dir,
        ext_dir=ext_dir,
        shots=root / "screenshots",
        log=root / "webui.log",
        venv=venv,
        persistent_venv=bool(persistent),
        snapshot_before=snapshot,
    )
    state.timed("step 1: record the host's pip freeze", started)
    _say(f"work folder: {root}")
    try:
        yield state
    finally:
        _close_browser(state)
        if state.host is not None:
            stop(state.host.process)
        _kill_leftover_trainers(state)
        if state.made_checkpoint and state.checkpoint is not None:
            state.checkpoint.unlink(missing_ok=True)  # 4.3 GB; pytest keeps the last few temp dirs
        sys.stderr.write(f"\n[host-ext] WebUI log: {state.log}\n")
        _keep_logs(state)
        for shot in state.screenshots:
            sys.stderr.write(f"[host-ext] screenshot: {shot}\n")
        for label, took in state.timings:
            sys.stderr.write(f"[host-ext] {took:7.1f} s  {label}\n")


def _jobs_dir(lab: Lab) -> Path:
    return lab.data_dir / "outputs" / "lora-trainer" / "jobs"


def _kill_leftover_trainers(lab: Lab) -> None:
    """The job manager starts each trainer in a session of its own (so it survives a WebUI restart):
    stopping the WebUI's process group does not stop it. Kill any the queue file still marks as running."""
    queue = _jobs_dir(lab) / "queue.json"
    try:
        jobs = json.loads(queue.read_text(encoding="utf-8")).get("jobs", [])
    except (OSError, ValueError, AttributeError):
        return
    for job in jobs:
        pid = job.get("pid")
        if not pid or job.get("status") not in ("running", "stopping"):
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone already
        if "lib_trainer" in cmdline:
            _say(f"killing the trainer left running by job {job.get('id')} (pid {pid})")
            kill_group(int(pid))


def _keep_logs(lab: Lab) -> None:
    """Copy the WebUI log and the job's log next to the screenshots in LORA_TRAINER_SCREENSHOT_DIR."""
    extra = os.environ.get("LORA_TRAINER_SCREENSHOT_DIR")
    if not extra:
        return
    target = Path(extra)
    target.mkdir(parents=True, exist_ok=True)
    logs = [(lab.log, "webui.log")]
    if lab.job_id:
        logs += [(_jobs_dir(lab) / lab.job_id / name, f"job-{name}") for name in ("log", "process.log")]
    for src, name in logs:
        if src.is_file():
            shutil.copy2(src, target / name)
            sys.stderr.write(f"[host-ext] copied {src} to {target / name}\n")


# ------------------------------------------------------------------ step 2: install


def _copy_of_the_repository(lab: Lab) -> None:
    """What "Install from URL" does (git clone into <data dir>/tmp, then move into extensions/), from this
    repository, with the working tree's uncommitted and untracked (not ignored) files laid over the clone."""
    staging = lab.data_dir / "tmp" / EXT_NAME
    staging.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(staging)], check=True, timeout=300)
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    copied = deleted = 0
    for rel in sorted({p for p in listed.split("\0") if p}):
        src, dst = REPO / rel, staging / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            copied += 1
        elif dst.is_file() or dst.is_symlink():  # tracked but deleted in the working tree
            dst.unlink()
            deleted += 1
    lab.ext_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(lab.ext_dir))
    head = subprocess.run(
        ["git", "-C", str(lab.ext_dir), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    _say(
        f"cloned {REPO} (HEAD {head}) into {lab.ext_dir}; {copied} working-tree files laid over, {deleted} removed"
    )


def _run_installer(lab: Lab) -> tuple[str, float]:
    """`launch.run_extension_installer(<ext dir>)` in the host's Python, as the Extensions tab and a WebUI
    start run it: cwd the WebUI, PYTHONPATH the WebUI, the WebUI's flags in COMMANDLINE_ARGS."""
    flags = f"--data-dir {lab.data_dir}"
    extra = {"PYTHONPATH": str(WEBUI_DIR)}
    if lab.persistent_venv:
        flags += f" --lora-trainer-venv {lab.venv}"
        extra["LORA_TRAINER_VENV"] = str(lab.venv)
    env = host_env(COMMANDLINE_ARGS=flags, **extra)
    code = f"import launch; launch.run_extension_installer({str(lab.ext_dir)!r})"
    started = time.monotonic()
    result = subprocess.run(
        [str(HOST_PYTHON), "-c", code],
        cwd=WEBUI_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    took = time.monotonic() - started
    output = result.stdout + result.stderr
    # run_extension_installer reports a failing install.py (errors.report) but does not raise or exit non-zero
    assert result.returncode == 0 and "Error running install.py" not in output, output[-6000:]
    return output, took


def test_2_install_like_the_extensions_tab(lab: Lab) -> None:
    started = time.monotonic()
    _copy_of_the_repository(lab)
    output, took = _run_installer(lab)
    _say(f"installer output:\n{output.strip()[-3000:]}")
    lab.timed("step 2: first installer run", started)
    python = lab.venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    assert python.is_file(), f"step 2: no trainer environment at {lab.venv}:\n{output[-3000:]}"
    assert (lab.venv / "lora-trainer-install.json").is_file(), output[-3000:]
    if lab.persistent_venv:
        assert "trainer environment ready" in output or "up to date" in output, output[-3000:]
    else:
        assert "trainer environment ready" in output, output[-3000:]

    # The trainer environment sees the host's torch (no second torch) and our own pinned libraries.
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import json, torch, diffusers, lib_trainer; "
            "print(json.dumps({'torch': torch.__file__, 'diffusers': diffusers.__file__}))",
        ],
        cwd=lab.ext_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, f"step 2: the trainer environment does not import:\n{probe.stderr[-3000:]}"
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    host_sites = [Path(d).resolve() for d in lab.snapshot_before["site"]]
    assert any(Path(found["torch"]).resolve().is_relative_to(d) for d in host_sites), found
    assert Path(found["diffusers"]).resolve().is_relative_to(lab.venv.resolve()), found

    again, took_again = _run_installer(lab)
    lab.timings.append(("step 2: second installer run (no-op)", took_again))
    _say(f"second installer run took {took_again:.2f} s: {again.strip()[-300:]}")
    assert "up to date" in again, f"step 2: the second installer run was not a no-op:\n{again[-3000:]}"
    assert took_again < NOOP_INSTALL_MAX_S, f"step 2: the no-op installer run took {took_again:.1f} s"
    _assert_host_unchanged(lab, "step 2 (after install)")
    lab.done.add("install")


# ------------------------------------------------------------------ step 3: start


def _make_checkpoint(lab: Lab) -> None:
    given = os.environ.get("SD_WEBUI_TEST_CKPT")
    if given:
        lab.checkpoint = Path(given).expanduser().resolve()
        assert lab.checkpoint.is_file(), f"SD_WEBUI_TEST_CKPT={given} is not a file"
        return
    target = lab.data_dir / "models" / "Stable-diffusion" / "hostext-sd1.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "lib_trainer", "tiny-model", "--arch", "sd1", "--size", "full", str(target)],
        cwd=REPO,
        check=True,
        timeout=900,
    )
    lab.checkpoint, lab.made_checkpoint = target, True
    lab.timed("step 3: make a full-size random SD1 checkpoint", started)


def test_3_webui_starts_with_the_extension(lab: Lab) -> None:
    lab.need("install")
    from lib_trainer.demo import make_dataset

    _make_checkpoint(lab)
    assert lab.checkpoint is not None
    lab.dataset = make_dataset(lab.root / "dataset", count=6, trigger=TRIGGER)
    presets = lab.data_dir / "outputs" / "lora-trainer" / "presets"
    presets.mkdir(parents=True, exist_ok=True)
    (presets / "hostlab-tiny.json").write_text(json.dumps(PRESET, indent=1), encoding="utf-8")

    args = ["--ckpt", str(lab.checkpoint)]
    if lab.persistent_venv:
        args += ["--lora-trainer-venv", str(lab.venv)]
    started = time.monotonic()
    lab.host = start_webui(WEBUI_DIR, HOST_PYTHON, lab.data_dir, lab.log, args)
    _say(f"WebUI at {lab.host.url} (pid {lab.host.process.pid}), log {lab.log}")
    wait_for_api(lab.host, lab.checkpoint)
    lab.timed("step 3: WebUI start until the API answers", started)
    started = time.monotonic()
    lab.images["plain_before"] = txt2img(lab.host, PROMPT)  # also waits for the model to be loaded
    lab.timed("step 3: model loaded and a baseline image generated", started)

    log = lab.log.read_text(errors="replace")
    ours = tracebacks_mentioning(log, EXT_TRACE_WORDS, trim=True)
    assert not ours, "step 3: tracebacks from the extension at startup:\n\n" + "\n\n".join(ours)
    errors = [
        line
        for line in log.splitlines()
        if line.startswith("***") and any(w in line for w in EXT_TRACE_WORDS)
    ]
    assert not errors, "step 3: the WebUI reported errors for the extension:\n" + "\n".join(errors)
    extensions = request(f"{lab.host.url}/sdapi/v1/extensions", timeout=60)
    ours_listed = [e for e in extensions if e.get("name") == EXT_NAME]
    assert ours_listed and ours_listed[0].get("enabled"), f"step 3: not an enabled extension: {extensions}"
    lab.done.add("start")


# ------------------------------------------------------------------ steps 4-5: the tab in a browser


def _close_browser(lab: Lab) -> None:
    for closer in (lab.browser, lab.playwright):
        if closer is None:
            continue
        try:
            closer.close() if closer is lab.browser else closer.stop()
        except Exception as exc:  # noqa: BLE001 - teardown must go on to stop the WebUI
            _say(f"closing the browser failed: {exc}")
    lab.browser = lab.page = lab.playwright = None


def _open_browser(lab: Lab) -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser steps need playwright: pip install -r lib_trainer/requirements-dev.txt")
    chromium = os.environ.get("LORA_TRAINER_CHROMIUM") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    lab.playwright = sync_playwright().start()
    lab.browser = lab.playwright.chromium.launch(executable_path=chromium, headless=True)
    lab.page = lab.browser.new_page(viewport={"width": 1400, "height": 1000})
    lab.page.set_default_timeout(60_000)
    return lab.page


def _screenshot(lab: Lab, name: str) -> Path | None:
    if lab.page is None:
        return None
    lab.shots.mkdir(parents=True, exist_ok=True)
    path = lab.shots / f"{name}.png"
    try:
        lab.page.screenshot(path=str(path), full_page=True)
    except Exception as exc:  # noqa: BLE001 - a failed screenshot must not hide the real failure
        _say(f"screenshot {name} failed: {exc}")
        return None
    lab.screenshots.append(path)
    extra = os.environ.get("LORA_TRAINER_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(extra) / path.name)
    _say(f"screenshot: {path}")
    return path


def _text(lab: Lab, selector: str) -> str:
    try:
        loc = lab.page.locator(selector)
        return loc.first.inner_text(timeout=5_000) if loc.count() else f"({selector} not on the page)"
    except Exception as exc:  # noqa: BLE001 - only for failure messages
        return f"({selector}: {exc})"


def _fail(lab: Lab, step: str, what: str) -> None:
    shot = _screenshot(lab, f"failed-{step.replace(' ', '-')}")
    details = "\n".join(
        f"{sel}: {_text(lab, sel)[:1500]}"
        for sel in ("#lora_trainer_message", "#lora_trainer_dataset_summary", "#lora_trainer_progress")
    )
    pytest.fail(f"{step}: {what}\nscreenshot: {shot}\n{details}\nWebUI log tail:\n{log_tail(lab.log, 3000)}")


def _textbox(lab: Lab, elem_id: str) -> Any:
    """The <textarea> or <input> of a gradio 3 textbox."""
    return lab.page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def _type(lab: Lab, elem_id: str, value: str) -> None:
    box = _textbox(lab, elem_id)
    box.fill(value)
    box.press("Tab")  # blur: the tab's handlers listen to blur/submit


def test_4_tab_shows_the_loaded_checkpoint(lab: Lab) -> None:
    lab.need("start")
    assert lab.host is not None and lab.checkpoint is not None
    started = time.monotonic()
    page = _open_browser(lab)
    page.goto(lab.host.url, wait_until="domcontentloaded", timeout=UI_TIMEOUT_MS)
    tab = page.locator("#tabs > .tab-nav button", has_text=re.compile(r"^\s*Train LoRA/DreamBooth\s*$"))
    try:
        tab.first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    except Exception:  # noqa: BLE001 - report what the page has instead
        names = page.locator("#tabs > .tab-nav button").all_inner_texts()
        _fail(lab, "step 4", f'no top-level tab "Train LoRA/DreamBooth"; the tabs are {names}')
    # The tab's browser script polls the server as soon as the tab is on screen; that poll also refreshes
    # the model panel, which was rendered when the UI was built (before the host finished loading the model).
    try:
        with page.expect_response(_is_gradio_call, timeout=60_000):
            tab.first.click()
    except Exception:  # noqa: BLE001
        _fail(lab, "step 4", "opening the tab made no request: the tab's poll script did not run")
    try:
        page.locator("#lora_trainer_start").wait_for(state="visible", timeout=60_000)
    except Exception:  # noqa: BLE001
        _fail(lab, "step 4", "#lora_trainer_start did not become visible after clicking the tab")
    page.wait_for_timeout(1000)
    lab.timed("step 4: UI loaded and the tab opened", started)
    _screenshot(lab, "01-train-lora-tab")
    shown = _text(lab, "#lora_trainer_model")
    if lab.checkpoint.stem not in shown:
        _fail(
            lab,
            "step 4",
            f"#lora_trainer_model does not name the loaded checkpoint {lab.checkpoint.stem}: {shown!r}",
        )
    if not re.search(r"\bSD ?1", shown):
        _fail(lab, "step 4", f"#lora_trainer_model does not give the loaded model's type (SD 1.x): {shown!r}")
    _say(f"#lora_trainer_model: {shown!r}")
    lab.done.add("tab")


def _is_gradio_call(response: Any) -> bool:
    """A gradio 3 event handler's answer (queue=False handlers answer on /run/predict)."""
    return "/run/predict" in response.url or "/api/predict" in response.url


def _choose_preset(lab: Lab) -> None:
    """gradio 3.41 dropdown: click its input, type to filter, click the option in its list."""
    box = lab.page.locator("#lora_trainer_preset input").first
    box.click()
    box.fill(PRESET_TITLE)
    option = lab.page.locator(f'#lora_trainer_preset ul.options li[data-value="{PRESET_TITLE}"]').first
    try:
        option.wait_for(state="visible", timeout=15_000)
    except Exception:  # noqa: BLE001
        options = lab.page.locator("#lora_trainer_preset ul.options li").all_inner_texts()
        _fail(lab, "step 5", f'the preset list has no "{PRESET_TITLE}"; it shows {options}')
    option.click()
    value = box.input_value()
    if value.strip() != PRESET_TITLE:
        _fail(lab, "step 5", f"the preset dropdown shows {value!r} after choosing {PRESET_TITLE!r}")
    # The preset fills in the advanced settings (elem_id lora_trainer_<section>_<field>) through a request:
    # Start must not be clicked before they show the preset's values.
    want = {"training_resolution": "64", "training_max_steps": "4", "network_rank": "4"}
    got: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = {}
        for key in want:
            try:
                got[key] = _textbox(lab, f"lora_trainer_{key}").input_value(timeout=2_000).strip()
            except Exception as exc:  # noqa: BLE001 - not rendered (yet)
                got[key] = f"({exc.__class__.__name__})"
        if all(got[k] == v or got[k].replace(".0", "") == v for k, v in want.items()):
            return
        time.sleep(0.5)
    _fail(lab, "step 5", f"the advanced settings do not show the preset's values: wanted {want}, shown {got}")


def _job_log(lab: Lab) -> str:
    """The job's log (or, if the trainer never got that far, its process output) for failure messages."""
    folders = [_jobs_dir(lab) / lab.job_id] if lab.job_id else sorted(_jobs_dir(lab).glob("*/"))
    for folder in reversed(folders):
        for name in ("log", "process.log"):
            if (folder / name).is_file():
                return f"{folder / name}:\n{(folder / name).read_text(errors='replace')[-4000:]}"
    return f"(no job log under {_jobs_dir(lab)})"


def _check_job_spec(lab: Lab) -> None:
    """The job the tab submitted carries what was typed in and the preset's settings (a job with the
    defaults, 512 px and 10 epochs, would run for an hour on a CPU: stop it and say so at once)."""
    path = _jobs_dir(lab) / str(lab.job_id) / "job.json"
    if not path.is_file():
        return
    spec = json.loads(path.read_text(encoding="utf-8"))
    got = {
        "name": spec.get("name"),
        "dataset.path": os.path.realpath(spec.get("dataset", {}).get("path", "")),
        "dataset.trigger_word": spec.get("dataset", {}).get("trigger_word"),
        "model.checkpoint": Path(spec.get("model", {}).get("checkpoint", "")).name,
        "training.max_steps": spec.get("training", {}).get("max_steps"),
        "training.resolution": spec.get("training", {}).get("resolution"),
        "network.rank": spec.get("network", {}).get("rank"),
        "network.train_text_encoder": spec.get("network", {}).get("train_text_encoder"),
        "output.dir": os.path.realpath(spec.get("output", {}).get("dir", "")),
    }
    want = {
        "name": LORA_NAME,
        "dataset.path": os.path.realpath(str(lab.dataset)),
        "dataset.trigger_word": TRIGGER,
        "model.checkpoint": lab.checkpoint.name if lab.checkpoint else None,
        "training.max_steps": 4,
        "training.resolution": 64,
        "network.rank": 4,
        "network.train_text_encoder": True,
        "output.dir": os.path.realpath(lab.data_dir / "models" / "Lora"),
    }
    if got["training.resolution"] in ([64, 64], (64, 64)):
        got["training.resolution"] = 64
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    if wrong:
        with contextlib.suppress(Exception):  # the finalizer kills the trainer anyway
            lab.page.locator("#lora_trainer_cancel").first.click(timeout=5_000)
        _fail(
            lab, "step 5", f"the submitted job {path} differs from the form and preset (got, wanted): {wrong}"
        )
    _say(f"submitted job spec {path} matches the form and the preset")


def test_5_train_through_the_tab(lab: Lab) -> None:
    lab.need("tab")
    assert lab.dataset is not None
    page = lab.page
    started = time.monotonic()
    _type(lab, "lora_trainer_dataset", str(lab.dataset))
    summary = ""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        summary = _text(lab, "#lora_trainer_dataset_summary")
        if re.search(r"\b6 images?\b", summary):
            break
        time.sleep(1)
    else:
        _fail(lab, "step 5", f"the dataset summary never mentioned 6 images: {summary!r}")
    _say(f"dataset summary: {summary[:300]!r}")
    _type(lab, "lora_trainer_name", LORA_NAME)
    _type(lab, "lora_trainer_trigger", TRIGGER)
    _choose_preset(lab)
    page.locator("#lora_trainer_compare_when_done input").first.check()
    _screenshot(lab, "02-filled-in")
    page.locator("#lora_trainer_start").click()
    lab.timed("step 5: form filled in and Start clicked", started)

    started = time.monotonic()
    panel = page.locator("#lora_trainer_progress .lora-trainer-progress")
    status, last = "", ""
    while time.monotonic() - started < TRAIN_TIMEOUT_S:
        if lab.host is not None and lab.host.process.poll() is not None:
            _fail(lab, "step 5", f"the WebUI exited with {lab.host.process.returncode} during training")
        status, job = "", None
        try:
            if panel.count():
                status = panel.first.get_attribute("data-status", timeout=2_000) or ""
                job = panel.first.get_attribute("data-job", timeout=2_000)
        except Exception:  # noqa: BLE001 - the panel is being re-rendered; look again
            pass
        if job and job != lab.job_id:
            lab.job_id = job
            _check_job_spec(lab)
        if status != last:
            _say(f"{time.monotonic() - started:6.1f} s: progress status {status!r} (job {lab.job_id})")
            last = status
        if status == "done":
            break
        if status in FAILED_STATUSES:
            _fail(lab, "step 5", f"the job ended {status!r}\njob log: {_job_log(lab)}")
        if status in ("", "idle") and time.monotonic() - started > 60:
            _fail(
                lab, "step 5", f"no job appeared in the progress panel 60 s after Start (status {status!r})"
            )
        time.sleep(2)
    else:
        _fail(
            lab,
            "step 5",
            f"the job was not done after {TRAIN_TIMEOUT_S:.0f} s (status {status!r})\n{_job_log(lab)}",
        )
    lab.timed("step 5: training until the progress panel says done", started)
    page.wait_for_timeout(1500)  # let the finished panel, gallery and log render
    _screenshot(lab, "03-done")
    _say(f"job log: {_job_log(lab)[:200]}")
    lab.done.add("trained")


COMPARE_TIMEOUT_S = 600.0  # the default grid: 2 epochs x 4 strengths x 20 steps, ~5 min on CPU


def _grid_files(lab: Lab) -> list[Path]:
    return sorted((_jobs_dir(lab) / str(lab.job_id) / "compare").glob("grid-*.png"))


def _check_grid_png(path: Path, strengths: str) -> None:
    from PIL import Image

    with Image.open(path) as image:
        parameters = image.info.get("parameters", "")
        size = image.size
    assert "X Type: LoRA NUM" in parameters and 'X Values: "1, final"' in parameters, parameters
    assert "Y Type: LoRA STRENGTH" in parameters and f'Y Values: "{strengths}"' in parameters, parameters
    assert size[0] > 2 * 64 and size[1] > 2 * 64, f"{path} is {size}: not a 2 x N grid of 64 px cells"


def test_5b_compare_epochs_in_the_tab(lab: Lab) -> None:
    lab.need("trained")
    page = lab.page
    started = time.monotonic()
    while not _grid_files(lab) and time.monotonic() - started < COMPARE_TIMEOUT_S:
        time.sleep(2)
    grids = _grid_files(lab)
    if not grids:
        settings = _jobs_dir(lab) / str(lab.job_id) / "webui.json"
        state = settings.read_text() if settings.is_file() else "(no webui.json)"
        _fail(lab, "step 5b", f"no comparison grid {COMPARE_TIMEOUT_S:.0f} s after the job; {state}")
    lab.timed("step 5b: the grid made after the job", started)
    _check_grid_png(grids[0], "0.4, 0.6, 0.8, 1")

    page.locator("#lora_trainer_compare_panel").first.click()  # open the accordion
    page.locator("#lora_trainer_compare_reset").first.click()
    image = page.locator("#lora_trainer_compare_grid img")
    try:
        image.first.wait_for(state="visible", timeout=60_000)
    except Exception:  # noqa: BLE001
        _fail(lab, "step 5b", "Reset to job defaults did not show the job's grid")
    epochs = _textbox(lab, "lora_trainer_compare_epochs").input_value()
    assert epochs == "1, final", f"step 5b: the epochs field shows {epochs!r}"
    prompt = _textbox(lab, "lora_trainer_compare_prompt").input_value()
    assert f"<lora:{LORA_NAME}:1>" in prompt, f"step 5b: the prompt field shows {prompt!r}"

    started = time.monotonic()
    _type(lab, "lora_trainer_compare_strengths", "0, 1")
    page.locator("#lora_trainer_compare").first.click()
    message = ""
    while time.monotonic() - started < COMPARE_TIMEOUT_S:
        message = _text(lab, "#lora_trainer_compare_message")
        if "Grid saved" in message or "lora-trainer-problems" in message or len(_grid_files(lab)) > 1:
            break
        time.sleep(1)
    page.wait_for_timeout(1500)
    _screenshot(lab, "04-compare-epochs")
    grids = _grid_files(lab)
    if len(grids) < 2:
        _fail(lab, "step 5b", f"Make comparison grid made no second grid; message: {message!r}")
    lab.timed("step 5b: a grid with edited strengths from the button", started)
    _check_grid_png(grids[-1], "0, 1")
    lab.done.add("compared")


# ------------------------------------------------------------------ step 6: results


def test_6_lora_lands_in_the_host_and_works(lab: Lab) -> None:
    lab.need("trained")
    assert lab.host is not None
    family = lab.data_dir / "models" / "Lora" / LORA_NAME
    lora = family / f"{LORA_NAME}.safetensors"
    listing = sorted(str(p.relative_to(lab.data_dir)) for p in (lab.data_dir / "models" / "Lora").rglob("*"))
    assert lora.is_file(), f"step 6: no {lora}; the Lora folder holds {listing}"
    card = json.loads((family / f"{LORA_NAME}.json").read_text(encoding="utf-8"))
    assert card.get("activation text") == TRIGGER, f"step 6: Lora card JSON {card}"
    assert (family / f"{LORA_NAME}.preview.png").is_file(), f"step 6: no preview image; files: {listing}"

    # No refresh-loras call: the extension rescans the host's Lora list itself when the job finishes.
    loras = request(f"{lab.host.url}/sdapi/v1/loras", timeout=60)
    names = [entry.get("name") for entry in loras]
    assert LORA_NAME in names, f"step 6: the host does not list {LORA_NAME} (without a refresh): {names}"

    started = time.monotonic()
    lab.images["plain_after"] = txt2img(lab.host, PROMPT)  # generating works after the GPU handoff
    lab.timed("step 6: first image after training (no LoRA)", started)
    started = time.monotonic()
    lab.images["lora"] = txt2img(lab.host, f"{PROMPT} <lora:{LORA_NAME}:1>")
    lab.timed("step 6: image with the LoRA", started)
    before, after = lab.images["plain_before"], lab.images["plain_after"]
    assert np.array_equal(before.pixels, after.pixels), (
        "step 6: the same seed without the LoRA gives another image after training "
        f"(mean abs diff {mean_abs_diff(before, after):.3f}): the host model was not restored as it was"
    )
    diff = mean_abs_diff(lab.images["lora"], after)
    _say(f"mean abs pixel difference with <lora:{LORA_NAME}:1>: {diff:.3f}")
    assert diff > 0, "step 6: the LoRA does not change the image"

    infotext = lab.images["lora"].infotext
    assert "Networks with errors" not in infotext and "Lora not found" not in infotext, infotext
    assert re.search(rf'Lora hashes: "[^"]*\b{LORA_NAME}: ', infotext), infotext
    log = lab.log.read_text(errors="replace")
    problems = log_problems(log)
    assert not problems, "step 6: the Lora loader complained:\n" + "\n".join(problems)
    ours = tracebacks_mentioning(log, (*LORA_TRACE_WORDS, *EXT_TRACE_WORDS, LORA_NAME), trim=True)
    assert not ours, "step 6: tracebacks in the WebUI log:\n\n" + "\n\n".join(ours)
    lab.done.add("results")


# ------------------------------------------------------------------ step 7: stop, update, remove


def test_7_stop_update_and_remove(lab: Lab) -> None:
    lab.need("install")
    _close_browser(lab)
    if lab.host is not None:
        started = time.monotonic()
        stop(lab.host.process)
        lab.timed("step 7: stop the WebUI", started)
        assert lab.host.process.poll() is not None
        lab.host = None

    output, took = _run_installer(lab)  # what a WebUI start (or an update's restart) runs
    lab.timings.append(("step 7: installer after an update (no-op)", took))
    _say(f"update: installer run took {took:.2f} s")
    assert "up to date" in output, f"step 7: the installer after an update was not a no-op:\n{output[-3000:]}"
    _assert_host_unchanged(lab, "step 7 (after update)")

    shutil.rmtree(lab.ext_dir)
    assert not lab.ext_dir.exists()
    if lab.persistent_venv:
        _say(f"removal: the persistent trainer environment {lab.venv} stays (LORA_TRAINER_TEST_VENV)")
    _assert_host_unchanged(lab, "step 7 (after removal)")
