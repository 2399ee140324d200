"""Registers the "Train LoRA" tab with the WebUI. Thin on purpose: the logic is in lib_trainer.webui.

The WebUI runs this file on every start and on "Reload UI". The job service lives in a normally imported
module (lib_trainer.webui.service), so a reload gets the same service and the same running jobs back.
Nothing here imports torch-heavy training libraries: training runs in a separate process.
"""

from __future__ import annotations

import logging

from modules import script_callbacks

from lib_trainer.jobs.process import REPO_ROOT
from lib_trainer.webui.host import WebUIHost
from lib_trainer.webui.install_status import read_install_status
from lib_trainer.webui.service import get_service

log = logging.getLogger("lib_trainer.webui")


def _service():
    return get_service(WebUIHost())


def _install_status(service):
    venv = service.host.trainer_venv() or REPO_ROOT / ".venv"
    return read_install_status(REPO_ROOT, venv)


def on_ui_tabs():
    from lib_trainer.webui.tab_controller import TabController
    from lib_trainer.webui.ui import TAB_ID, TAB_TITLE, build_tab

    service = _service()
    tab = build_tab(TabController(service, _install_status(service)))
    return [(tab.blocks, TAB_TITLE, TAB_ID)]


def on_app_started(_demo, _app):
    # Also under --nowebui (no tab): queued jobs start and running ones are followed again.
    _service()


script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_app_started(on_app_started)
