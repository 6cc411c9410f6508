"""Engine processes: each worker runs its tasks' heavy work in one long-lived child process.

Why: the engines' Python code holds the GIL for long stretches, so in worker threads it starved the API's
event loop (``/status`` took ~300 ms at the median under load). In a child process it cannot; the server
process only relays progress and results, and the child runs at a lower priority so the API wins the CPU.

The child (:func:`_child_main`) is started with the "spawn" method (nothing of the server's threads or torch
state is forked), leads its own process group (killing the group also kills its ffmpeg children), loads
and warms up the models once, then runs one :class:`~media_cleaner.service.queue.jobs.Job` after another. Cancel and
shutdown kill the group (:meth:`EngineProcess.kill`); the next task starts a fresh child.

Messages, one pipe each way. Server → child: a ``Job``, or ``None`` to exit. Child → server:
``("progress", fraction)`` (at most 5 a second), ``("done", report)``,
``("error", kind, type_name, message, traceback)`` with kind ``media`` / ``missing-file`` / ``other``, and
``("log", logger_name, level, text)``: the child's log records, written to the server's logs by the server
(one process writes the rotating log files, so rotation stays safe).
"""
from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Callable

from media_cleaner.config import Settings
from media_cleaner.service.queue.jobs import Job, run_job, warm_up
from media_cleaner.media.cancel import CancelToken, TaskCancelled
from media_cleaner.media.probe import MediaError

log = logging.getLogger("media_cleaner.engine")

# Added to the child's niceness (its ffmpeg children inherit it): when the API and the engines both want the
# CPU, the API (nice 0) gets about 10× the share of a nice-10 process; idle cores still all go to the engines.
ENGINE_NICENESS = 10
PROGRESS_INTERVAL_S = 0.2   # the child sends at most 5 progress messages a second
PARENT_POLL_S = 0.2         # how often the child checks that the server still exists
CANCEL_POLL_S = 0.1         # how often a waiting worker looks at its task's cancel token


@dataclass(frozen=True)
class EngineConfig:
    """What a child needs to know at start (picklable)."""

    factory: str            # "module:function" building a task's protectors: f(params, threads=...)
    threads: int            # the worker's share of the cores (torch threads)
    warm_up: bool           # load and warm up the engines at start
    warm_up_report: bool    # also the report's models
    log_level: str
    parent_pid: int

    @classmethod
    def for_worker(cls, settings: Settings) -> "EngineConfig":
        """A worker's engine in this process: its share of the cores, warm-up as configured."""
        return cls(factory=settings.engine_factory, threads=settings.threads_per_worker, warm_up=settings.warm_up,
                   warm_up_report=settings.warm_up and settings.task_reports, log_level=settings.log_level,
                   parent_pid=os.getpid())


class EngineCrashed(RuntimeError):
    """The engine process died while it had a task (crash, out-of-memory kill)."""

    def __init__(self, exitcode: int | None):
        super().__init__(f"The processing engine crashed ({describe_exit(exitcode)}); "
                         f"the task can be uploaded again.")
        self.exitcode = exitcode


class EngineStalled(RuntimeError):
    """The engine process reported no progress for too long (hung, or stopped) and was killed."""

    def __init__(self, stall_s: float):
        super().__init__(f"Processing made no progress for {stall_s:.0f} s and was stopped (the engine process "
                         f"hung or was paused). Please try again; if it happens again, tell the server's operator.")


class EngineFailure(RuntimeError):
    """An unexpected error raised in the engine process; ``remote_type`` and ``remote_traceback`` tell what."""


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "it stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}" + (", perhaps out of memory" if exitcode == -signal.SIGKILL else "")
    return f"exit code {exitcode}"


def _remote_error(kind: str, type_name: str, message: str, trace: str) -> Exception:
    """The child's error as the exception the worker handles: MediaError and FileNotFoundError keep their type."""
    exc: Exception
    if kind == "media":
        exc = MediaError(message)
    elif kind == "missing-file":
        exc = FileNotFoundError(message)
    else:
        exc = EngineFailure(message)
    exc.remote_type, exc.remote_traceback = type_name, trace
    return exc


# ----------------------------------------------------------------------------------------- server side

class EngineProcess:
    """The server's handle on one worker's engine process. Used by its worker thread; :meth:`kill` may also
    come from the pool's stop."""

    def __init__(self, config: EngineConfig, name: str):
        self.config, self.name = config, name
        self._lock = threading.RLock()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._jobs: Connection | None = None      # our sending end
        self._events: Connection | None = None    # our receiving end
        self._inbox: queue.Queue = queue.Queue()  # progress, results and "eof", from the relay thread
        self._relay: threading.Thread | None = None

    def start(self) -> None:
        """Start the child if none is running (it warms up while the worker waits for a task)."""
        with self._lock:
            if self._process is not None:
                return
            context = multiprocessing.get_context("spawn")
            job_reader, job_writer = context.Pipe(duplex=False)
            event_reader, event_writer = context.Pipe(duplex=False)
            process = context.Process(target=_child_main, args=(self.config, job_reader, event_writer),
                                      name=f"{self.name}-engine", daemon=True)
            process.start()
            job_reader.close()     # only the child holds its ends now, so its exit reads as EOF here
            event_writer.close()
            self._inbox = queue.Queue()
            self._relay = threading.Thread(target=_relay, args=(event_reader, self._inbox),
                                           name=f"{self.name}-engine", daemon=True)
            self._relay.start()
            self._process, self._jobs, self._events = process, job_writer, event_reader
            log.info("%s: engine process %d started", self.name, process.pid)

    def run(self, job: Job, progress: Callable[[float], None], cancel: CancelToken,
            stall_s: float | None = None) -> dict:
        """Run ``job`` in the child; its report. Raises TaskCancelled once ``cancel`` is set (the child is
        killed), EngineCrashed if the child dies, EngineStalled (the child is killed) if it sends nothing for
        ``stall_s``, the child's MediaError / FileNotFoundError / EngineFailure."""
        with self._lock:
            if self._process is not None and not self._process.is_alive():
                log.warning("%s: the engine process had exited (%s); starting a new one", self.name,
                            describe_exit(self._process.exitcode))
                self.kill()
            self.start()
            jobs, inbox = self._jobs, self._inbox
        try:
            jobs.send(job)
        except OSError:   # it died just now
            raise EngineCrashed(self.kill()) from None
        heard = time.monotonic()   # the last message from the child: its watchdog
        while True:
            if cancel.cancelled:
                self.kill()
                raise TaskCancelled("The task was cancelled")
            try:
                message = inbox.get(timeout=CANCEL_POLL_S)
            except queue.Empty:
                if stall_s is not None and time.monotonic() - heard > stall_s:
                    log.error("%s: no progress for %.0f s; killing the engine process", self.name, stall_s)
                    self.kill()
                    raise EngineStalled(stall_s) from None
                continue
            heard = time.monotonic()
            kind = message[0]
            if kind == "progress":
                progress(message[1])
            elif kind == "done":
                return message[1]
            elif kind == "error":
                raise _remote_error(*message[1:])
            else:   # "eof": the child is gone
                raise EngineCrashed(self.kill())

    def kill(self) -> int | None:
        """Kill the child and its process group (its ffmpeg children too); its exit code (None: none ran)."""
        with self._lock:
            process, self._process = self._process, None
            if process is None:
                return None
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass   # the group is gone, or the child has not made it yet (then it has no children)
            process.kill()
            process.join(timeout=30)
            if process.exitcode is None:   # SIGKILL waits for a process stuck in the kernel (e.g. disk I/O)
                log.error("%s: engine process %d did not end after SIGKILL", self.name, process.pid)
            self._relay.join(timeout=5)   # it reads EOF once the child is gone
            self._jobs.close()
            self._events.close()
            return process.exitcode


def _relay(events: Connection, inbox: queue.Queue) -> None:
    """Server side: the child's log records go to the server's logs at once (also between tasks), the rest to
    the worker waiting on ``inbox``."""
    while True:
        try:
            message = events.recv()
        except (EOFError, OSError):
            inbox.put(("eof",))
            return
        except Exception:   # a message that does not unpickle; the stream itself is still aligned
            log.exception("unreadable message from an engine process")
            continue
        if message[0] == "log":
            _, name, level, text = message
            logging.getLogger(name).log(level, "%s", text)
        else:
            inbox.put(message)


# ------------------------------------------------------------------------------------------ child side

class _Channel:
    """The child's sending end, shared by its main thread and whatever thread logs."""

    def __init__(self, connection: Connection):
        self._connection = connection
        self._lock = threading.Lock()

    def send(self, message: tuple) -> None:
        with self._lock:
            self._connection.send(message)


class _LogForwarder(logging.Handler):
    def __init__(self, channel: _Channel):
        super().__init__()
        self._channel = channel
        self.setFormatter(logging.Formatter("%(message)s"))   # the server's handlers add time, level, name

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._channel.send(("log", record.name, record.levelno, self.format(record)))
        except Exception:
            pass   # the server is gone: nowhere to log to, and the watchdog ends this process


def _exit_with_parent(parent_pid: int) -> None:
    """End this process and its group (ffmpeg children too) once the server is gone, e.g. after kill -9.

    A thread polling getppid() rather than prctl(PR_SET_PDEATHSIG): the signal fires when the *thread* that
    started the child ends (workers start children from their threads), and it is Linux-only; the poll is
    one cheap system call five times a second."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _load_factory(path: str) -> Callable:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _run(job: Job, config: EngineConfig, channel: _Channel) -> tuple:
    """One job in the child; the message that answers it."""
    last_sent = 0.0

    def progress(fraction: float) -> None:
        nonlocal last_sent
        now = time.monotonic()
        if fraction >= 1.0 or now - last_sent >= PROGRESS_INTERVAL_S:
            last_sent = now
            channel.send(("progress", fraction))

    try:
        factory = _load_factory(config.factory)
        report = run_job(job, lambda params, threads: factory(params, threads=threads), progress,
                         CancelToken())   # never set: a cancel kills this process instead
    except MediaError as exc:
        return "error", "media", type(exc).__name__, str(exc), ""
    except FileNotFoundError as exc:
        return "error", "missing-file", type(exc).__name__, str(exc), traceback.format_exc()
    except Exception as exc:
        return "error", "other", type(exc).__name__, str(exc), traceback.format_exc()
    return "done", report


def _child_main(config: EngineConfig, jobs: Connection, events: Connection) -> None:
    # A process group of its own: the server kills it with its ffmpeg children in one os.killpg. Not a session
    # (os.setsid): with the kernel's autogroup scheduling (sched_autogroup_enabled=1, the default on many
    # distributions) each session is a scheduling group of its own, the CPU is shared between groups first and
    # a nice value only counts inside its group: in sessions of their own the nice-10 engines competed with
    # the API as equals (measured on 2 cores, 2 busy engines, 4 clients polling /status: 324-400 requests/s
    # with the engines at 86-114% of a core; in the server's group 569 requests/s, the engines at 79%;
    # tools/engine_share.py).
    os.setpgid(0, 0)
    _exit_with_parent(config.parent_pid)
    os.nice(ENGINE_NICENESS)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):   # before torch is imported
        os.environ[variable] = str(config.threads)
    channel = _Channel(events)
    root = logging.getLogger()
    root.handlers[:] = [_LogForwarder(channel)]
    root.setLevel(config.log_level)
    if config.warm_up:
        warm_up(report=config.warm_up_report, threads=config.threads)
    while True:
        try:
            job = jobs.recv()
        except (EOFError, OSError):
            return   # the server closed its end
        if job is None:
            return
        try:
            channel.send(_run(job, config, channel))
        except OSError:
            return   # the server is gone
