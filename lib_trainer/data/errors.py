"""The one exception type the data layer raises for problems a user can fix.

Kept separate so the job runner can tell "your dataset needs attention" (exit code 2, friendly message)
apart from bugs, and so every data module can raise it without importing the others.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset or bucketing problem the user caused and can fix; the message says what to do.

    `field` names the job setting involved (e.g. `dataset.caption_extension`) when the problem is a setting
    rather than a file, so the UI can highlight it.
    """

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
