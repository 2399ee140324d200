"""The quality run's report of judged numbers (report.py): what it keeps, prints and writes."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from . import report
from .report import QualityReport


@dataclass
class _Shares:
    trigger_subject: float
    known_correct: float


def test_lines_give_every_share_in_percent_and_the_times():
    run = QualityReport()
    run.record("plain", _Shares(0.906, 0.84))
    run.record("prior", _Shares(0.8125, 0.78), keys=("trigger_subject",))
    run.record_seconds("prior", 576.04)
    assert run.lines() == [
        "plain: trigger_subject 91%, known_correct 84%",
        "prior: trigger_subject 81%",
        "trained in: prior 576 s",
    ]


def test_summary_writes_json_where_asked(tmp_path, monkeypatch):
    out = tmp_path / "quality.json"
    monkeypatch.setenv(report.REPORT_ENV, str(out))
    run = QualityReport()
    run.record("base", _Shares(0.0, 0.92))
    printed: list[str] = []
    run.summary(printed.append)
    assert printed == ["base: trigger_subject 0%, known_correct 92%", f"written to {out}"]
    assert json.loads(out.read_text()) == {
        "judged": {"base": {"trigger_subject": 0.0, "known_correct": 0.92}},
        "seconds": {},
    }


def test_an_empty_report_prints_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(report.REPORT_ENV, str(tmp_path / "never.json"))
    printed: list[str] = []
    QualityReport().summary(printed.append)
    assert printed == [] and not (tmp_path / "never.json").exists()


def test_only_scores_dataclasses_are_recorded():
    with pytest.raises(TypeError, match="scores dataclass, not dict"):
        QualityReport().record("x", {"trigger_subject": 1.0})
