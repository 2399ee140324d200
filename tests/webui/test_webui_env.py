"""This folder's environment is a faithful stand-in for the WebUI's Python, and the WebUI-side code never
needs torch or the training libraries (they load only in the trainer's own process)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes")


def test_the_environment_is_the_webuis_without_torch():
    import gradio
    import pydantic

    assert gradio.__version__.startswith("3.41."), gradio.__version__  # A1111 v1.10.1 pins 3.41.2
    assert pydantic.VERSION.startswith("1."), pydantic.VERSION  # fastapi 0.94 needs pydantic 1
    assert importlib.util.find_spec("torch") is None, "run tests/webui in .venv-webui (install.py --dev)"


# Runs in a fresh interpreter. Since torch is not installed here, an import of it would just fail (and a
# guarded one would pass unnoticed), so every *attempt* to import a heavy package is recorded. host.py
# imports the WebUI's own `modules` package; a permissive stand-in lets its other imports be checked too.
CHECK = r"""
import importlib, importlib.abc, json, sys, types

HEAVY, MODULES = json.loads(sys.argv[1]), json.loads(sys.argv[2])
attempts = []

class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            attempts.append(name)
        return None

class Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        sub = Stub(f"{self.__name__}.{name}")
        sub.__path__ = []
        sys.modules[sub.__name__] = sub
        setattr(self, name, sub)
        return sub

sys.meta_path.insert(0, Watch())
sys.modules["modules"] = Stub("modules")
sys.modules["modules"].__path__ = []
failed = {}
for name in MODULES:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps({"attempts": sorted(set(attempts)), "loaded": loaded, "failed": failed}))
"""


def test_webui_side_modules_import_no_torch_or_training_library():
    webui_modules = sorted(
        f"lib_trainer.webui.{p.stem}"
        for p in (ROOT / "lib_trainer" / "webui").glob("*.py")
        if p.stem != "__init__"
    )
    assert "lib_trainer.webui.install_status" in webui_modules
    modules = ["lib_trainer.webui", *webui_modules, "lib_trainer.jobs", "lib_trainer.spec"]
    done = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(HEAVY), json.dumps(modules)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}, (
        f"WebUI-side modules that do not import in the WebUI's Python: {result['failed']}"
    )
    assert result["attempts"] == [] and result["loaded"] == [], result
