"""Whether the trainer environment is ready, as the Train LoRA tab shows it.

install.py (run by the WebUI on every start) writes its outcome to `.install-status.json` in the extension
folder, or to $LORA_TRAINER_STATUS_FILE: {"ok", "venv", "message", "fix", "time"}. A status file can be
stale or about another venv (the venv was deleted since, or --lora-trainer-venv changed), so the venv's
Python and install.py's marker are checked here as well: only a complete environment counts as ready.

Standard library only (this runs inside the WebUI; no torch).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

STATUS_NAME = ".install-status.json"  # install.py's STATUS_FILE
MARKER_NAME = "lora-trainer-install.json"  # install.py's MARKER, written last, when the venv is complete


@dataclass(frozen=True)
class InstallStatus:
    ok: bool
    message: str
    fix: str  # what to do, with the exact command; "" when ok
    venv: Path


def status_file(extension_root: Path) -> Path:
    return Path(os.environ.get("LORA_TRAINER_STATUS_FILE") or Path(extension_root) / STATUS_NAME)


def install_command(extension_root: Path, venv: Path) -> str:
    """The command that sets the environment up, with this (the WebUI's) Python, as the WebUI would."""
    args = [sys.executable, str(Path(extension_root) / "install.py")]
    if not _same_path(venv, Path(extension_root) / ".venv"):
        args += ["--lora-trainer-venv", str(venv)]
    return subprocess.list2cmdline(args) if os.name == "nt" else shlex.join(args)


def read_install_status(extension_root: Path, venv: Path) -> InstallStatus:
    extension_root, venv = Path(extension_root), Path(venv)
    run_fix = f"run: {install_command(extension_root, venv)}"
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    marker = venv / MARKER_NAME
    recorded = _load(status_file(extension_root))
    about_this_venv = recorded is not None and _same_path(recorded.get("venv"), venv)

    if about_this_venv and recorded.get("ok") is not True and not _newer(marker, recorded.get("time")):
        message = str(recorded.get("message") or f"The LoRA trainer's environment in {venv} is not ready.")
        return InstallStatus(False, message, str(recorded.get("fix") or run_fix), venv)
    if not python.is_file():
        return InstallStatus(False, f"The LoRA trainer's environment {venv} does not exist.", run_fix, venv)
    if not marker.is_file():
        message = f"The LoRA trainer's environment in {venv} is incomplete: its setup did not finish."
        return InstallStatus(False, message, run_fix, venv)
    message = str(recorded.get("message") or "") if about_this_venv else ""
    return InstallStatus(True, message or f"Trainer environment ready ({venv}).", "", venv)


def _load(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _same_path(a, b) -> bool:
    if not a or not b:
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError, TypeError):
        return False


def _newer(marker: Path, status_time) -> bool:
    """The marker was written after the failure was recorded: a later install (by hand) succeeded."""
    try:
        return isinstance(status_time, (int, float)) and marker.stat().st_mtime > status_time
    except OSError:
        return False
