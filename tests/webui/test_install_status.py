"""read_install_status: what the Train LoRA tab believes about the trainer environment, from install.py's
status file and the venv itself (a status file must never claim "ready" for a venv that is gone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib_trainer.webui.install_status import MARKER_NAME, STATUS_NAME, install_command, read_install_status

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_status_override(monkeypatch):
    monkeypatch.delenv("LORA_TRAINER_STATUS_FILE", raising=False)


def make_venv(venv: Path, marker: bool = True) -> Path:
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    python.parent.mkdir(parents=True)
    python.write_text("")
    if marker:
        (venv / MARKER_NAME).write_text("{}")
    return venv


def write_status(root: Path, venv: Path, ok: bool, message: str = "m", fix: str = "f", when=None) -> None:
    status = {"ok": ok, "venv": str(venv), "message": message, "fix": fix, "time": when or time.time()}
    (root / STATUS_NAME).write_text(json.dumps(status))


def test_ready_venv_without_status_file_is_ok(tmp_path):
    venv = make_venv(tmp_path / ".venv")
    status = read_install_status(tmp_path, venv)
    assert status.ok and status.fix == "" and status.venv == venv
    assert str(venv) in status.message


def test_missing_venv_is_not_ok_and_says_which_command_fixes_it(tmp_path):
    status = read_install_status(tmp_path, tmp_path / ".venv")
    assert not status.ok
    assert "does not exist" in status.message
    assert status.fix == f"run: {install_command(tmp_path, tmp_path / '.venv')}"
    assert str(tmp_path / "install.py") in status.fix and "--lora-trainer-venv" not in status.fix
    other = read_install_status(tmp_path, tmp_path / "elsewhere")
    assert f"--lora-trainer-venv {tmp_path / 'elsewhere'}" in other.fix  # the venv the WebUI was told to use


def test_incomplete_venv_is_not_ok(tmp_path):
    venv = make_venv(tmp_path / ".venv", marker=False)
    status = read_install_status(tmp_path, venv)
    assert not status.ok and "did not finish" in status.message and "install.py" in status.fix


def test_an_old_ok_status_cannot_hide_a_deleted_venv(tmp_path):
    venv = tmp_path / ".venv"
    write_status(tmp_path, venv, ok=True, message="ready")
    assert not read_install_status(tmp_path, venv).ok
    make_venv(venv)
    status = read_install_status(tmp_path, venv)
    assert status.ok and status.message == "ready"


def test_a_failure_recorded_for_this_venv_is_shown_with_its_fix(tmp_path):
    venv = make_venv(tmp_path / ".venv")
    os.utime(venv / MARKER_NAME, (time.time() - 60, time.time() - 60))  # an older, complete install
    write_status(tmp_path, venv, ok=False, message="pip failed", fix="run: python install.py")
    status = read_install_status(tmp_path, venv)
    assert (status.ok, status.message, status.fix) == (False, "pip failed", "run: python install.py")


def test_a_failure_is_forgotten_once_a_later_install_completed(tmp_path):
    venv = make_venv(tmp_path / ".venv")
    write_status(tmp_path, venv, ok=False, when=time.time() - 60)  # the marker was written after it
    assert read_install_status(tmp_path, venv).ok


def test_a_status_about_another_venv_or_a_damaged_file_is_ignored(tmp_path):
    venv = make_venv(tmp_path / ".venv")
    write_status(tmp_path, tmp_path / "other-venv", ok=False, when=time.time() + 60)
    assert read_install_status(tmp_path, venv).ok
    (tmp_path / STATUS_NAME).write_text("{not json")
    assert read_install_status(tmp_path, venv).ok
    (tmp_path / STATUS_NAME).write_text("[1, 2]")
    assert read_install_status(tmp_path, venv).ok


def test_status_file_location_can_be_moved(tmp_path, monkeypatch):
    venv = make_venv(tmp_path / ".venv")
    moved = tmp_path / "elsewhere.json"
    moved.write_text(json.dumps({"ok": False, "venv": str(venv), "message": "x", "fix": "y", "time": 1e12}))
    monkeypatch.setenv("LORA_TRAINER_STATUS_FILE", str(moved))
    assert not read_install_status(tmp_path, venv).ok


def test_reads_what_install_py_writes_under_the_webui_with_skip_install(tmp_path, monkeypatch):
    """The real writer: install.py run the way the WebUI runs it, with --skip-install in COMMANDLINE_ARGS."""
    webui = tmp_path / "webui"
    (webui / "modules").mkdir(parents=True)
    (webui / "launch.py").write_text("")
    venv, status_path = tmp_path / "trainer venv", tmp_path / "status.json"
    env = dict(
        os.environ,
        PYTHONPATH=str(webui),
        COMMANDLINE_ARGS=f"--skip-install --lora-trainer-venv '{venv}'",
        LORA_TRAINER_STATUS_FILE=str(status_path),
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "install.py")], cwd=webui, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not venv.exists()
    monkeypatch.setenv("LORA_TRAINER_STATUS_FILE", str(status_path))
    status = read_install_status(ROOT, venv)
    assert not status.ok and "--skip-install" in status.message
    assert status.fix == f"run: {install_command(ROOT, venv)}"  # the writer and the reader agree
    assert status.fix in done.stdout
