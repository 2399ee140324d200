"""The WebUI-side tests (lib_trainer/webui). They run in `.venv-webui`, the stand-in for the WebUI's own
Python that `install.py --dev` creates (A1111 v1.10.1's gradio 3.41, fastapi 0.94, pydantic 1, numpy 1.26,
Pillow 9.5, and no torch):

    .venv-webui/bin/python -m pytest -q tests/webui

The trainer's `.venv` skips this folder (it has no gradio). `import lib_trainer` works without installing
it because pyproject.toml's pytest settings put the repository root on sys.path (`pythonpath = ["."]`).
"""
