"""The zh_CN localization stays in step with the English UI.

A1111 translates the page by replacing whole text nodes, labels, placeholders and tooltips that are keys of
a localization file (extensions may ship `localizations/<name>.json`; files of the same name are merged).
This test collects every fixed English string the tab shows and requires a translation for each, and no
left-over keys for strings the UI no longer has. Values the trainer needs back (dropdown choices such as
optimizer names) are not translated.
"""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from recording_host import RecordingHost

from lib_trainer.webui import form_fields, progress_view
from lib_trainer.webui.service import TrainerService
from lib_trainer.webui.tab_controller import NAME_LABELS, TabController
from lib_trainer.webui.ui import TAB_TITLE, TOOLTIPS, build_tab

ROOT = Path(__file__).resolve().parents[2]
LOCALIZATION = ROOT / "localizations" / "zh_CN.json"


class _FixedText(HTMLParser):
    """Text of <span class="k">, <th> and the chart's <text> elements: the fixed labels in our HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.depth: list[bool] = []
        self.found: set[str] = set()

    def handle_starttag(self, tag, attrs):
        fixed = tag in ("th", "text") or ("class", "k") in attrs
        self.depth.append(fixed)

    def handle_endtag(self, tag):
        if self.depth:
            self.depth.pop()

    def handle_data(self, data):
        text = data.strip()
        if self.depth and self.depth[-1] and re.search(r"[A-Za-z]", text) and not re.search(r"\d", text):
            self.found.add(text)


def _fixed_html_strings(controller: TabController) -> set[str]:
    now = 1_800_000_000.0
    parser = _FixedText()
    records = []
    for i, status in enumerate(progress_view.STATUS_LABELS):
        record = {
            "id": f"job{i}",
            "name": "n",
            "status": status,
            "position": 0 if status == "queued" else None,
            "created": now,
            "started": now,
            "finished": now + 5,
            "mode": "exclusive",
            "files": ["a.safetensors", "b.safetensors"],
            "file_kinds": {"a.safetensors": "lora", "b.safetensors": "checkpoint"},
            "error": "boom" if status == "failed" else None,
        }
        records.append(record)
        progress = {
            **record,
            "step": 5,
            "total_steps": 10,
            "epoch": 1,
            "total_epochs": 2,
            "loss": 0.1,
            "avg_loss": 0.1,
            "it_per_s": 2.0,
            "lr": 1e-4,
            "eta_s": 30,
            "message": "m",
            "warnings": ["w"],
            "error_field": "training.lr" if status == "failed" else None,
            "output_name": "n",
            "resumable": status == "resumable",
        }
        parser.feed(progress_view.render_progress_html(progress, now=now))
    parser.feed(progress_view.render_queue_html(records, now=now))
    kinds = {"a.safetensors": "lora", "b.safetensors": "checkpoint"}
    parser.feed(progress_view.render_history_html(records, now=now, file_kinds=kinds))
    parser.feed(progress_view.render_loss_chart_svg([[1, 0.5, 0.5], [2, 0.4, 0.45]]))
    parser.feed(controller.model_html())
    return parser.found


def ui_strings(tmp_path: Path) -> set[str]:
    host = RecordingHost(tmp_path / "webui")
    service = TrainerService(host, trainer_command=lambda d, r: [sys.executable, "-c", ""], watch=False)
    controller = TabController(service)
    built = build_tab(controller)
    strings = {TAB_TITLE, *TOOLTIPS.values(), *built.tooltips.values()}
    for block in built.blocks.blocks.values():
        config = block.get_config()
        for key in ("label", "placeholder"):
            if isinstance(config.get(key), str) and config[key].strip():
                strings.add(config[key])
        if type(block).__name__ == "Button":
            strings.add(config["value"])
        if type(block).__name__ == "Radio":  # (shown label, value) pairs: the labels are translated
            strings.update(label for label, _value in config["choices"])
    strings.update(form_fields.GROUPS)
    strings.update(NAME_LABELS.values())  # the name box's label follows the training type
    strings.update(progress_view.STATUS_LABELS.values())
    strings.update(progress_view.GPU_MODE_LABELS.values())
    strings.update(getattr(progress_view, name) for name in dir(progress_view) if name.endswith("_TEXT"))
    strings.update(_fixed_html_strings(controller))
    # File extensions and the like ('.txt') read the same in every language.
    return {s for s in strings if s and s.strip() and re.search(r"[A-Za-z]{2}", s)}


@pytest.fixture
def translations() -> dict[str, str]:
    return json.loads(LOCALIZATION.read_text(encoding="utf-8"))


def test_every_ui_string_has_a_chinese_translation(tmp_path, translations):
    missing = sorted(ui_strings(tmp_path) - set(translations))
    assert not missing, "add these to localizations/zh_CN.json:\n" + json.dumps(
        missing, ensure_ascii=False, indent=1
    )


def test_no_translation_is_left_over_or_empty(tmp_path, translations):
    stale = sorted(set(translations) - ui_strings(tmp_path))
    assert not stale, f"strings the UI no longer shows: {stale}"
    empty = [k for k, v in translations.items() if not v.strip()]
    assert not empty
    untranslated = [k for k, v in translations.items() if v == k and re.search(r"[a-z]{4}", k)]
    assert not untranslated, untranslated  # a copy of the English text is not a translation
