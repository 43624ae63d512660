"""The web server's jobs: one runs at a time on the device, the others wait in order.

A job is a function of the job itself: it reports its progress (`step`, `total`, a `preview`
PNG of the image estimate) through `job.advance`, which also raises `Cancelled` once the job is
cancelled, so that a cancelled job frees the device at its next network evaluation.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

FINISHED = ("done", "cancelled", "failed")
KEEP_FINISHED = 64  # finished jobs kept for their images; older ones are dropped, so memory stays flat


def one_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


class Cancelled(Exception):
    """Raised inside a job's work when it has been cancelled."""


@dataclass
class Job:
    id: str
    kind: str  # generate | restore | inpaint
    work: Callable[[Job], list[bytes]]
    state: str = "queued"  # queued | running | done | cancelled | failed
    step: int = 0
    total: int | None = None  # evaluations or steps to go; None for an adaptive walk
    preview: bytes | None = None  # PNG of the current image estimate
    images: list[bytes] = field(default_factory=list)  # PNGs, each carrying how it was made
    error: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    version: int = 0  # bumped on every change, for the event stream
    started: float = field(default_factory=time.monotonic)

    def advance(self, step: int, total: int | None = None, preview: bytes | None = None) -> None:
        if self.cancelled.is_set():
            raise Cancelled
        self.step, self.total = step, total if total is not None else self.total
        self.preview = preview if preview is not None else self.preview
        self.version += 1


class JobQueue:
    """First in, first out, one job at a time on a worker thread."""

    def __init__(self):
        self.jobs: dict[str, Job] = {}
        self.waiting: deque[Job] = deque()
        self.ready = threading.Condition()
        self.ids = itertools.count(1)
        self.worker = threading.Thread(target=self._serve, name="pixel-diffusion jobs", daemon=True)
        self.worker.start()

    def submit(self, kind: str, work: Callable[[Job], list[bytes]]) -> Job:
        with self.ready:
            job = Job(str(next(self.ids)), kind, work)
            self.jobs[job.id] = job
            self.waiting.append(job)
            self.ready.notify()
            return job

    def position(self, job: Job) -> int | None:
        """1 for the next job to run, 2 for the one after, ...; None once it runs or has ended."""
        with self.ready:
            return next((k + 1 for k, waiting in enumerate(self.waiting) if waiting is job), None)

    def cancel(self, job: Job) -> None:
        """A waiting job leaves the queue; a running one stops at its next step."""
        with self.ready:
            job.cancelled.set()
            if job in self.waiting:
                self.waiting.remove(job)
                self._finish(job, "cancelled")

    def _finish(self, job: Job, state: str, error: str | None = None) -> None:
        job.state, job.error = state, error
        job.version += 1
        finished = [j for j in self.jobs.values() if j.state in FINISHED]
        for old in finished[:-KEEP_FINISHED]:
            del self.jobs[old.id]

    def _serve(self) -> None:
        while True:
            with self.ready:
                while not self.waiting:
                    self.ready.wait()
                job = self.waiting.popleft()
                job.state = "running"
                job.version += 1
            try:
                images, state, error = job.work(job), "done", None
            except Cancelled:
                state, error, images = "cancelled", None, []
            except ValueError as problem:  # a bad request found late: its one-line message
                state, error, images = "failed", one_line(problem), []
            except Exception as problem:  # noqa: BLE001 - any fault ends the job, not the server
                state, error, images = "failed", f"{type(problem).__name__}: {one_line(problem)[:200]}", []
            with self.ready:
                job.images = images
                self._finish(job, state, error)
