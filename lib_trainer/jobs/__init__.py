"""Background training jobs for the WebUI process: queue, spawn, watch, cancel and re-attach trainers.

Host-free and light: importing this package never imports torch or the training libraries (the trainer
runs in its own process, `python -m lib_trainer run JOB_DIR`), so it can live inside the WebUI.
"""

from .manager import (
    UNEXPECTED_STOP,
    JobError,
    JobHooks,
    JobManager,
    JobNotFound,
    JobStateError,
    get_manager,
    run_outcome,
)
from .process import default_trainer_command, make_trainer_command, trainer_env, trainer_python
from .records import (
    ACTIVE,
    CANCELLED,
    DONE,
    FAILED,
    FINISHED,
    GPU_MODES,
    QUEUED,
    RESUMABLE,
    RUNNING,
    STATUSES,
    STOPPING,
    JobRecord,
)

__all__ = [
    "ACTIVE",
    "CANCELLED",
    "DONE",
    "FAILED",
    "FINISHED",
    "GPU_MODES",
    "QUEUED",
    "RESUMABLE",
    "RUNNING",
    "STATUSES",
    "STOPPING",
    "UNEXPECTED_STOP",
    "JobError",
    "JobHooks",
    "JobManager",
    "JobNotFound",
    "JobRecord",
    "JobStateError",
    "default_trainer_command",
    "get_manager",
    "make_trainer_command",
    "run_outcome",
    "trainer_env",
    "trainer_python",
]
