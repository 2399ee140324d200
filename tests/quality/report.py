"""The judged numbers of a quality run, printed in pytest's summary (and written as JSON on request).

The tests assert thresholds set below the numbers measured on one model and CPU; a passing run says nothing
about how close it came. Printing every judged share, and each job's training time, puts the margins in
every CI log, so runs on other CPUs or on a rebuilt base model can be compared (docs/quality.md).
No torch here: tests/quality/conftest.py imports this in the WebUI-side environment too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

REPORT_ENV = "QUALITY_REPORT_JSON"
"""Set to a file path to get the numbers as JSON as well."""


@dataclass
class QualityReport:
    judged: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def record(self, name: str, scores: object, keys: tuple[str, ...] | None = None) -> None:
        """Keep one model's judged shares (a scores.Scores or StyleScores dataclass) under `name`; `keys` keeps
        only those (a run that judged only some prompts leaves the others at 0, which is not a measurement)."""
        if not is_dataclass(scores):
            raise TypeError(f"record() takes a scores dataclass, not {type(scores).__name__}")
        values = asdict(scores)
        self.judged[name] = {key: float(values[key]) for key in (keys or values)}

    def record_seconds(self, name: str, seconds: float) -> None:
        """Keep how long job `name` trained (TrainedLora.train_seconds: its start event to its end)."""
        self.seconds[name] = round(seconds, 1)

    def lines(self) -> list[str]:
        """One line per judged model, shares in percent, then the training times."""
        out = [
            f"{name}: " + ", ".join(f"{key} {value:.0%}" for key, value in values.items())
            for name, values in self.judged.items()
        ]
        if self.seconds:
            out.append("trained in: " + ", ".join(f"{name} {s:.0f} s" for name, s in self.seconds.items()))
        return out

    def summary(self, write_line: Callable[[str], object]) -> None:
        """Print the lines (nothing for an empty report); also write JSON where REPORT_ENV asks."""
        lines = self.lines()
        if not lines:
            return
        for line in lines:
            write_line(line)
        path = os.environ.get(REPORT_ENV)
        if path:
            Path(path).write_text(
                json.dumps({"judged": self.judged, "seconds": self.seconds}, indent=1), encoding="utf-8"
            )
            write_line(f"written to {path}")


RUN = QualityReport()
"""This pytest run's report: test_quality.py fills it, conftest.py prints it."""
