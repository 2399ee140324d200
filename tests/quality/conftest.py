"""Prints the quality tests' judged numbers after a run (tests/quality/report.py says why)."""

from __future__ import annotations

from .report import RUN


def pytest_terminal_summary(terminalreporter) -> None:
    if RUN.lines():
        terminalreporter.section("quality: judged numbers")
        RUN.summary(terminalreporter.write_line)
