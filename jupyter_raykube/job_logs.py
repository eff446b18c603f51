"""A running job's log, followed once and served to every reader without re-reading it.

Ray's `GET /api/jobs/{id}/logs` answers with the whole log each time, so polling it moves the
whole log on every poll. Instead one follower per (cluster, job) holds Ray's own log tail open
(`/api/jobs/{id}/logs/tail`, a websocket that sends the log from its first character, then each
new piece) and appends to a bounded buffer; readers ask for what follows their offset and are
woken when more arrives or the job ends, as `EventLog.wait_after` does for events. A follower
ends when Ray closes the tail (the job ended and its last output was sent), when nobody has
read it for `idle_s`, or when its cluster stops; a job that already ended is read whole, once.

    {"job": {...}, "logs": "...", "next_offset": 1234, "dropped": 0}

`dropped`: characters after the reader's offset that the buffer no longer holds (it keeps the
newest `max_chars`); `logs` then starts at the oldest character still kept.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from .errors import BackendError, ClusterNotFound, SpecError
from .jobs import FINAL_STATES, RayJobs, check_job_id

if TYPE_CHECKING:
    from .cluster import Cluster

MAX_BUFFER_CHARS = 4 * 2**20  # the newest 4 Mi characters of each followed job
IDLE_S = 60.0  # a follower nobody has read for this long closes its tail
WAIT_MAX_S = 60  # `?wait=` at most, like the events route
# Ray's tail sleeps a second each time it reaches the end of the file, so once it has sent
# something, a pause this long means everything written before the follower started has arrived.
CATCH_UP_QUIET_S = 0.5
# Before its first message, its own start and that first sleep (a short log is sent after it).
FIRST_MESSAGE_S = 3.0
CATCH_UP_MAX_S = 20.0  # a reader waits at most this long for a new follower to catch up
FINISH_GRACE_S = 15.0  # Ray says a job ended a little before its tail sends the last output
CHECK_S = 2.0  # how often a quiet follower looks at its cluster and its readers


class LogBuffer:
    """The newest `max_chars` of a log (as whole pieces, in the order they came), with the
    absolute offset of the first character kept."""

    def __init__(self, max_chars: int = MAX_BUFFER_CHARS) -> None:
        self.max_chars = max_chars
        self._pieces: deque[str] = deque()
        self.start = 0  # offset of the oldest character kept
        self.end = 0  # offset just after the newest character

    def append(self, text: str) -> None:
        if not text:
            return
        self._pieces.append(text)
        self.end += len(text)
        while len(self._pieces) > 1 and self.end - self.start - len(self._pieces[0]) >= self.max_chars:
            self.start += len(self._pieces.popleft())

    def since(self, offset: int) -> tuple[str, int]:
        """What follows `offset`, and how many characters after it were dropped already."""
        begin = max(offset, self.start)
        parts: list[str] = []
        position = self.end
        for piece in reversed(self._pieces):  # readers are mostly near the end
            if position <= begin:
                break
            position -= len(piece)
            parts.append(piece[max(0, begin - position):])
        return "".join(reversed(parts)), max(0, self.start - offset)


@dataclass(frozen=True)
class LogPage:
    logs: str
    next_offset: int
    dropped: int = 0

    def to_json(self, job: dict[str, Any]) -> dict[str, Any]:
        return {"job": job, "logs": self.logs, "next_offset": self.next_offset, "dropped": self.dropped}


class JobLogFollower:
    """Ray's log tail of one job of one cluster, read once into a LogBuffer for all readers."""

    def __init__(self, cluster: Cluster, jobs: RayJobs, job_id: str, *,
                 max_chars: int = MAX_BUFFER_CHARS, idle_s: float = IDLE_S) -> None:
        self.cluster = cluster
        self.jobs = jobs
        self.job_id = job_id
        self.idle_s = idle_s
        self.buffer = LogBuffer(max_chars)
        self.final_job: dict[str, Any] | None = None  # the job's record once Ray closed the tail
        self.error: Exception | None = None  # why the tail could not be followed
        self.ended = anyio.Event()
        self.caught_up = anyio.Event()  # everything written before it started has arrived
        self._stream_closed = False
        self._received: anyio.Event | None = None  # set by the next message, for `run`
        self._changed: anyio.Event | None = None  # set by the next message or the end, for readers
        self._readers = 0
        self._last_read = anyio.current_time()

    @property
    def finished(self) -> bool:
        """The job ended and the buffer holds its last output."""
        return self.final_job is not None and self.final_job["state"] in FINAL_STATES

    async def run(self, on_stream_opened: Callable[[], None]) -> None:
        socket = None
        try:
            socket = await self.jobs.open_log_stream(self.job_id, self._on_message)
            on_stream_opened()
            while not self._stream_closed:
                if self.caught_up.is_set():
                    timeout_s = CHECK_S
                else:
                    timeout_s = CATCH_UP_QUIET_S if self.buffer.end else FIRST_MESSAGE_S
                quiet = await self._wait_for_message(timeout_s)
                if quiet and not self.caught_up.is_set():
                    self.caught_up.set()
                    self._wake()
                if self._stream_closed or self._should_stop():
                    break
            if self._stream_closed:
                self.final_job = await self.jobs.get(self.job_id)
        except (BackendError, ClusterNotFound, SpecError) as exc:
            self.error = exc
        finally:
            if socket is not None:
                socket.close()
            self.caught_up.set()
            self.ended.set()
            self._wake()

    async def read(self, offset: int, wait_s: float) -> LogPage:
        """What follows `offset`: at once if there is some, else once more arrives, the follower
        ends, or `wait_s` passes."""
        self._readers += 1
        try:
            with anyio.move_on_after(CATCH_UP_MAX_S):
                await self.caught_up.wait()
            if self.error is not None and offset >= self.buffer.end:
                raise self.error
            if offset > self.buffer.end and self.caught_up.is_set():
                raise SpecError("offset", offset, f"at most {self.buffer.end}, the length of the job's output so far")
            with anyio.move_on_after(wait_s):
                while offset >= self.buffer.end and not self.ended.is_set():
                    if self._changed is None:
                        self._changed = anyio.Event()
                    await self._changed.wait()
            return self.page(offset)
        finally:
            self._readers -= 1
            self._last_read = anyio.current_time()

    def page(self, offset: int) -> LogPage:
        logs, dropped = self.buffer.since(offset)
        return LogPage(logs, max(offset, self.buffer.end), dropped)

    def _on_message(self, message: str | bytes | None) -> None:
        """Tornado's callback for each message of the tail, then None once it is closed."""
        if message is None:
            self._stream_closed = True
        else:
            self.buffer.append(message if isinstance(message, str) else message.decode(errors="replace"))
        if self._received is not None:
            self._received.set()
            self._received = None
        self._wake()

    async def _wait_for_message(self, timeout_s: float) -> bool:
        """True if nothing arrived for `timeout_s`."""
        self._received = anyio.Event()
        received = self._received
        with anyio.move_on_after(timeout_s):
            await received.wait()
            return False
        return True

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _should_stop(self) -> bool:
        if self.cluster.state != "running":
            return True
        return self._readers == 0 and anyio.current_time() - self._last_read >= self.idle_s


class JobLogFollowers:
    """The live followers of this server, one per (cluster, job). Their tasks run on the
    server's loop; `close()` (at the extension's stop) ends them all."""

    def __init__(self, *, max_chars: int = MAX_BUFFER_CHARS, idle_s: float = IDLE_S) -> None:
        self.max_chars = max_chars
        self.idle_s = idle_s
        self.streams_opened = 0  # Ray log tails opened so far: one per follower, never per read
        self._followers: dict[tuple[str, str], JobLogFollower] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def live(self, cluster: Cluster, job_id: str) -> JobLogFollower | None:
        follower = self._followers.get((cluster.name, job_id))
        if follower is None or follower.cluster is not cluster or follower.ended.is_set():
            return None
        return follower

    def start(self, cluster: Cluster, jobs: RayJobs, job_id: str) -> JobLogFollower:
        follower = JobLogFollower(cluster, jobs, job_id, max_chars=self.max_chars, idle_s=self.idle_s)
        key = (cluster.name, job_id)
        self._followers[key] = follower

        async def follow() -> None:
            try:
                await follower.run(self._count_stream)
            finally:
                if self._followers.get(key) is follower:
                    del self._followers[key]

        task = asyncio.get_running_loop().create_task(follow(), name=f"raykube-job-log-{cluster.name}-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return follower

    def __len__(self) -> int:
        return len(self._followers)

    @property
    def tasks(self) -> int:
        """Follower tasks not finished yet (a test's window into leaks)."""
        return len(self._tasks)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _count_stream(self) -> None:
        self.streams_opened += 1


async def read_job_log(followers: JobLogFollowers, cluster: Cluster, jobs: RayJobs, job_id: str, *,
                       offset: int, wait_s: float) -> dict[str, Any]:
    """What a job printed after `offset`, held up to `wait_s` for more (the logs route)."""
    check_job_id(job_id)
    follower = followers.live(cluster, job_id)
    if follower is None:
        record = await jobs.get(job_id)  # an unknown job is a 404 before anything is followed
        if record["state"] in FINAL_STATES:
            return whole_log_page(record, await jobs.logs(job_id), offset)
        follower = followers.start(cluster, jobs, job_id)
    page = await follower.read(offset, wait_s)
    if follower.finished:
        assert follower.final_job is not None
        return page.to_json(follower.final_job)
    record = await jobs.get(job_id)
    if record["state"] not in FINAL_STATES:
        return page.to_json(record)
    # Ended, but its tail has not sent the last output yet: a final state must mean complete logs.
    with anyio.move_on_after(FINISH_GRACE_S):
        await follower.ended.wait()
    if follower.finished:
        assert follower.final_job is not None
        return follower.page(offset).to_json(follower.final_job)
    return whole_log_page(record, await jobs.logs(job_id), offset)


async def read_job_tail(followers: JobLogFollowers, cluster: Cluster, jobs: RayJobs, job_id: str,
                        lines: int) -> dict[str, Any]:
    """The last `lines` lines a job printed, with the offset to follow it from: a running job's
    come from its follower, so opening a log view does not read the whole log either."""
    page = await read_job_log(followers, cluster, jobs, job_id, offset=0, wait_s=0)
    page["logs"] = "\n".join(page["logs"].splitlines()[-lines:])
    return page


def whole_log_page(record: dict[str, Any], text: str, offset: int) -> dict[str, Any]:
    """A finished job's log read whole (Ray's one-shot answer), from `offset` on."""
    if offset > len(text):
        raise SpecError("offset", offset, f"at most {len(text)}, the length of the job's output")
    return LogPage(text[offset:], len(text)).to_json(record)
