"""install.py, as the WebUI runs it on every start: nothing to do must be fast, offline and import no torch;
--skip-install creates nothing; a failure is reported with its fix and never stops the WebUI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_installer(tmp_path: Path, monkeypatch):
    spec = importlib.util.spec_from_file_location("lora_trainer_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    monkeypatch.setattr(module, "VENV", venv)
    monkeypatch.setattr(module, "MARKER", venv / "lora-trainer-install.json")
    monkeypatch.setattr(module, "STATUS_FILE", tmp_path / "status.json")
    return module


def test_up_to_date_rules(tmp_path, monkeypatch):
    inst = _load_installer(tmp_path, monkeypatch)
    plain = inst.wanted_state(False, ["/host/site-packages"])
    dev = inst.wanted_state(True, ["/host/site-packages"])
    assert not inst.up_to_date(plain)  # no marker yet
    inst.MARKER.write_text(json.dumps(plain))
    assert inst.up_to_date(plain)
    assert not inst.up_to_date(dev)  # test tools were not installed
    inst.MARKER.write_text(json.dumps(dev))
    assert inst.up_to_date(plain) and inst.up_to_date(dev)
    assert not inst.up_to_date(inst.wanted_state(False, ["/other/torch"]))  # the host's torch moved
    changed = dict(plain, requirements="0" * 64)
    inst.MARKER.write_text(json.dumps(changed))
    assert not inst.up_to_date(plain)  # our pins changed


def test_nothing_to_do_returns_quickly_without_running_pip(tmp_path, monkeypatch):
    inst = _load_installer(tmp_path, monkeypatch)
    inst.MARKER.write_text(json.dumps(inst.wanted_state(False, inst.host_torch_dirs())))
    monkeypatch.setattr(inst, "run", lambda cmd: (_ for _ in ()).throw(AssertionError(f"ran {cmd}")))
    started = time.time()
    assert inst.main([]) == 0
    assert time.time() - started < 5


def test_venv_flag_from_the_webui_command_line():
    spec = importlib.util.spec_from_file_location("lora_trainer_install2", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module._venv_from_args(["launch.py", "--lora-trainer-venv", "/x/env"]) == "/x/env"
    assert module._venv_from_args(["--lora-trainer-venv=/y"]) == "/y"
    assert module._venv_from_args(["--api"]) is None


def fake_webui(tmp_path: Path) -> Path:
    """What run_by_webui() recognises: the WebUI puts its folder (launch.py, modules/) on PYTHONPATH."""
    webui = tmp_path / "webui"
    (webui / "modules").mkdir(parents=True, exist_ok=True)
    (webui / "launch.py").write_text("")
    return webui


def run_install(tmp_path: Path, *args: str, webui: bool, **env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMMANDLINE_ARGS")} | env
    env["LORA_TRAINER_STATUS_FILE"] = str(tmp_path / "status.json")
    if webui:
        env["PYTHONPATH"] = str(fake_webui(tmp_path))
    return subprocess.run(
        [sys.executable, str(ROOT / "install.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("webui", [True, False], ids=["webui", "standalone"])
def test_skip_install_creates_nothing_and_records_what_is_missing(tmp_path, webui):
    venv = tmp_path / "venv"
    # The WebUI hands its flags to install.py through COMMANDLINE_ARGS (webui-user.sh sets it).
    done = run_install(
        tmp_path, "--lora-trainer-venv", str(venv), webui=webui, COMMANDLINE_ARGS="--skip-install"
    )
    assert done.returncode == (0 if webui else 1), done.stdout + done.stderr
    assert not venv.exists()
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "--skip-install" in lines[0] and "does not exist" in lines[0]
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["ok"] is False and status["venv"] == str(venv)
    assert status["fix"].startswith("run: ") and "install.py" in status["fix"] and str(venv) in status["fix"]
    assert status["fix"] in done.stdout


def test_a_failing_pip_is_reported_with_its_fix_and_never_stops_the_webui(tmp_path):
    venv = tmp_path / "venv"
    offline = {  # pip with no index and nothing installed counting: as if there were no network
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(tmp_path),
        "PIP_IGNORE_INSTALLED": "1",
        "PIP_DEFAULT_TIMEOUT": "1",
        "PIP_RETRIES": "0",
        "COMMANDLINE_ARGS": f"--lora-trainer-venv {venv}",
    }
    done = run_install(tmp_path, webui=True, **offline)
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["ok"] is False and "pip failed" in status["message"] and status["venv"] == str(venv)
    assert f"to fix: {status['fix']}" in done.stdout
    assert f"{ROOT / 'install.py'} --lora-trainer-venv {venv}" in status["fix"]
    assert not (venv / "lora-trainer-install.json").exists()  # the next start tries again
    # Standalone (and with --strict under the WebUI) a failure is an error: `install.py && ...` stops.
    assert run_install(tmp_path, webui=False, **offline).returncode == 1
    assert run_install(tmp_path, "--strict", webui=True, **offline).returncode == 1


def test_finding_the_hosts_torch_imports_nothing(tmp_path):
    """The check runs on every WebUI start: importing torch there would cost seconds each time."""
    code = f"""
import importlib.util, json, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("inst", {str(ROOT / "install.py")!r})
inst = importlib.util.module_from_spec(spec)
spec.loader.exec_module(inst)
dirs = inst.host_torch_dirs()
inst.VENV = Path({str(tmp_path / "venv")!r})
inst.MARKER = inst.VENV / "lora-trainer-install.json"
inst.STATUS_FILE = Path({str(tmp_path / "status.json")!r})
(inst.VENV / "bin").mkdir(parents=True)
(inst.VENV / "bin" / "python").write_text("")
inst.MARKER.write_text(json.dumps(inst.wanted_state(False, dirs)))
inst.run = None  # nothing may be run
code = inst.main([])
print(json.dumps({{"dirs": dirs, "code": code, "imported": sorted(m for m in sys.modules if m in ("torch", "xformers"))}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    import torch  # this environment has one, so the folder must have been found

    assert result["dirs"][0] == str(Path(torch.__file__).resolve().parent.parent)
    assert result["code"] == 0 and result["imported"] == []
