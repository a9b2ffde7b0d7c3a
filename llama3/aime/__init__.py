"""`llama3 aime-worker`: this engine as a GPU/CPU worker of the AIME API Server.

`protocol` holds the wire format as pure functions, `prompts` turns job inputs into prompt ids and
sampling parameters, `client` does the HTTP (and rides out server outages), `worker` runs the jobs
on the continuous-batching engine. The AIME worker-interface package is not needed.
"""

from __future__ import annotations

from .client import AimeClient, JobTypeUnknown, WorkerNotAuthorized
from .prompts import Defaults
from .protocol import Job, JobOutput, WorkerIdentity
from .worker import AimeWorker, WorkerConfig

__all__ = [
    "AimeClient",
    "AimeWorker",
    "Defaults",
    "Job",
    "JobOutput",
    "JobTypeUnknown",
    "WorkerConfig",
    "WorkerIdentity",
    "WorkerNotAuthorized",
]
