"""install.py's decision to do nothing: it must be fast and offline when everything is in place."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

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
