"""The job queue: one job on the device at a time, the others waiting in the order they came.

A job is a function of a `JobContext`, run by the queue's one worker thread in its own fresh
folder under the output folder. Each job keeps the list of what happened to it, the events the
page reads as Server-Sent Events: `queued` (with its position: 1 = next), `started`, `progress`
(network calls done of the total), `frame` (a live denoising picture), `images` (files ready),
then one of `done` (with the result), `failed` (one line) or `cancelled`. A job that fails, for
any reason, ends as one line; the worker goes on with the next.

Cancelling a waiting job takes it out of the queue; a running job stops at its next network
call (`JobContext.check`, called by `counted`).
"""

from __future__ import annotations

import re
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import free_dir

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
MAX_WAITING = 32  # jobs waiting at once; more is refused with a message
KEEP_FINISHED = 64  # finished jobs the server remembers (their files stay on disk)
KEEP_FRAMES = 8  # finished jobs whose live pictures stay in memory (each up to ~40 small PNGs)
PROGRESS_EVERY_S = 0.2  # progress events at most this often (DDPM makes 1,000 calls a batch)
FILE_PATH = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*")

Work = Callable[["JobContext"], dict[str, Any]]


class Cancelled(Exception):
    """Raised inside a running job that was asked to stop."""


class Missing(DdpmkitError):
    """A job, live picture or file that is not there (the page gets 404)."""


@dataclass
class Job:
    """One job: what it runs, where it stands, what it said (`events`) and its live frames (PNG)."""

    id: str
    kind: str
    run: str
    work: Work
    state: str = QUEUED
    folder: Optional[Path] = None
    error: Optional[str] = None
    result: Optional[dict[str, Any]] = None
    events: list[dict[str, Any]] = field(default_factory=list)
    frames: dict[int, bytes] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)  # its pictures a later job may take, in order
    stop: bool = False


def one_line(e: BaseException) -> str:
    """An exception as the one line the page shows: a DdpmkitError's message, else its type and
    the first line of its message."""
    text = str(e) if isinstance(e, DdpmkitError) else f"{type(e).__name__}: {e}".rstrip(": ")
    return (text.splitlines() or [type(e).__name__])[0][:400]


class JobContext:
    """What a running job may do: write into its folder, tell the page, and stop when asked."""

    def __init__(self, queue: "JobQueue", job: Job) -> None:
        self.queue, self.job = queue, job
        self._last_progress = 0.0

    @property
    def folder(self) -> Path:
        assert self.job.folder is not None
        return self.job.folder

    def check(self) -> None:
        """Raise Cancelled when the job was asked to stop."""
        if self.job.stop:
            raise Cancelled()

    def progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            self.queue.tell(self.job, "progress", done=done, total=total)

    def counted(self, eps: Callable[..., Any], total: int) -> Callable[..., Any]:
        """eps(x_t, t) that stops the job when asked and reports its calls out of `total`."""
        calls = 0

        def eps_counted(*args: Any) -> Any:
            nonlocal calls
            self.check()
            out = eps(*args)
            calls += 1
            self.progress(calls, total)
            return out

        return eps_counted

    def url(self, path: Path) -> str:
        """The address of a file in the job's folder."""
        return f"/files/{self.job.id}/{path.relative_to(self.folder).as_posix()}"

    def frame(self, png: bytes, title: str) -> None:
        """A live picture (PNG bytes) for the page."""
        k = len(self.job.frames)
        self.job.frames[k] = png
        self.queue.tell(self.job, "frame", index=k, title=title, url=f"/api/jobs/{self.job.id}/frames/{k}.png")

    def images(self, paths: list[Path], keep: bool = True) -> None:
        """Pictures written: their addresses to the page; `keep`: a later job may take them as input."""
        if keep:
            self.job.images.extend(paths)
        self.queue.tell(self.job, "images", urls=[self.url(p) for p in paths])


class JobQueue:
    """Jobs in order, one worker thread. `log` takes lines for the server's console (a failing
    job's traceback goes there; the page gets one line)."""

    def __init__(self, out_dir: Path, log: Callable[[str], None] = lambda line: None) -> None:
        self.out_dir, self.log = Path(out_dir), log
        self._jobs: dict[str, Job] = {}
        self._waiting: list[Job] = []
        self._cond = threading.Condition()
        self._count = 0
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="ddpmkit-serve-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel what waits and what runs; wait for the worker to end."""
        with self._cond:
            self._closed = True
            for job in list(self._waiting):
                self._finish(job, CANCELLED)
            self._waiting.clear()
            for job in self._jobs.values():
                job.stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, kind: str, run: str, work: Work) -> Job:
        """Queue a job; refused in one line when MAX_WAITING wait already."""
        with self._cond:
            if self._closed:
                raise DdpmkitError("the server is shutting down")
            if len(self._waiting) >= MAX_WAITING:
                raise DdpmkitError(f"{MAX_WAITING} jobs are waiting already: try again when some are done")
            self._count += 1
            job = Job(f"{kind}{self._count}", kind, run, work)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._tell(job, QUEUED, position=len(self._waiting))
            self._cond.notify_all()
            return job

    def job(self, job_id: Any) -> Job:
        with self._cond:
            job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise Missing(f"no job {str(job_id)[:40]!r} (finished long ago, or never made)")
        return job

    def position(self, job: Job) -> int:
        """0 = running or finished, k = k-th in line."""
        with self._cond:
            return self._waiting.index(job) + 1 if job in self._waiting else 0

    def public(self, job: Job) -> dict[str, Any]:
        """A job as the page sees it (JSON)."""
        return {"id": job.id, "kind": job.kind, "run": job.run, "state": job.state, "position": self.position(job),
                "error": job.error, "result": job.result}

    def listing(self) -> list[dict[str, Any]]:
        """Every remembered job, the oldest first."""
        with self._cond:
            jobs = list(self._jobs.values())
        return [self.public(j) for j in jobs]

    def cancel(self, job_id: Any) -> Job:
        """A waiting job leaves the line; a running one stops at its next network call."""
        job = self.job(job_id)
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, CANCELLED)
                self._tell_positions()
            elif job.state == RUNNING:
                job.stop = True
        return job

    def events(self, job: Job, start: int) -> tuple[list[dict[str, Any]], bool]:
        """The job's events from index `start`, and whether it has finished (no more will come)."""
        with self._cond:
            return job.events[start:], job.state in FINISHED

    def frame(self, job_id: Any, index: Any) -> bytes:
        job = self.job(job_id)
        png = job.frames.get(index) if isinstance(index, int) else None
        if png is None:
            raise Missing(f"job {job.id} has no live picture {str(index)[:20]} (kept for the newest jobs only)")
        return png

    def file(self, job_id: Any, rel: str) -> Path:
        """A file the job wrote, by its path in the job's folder; anything else is refused."""
        job = self.job(job_id)
        if job.folder is None or not FILE_PATH.fullmatch(rel) or ".." in rel.split("/"):
            raise Missing(f"no file {rel[:80]!r} in job {job.id}")
        path = (job.folder / rel).resolve()
        if not path.is_relative_to(job.folder.resolve()) or not path.is_file():
            raise Missing(f"no file {rel[:80]!r} in job {job.id}")
        return path

    def tell(self, job: Job, kind: str, **data: Any) -> None:
        with self._cond:
            self._tell(job, kind, **data)

    def _tell(self, job: Job, kind: str, **data: Any) -> None:
        job.events.append({"type": kind, "t": time.time(), **data})

    def _tell_positions(self) -> None:
        for k, waiting in enumerate(self._waiting):
            self._tell(waiting, QUEUED, position=k + 1)

    def _finish(self, job: Job, state: str, **data: Any) -> None:
        job.state = state
        self._tell(job, state, **data)
        done = [j for j in self._jobs.values() if j.state in FINISHED]
        for old in done[:-KEEP_FRAMES]:  # a page may still be fetching the last frames of a job just ended
            old.frames = {}
        for old in done[:-KEEP_FINISHED]:
            del self._jobs[old.id]

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._waiting.pop(0)
                job.state = RUNNING
                self._tell(job, "started")
                self._tell_positions()
            self._execute(job)

    def _execute(self, job: Job) -> None:
        """Run one job in a fresh folder; whatever it raises ends it as one line."""
        try:
            job.folder = free_dir(self.out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{job.id}")
            job.folder.mkdir(parents=True, exist_ok=True)
            result = job.work(JobContext(self, job))
        except Cancelled:
            self.log(f"{job.id}: cancelled")
            with self._cond:
                self._finish(job, CANCELLED)
        except Exception as e:  # noqa: BLE001 - any failure ends the job, never the server
            line = one_line(e)
            if not isinstance(e, DdpmkitError):
                self.log(f"{job.id} failed:\n{traceback.format_exc()}")
            with self._cond:
                job.error = line
                self._finish(job, FAILED, error=line)
        else:
            with self._cond:
                job.result = result
                self._finish(job, DONE, result=result)
