"""The command line: ``python client.py protect in.mp4 -o out.mp4`` and the other commands, with progress bars
on stderr and results on stdout."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import httpx

from media_cleaner_client.api import MediaCleanerClient
from media_cleaner_client.constants import (
    API_KEY_HEADER,
    CLI_NAME,
    DEFAULT_BASE_URL,
    ENV_API_KEY,
    ENV_BASE_URL,
    UPLOAD_FIELDS,
    __version__,
)
from media_cleaner_client.errors import MediaCleanerError



def _human_bytes(n: Optional[float]) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _human_seconds(s: Optional[float]) -> str:
    if s is None or s != s or s < 0:
        return "--:--"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class ProgressBar:
    """A one-line progress bar on ``stream`` (stderr): redrawn with ``\\r`` on a terminal, or a
    line every few percent / seconds when the stream is not a terminal (logs, CI)."""

    WIDTH = 28
    REDRAW_EVERY = 0.1       # seconds between two terminal redraws
    LINE_EVERY_PCT = 10.0    # non-terminal: one line per this many percent ...
    LINE_EVERY_S = 15.0      # ... or per this many seconds

    def __init__(self, label: str, *, stream: Any = None, enabled: bool = True):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_pct: Optional[float] = None
        self._last_text = ""
        self._drawn = False
        self._finished = False

    def _render(self, fraction: Optional[float], text: str, columns: int = 0) -> str:
        if fraction is None:
            return f"{self.label:<11} {text}"
        fraction = min(max(fraction, 0.0), 1.0)
        width = self.WIDTH
        if columns:  # shrink the bar (not the numbers) to fit the terminal
            width = max(8, min(self.WIDTH, columns - 1 - (11 + 3 + 7 + 1 + len(text))))
        filled = int(round(fraction * width))
        bar = "#" * filled + "-" * (width - filled)
        return f"{self.label:<11} [{bar}] {fraction * 100:5.1f}% {text}"

    def show(self, fraction: Optional[float], text: str = "", *, force: bool = False) -> None:
        """Draw the bar at ``fraction`` (0–1, or None when unknown) followed by ``text``."""
        if not self.enabled or self._finished:
            return
        now = time.monotonic()
        if self.tty:
            if not force and now - self._last_draw < self.REDRAW_EVERY:
                return
            cols = shutil.get_terminal_size((80, 20)).columns
            line = self._render(fraction, text, cols)[: max(10, cols - 1)]
            self.stream.write("\r" + line.ljust(max(len(self._last_text), len(line))))
            self._last_text = line
        else:
            line = self._render(fraction, text)
            pct = None if fraction is None else fraction * 100
            due = (force or self._last_pct is None or now - self._last_draw >= self.LINE_EVERY_S
                   or (pct is not None and pct - (self._last_pct or 0) >= self.LINE_EVERY_PCT))
            if not due or line == self._last_text:
                return
            self.stream.write(line + "\n")
            self._last_text = line
            self._last_pct = pct if pct is not None else self._last_pct or 0.0
        self.stream.flush()
        self._last_draw = now
        self._drawn = True

    def bytes(self, done: int, total: Optional[int]) -> None:
        """Progress callback for byte transfers: ``bar.bytes(done, total)``."""
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = done / elapsed
        text = f"{_human_bytes(done)}/{_human_bytes(total)} {_human_bytes(rate)}/s"
        if total:
            eta = (total - done) / rate if rate > 0 else None
            text += f" ETA {_human_seconds(eta)}"
        self.show(done / total if total else None, text, force=bool(total) and done >= total)

    def task(self, task: Mapping[str, Any]) -> None:
        """Progress callback for :meth:`MediaCleanerClient.wait`: percent, status and ETA (eta_s)."""
        state = task.get("status") or "?"
        progress = float(task.get("progress") or 0.0)
        label = {"pending": "queued", "processing": "processing"}.get(state, state)
        text = f"{label} ETA {_human_seconds(task.get('eta_s'))}" if state in ("pending", "processing") else label
        self.show(progress / 100.0, text, force=state not in ("pending", "processing"))

    def finish(self, text: Optional[str] = None) -> None:
        """End the bar (newline on a terminal), optionally replacing it with ``text``."""
        if not self.enabled or self._finished:
            return
        if self.tty:
            if text is not None:
                self.stream.write("\r" + f"{self.label:<11} {text}".ljust(len(self._last_text)) + "\n")
            elif self._drawn:
                self.stream.write("\n")
        elif text is not None:
            self.stream.write(f"{self.label:<11} {text}\n")
        self.stream.flush()
        self._finished = True




def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", metavar="URL", default=argparse.SUPPRESS,
                        help=f"server base URL (default: ${ENV_BASE_URL} or {DEFAULT_BASE_URL})")
    common.add_argument("--api-key", metavar="KEY", default=argparse.SUPPRESS,
                        help=f"API key sent as {API_KEY_HEADER} (default: ${ENV_API_KEY})")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars")

    params = argparse.ArgumentParser(add_help=False)
    g = params.add_argument_group("protection parameters (server defaults when omitted)")
    g.add_argument("--protection", help="preset: invisible (default), balanced or strong; sets --epsilon and "
                                        "--video-strength, which win when given")
    g.add_argument("--epsilon", type=float, help="perturbation budget, 0.04–0.20 (default 0.12)")
    g.add_argument("--video-strength", type=float, help="strength multiplier, 1.0–2.0 (default 1.0)")
    g.add_argument("--every-n-frames", type=int, help="optimise every N-th frame, 1–30 (default 10)")
    g.add_argument("--audio-level", help="none|weak|medium|strong (or слабый|средний|сильный; default weak)")
    g.add_argument("--user-id", help="owner tag, usable as a filter in `list`")
    g.add_argument("--notes", help="free text stored with the task")
    g.add_argument("--webhook-url", help="URL the server calls when the task ends")

    parser = argparse.ArgumentParser(
        prog=CLI_NAME, parents=[common],
        description="Media Cleaner client: protect videos against face detection and voice cloning.",
        epilog=f"example: {CLI_NAME} protect in.mp4 -o out.mp4 --epsilon 0.12 --audio-level medium")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("protect", parents=[common, params], help="upload, wait, download (with progress bars)")
    p.add_argument("input", help="video file")
    p.add_argument("-o", "--output", help="output file or directory (default: <input>_protected.mp4)")
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    p.add_argument("--json", action="store_true",
                   help="print the task, where the video was saved and its report as JSON (for scripts)")

    p = sub.add_parser("upload", parents=[common, params], help="upload a video, print the task JSON")
    p.add_argument("input", help="video file")

    p = sub.add_parser("status", parents=[common], help="print a task's JSON")
    p.add_argument("task_id")

    p = sub.add_parser("wait", parents=[common], help="wait for a task to finish, print its JSON")
    p.add_argument("task_id")
    p.add_argument("--timeout", type=float, help="give up after this many seconds")

    p = sub.add_parser("download", parents=[common], help="download a completed task's video")
    p.add_argument("task_id")
    p.add_argument("-o", "--output", default=".", help="output file or directory (default: .)")

    p = sub.add_parser("list", parents=[common], help="list tasks as JSON")
    p.add_argument("--status", choices=["pending", "processing", "completed", "failed", "cancelled"])
    p.add_argument("--user-id")
    p.add_argument("--limit", type=int)
    p.add_argument("--offset", type=int)

    p = sub.add_parser("cancel", parents=[common], help="cancel a running task / delete a finished one")
    p.add_argument("task_id")

    p = sub.add_parser("report", parents=[common], help="print a task's protection report")
    p.add_argument("task_id")

    sub.add_parser("stats", parents=[common], help="print queue and worker statistics")
    sub.add_parser("health", parents=[common], help="print the server's health")
    return parser


def _upload_params(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in UPLOAD_FIELDS if getattr(args, k, None) is not None}


def verdict(report: dict) -> str:
    """The task report in one plain line: what the protection achieved, as the service measured it."""
    if report.get("error") or report.get("note"):
        return f"report: {report.get('error') or report.get('note')}"
    parts = []
    mtcnn = (report.get("detection") or {}).get("mtcnn") or {}
    if mtcnn.get("protected_rate") is not None and mtcnn.get("original_rate"):
        parts.append(f"faces still found by MTCNN in {mtcnn['protected_rate']:.0%} of sampled frames "
                     f"(original {mtcnn['original_rate']:.0%})")
    elif mtcnn.get("original_rate") == 0:
        parts.append("no face in the sampled frames")
    identity = report.get("identity") or {}
    if identity.get("match_rate") is not None:
        parts.append(f"face recognised as the person in {identity['match_rate']:.0%} of sampled frames "
                     f"(FaceNet distance {identity['mean_distance']:.2f}, match below {identity['threshold']:.1f})")
    speaker = report.get("speaker") or {}
    if speaker.get("similarity") is not None:
        parts.append(f"voice {'still matches' if speaker.get('match') else 'no longer matches'} the speaker "
                     f"(similarity {speaker['similarity']:.2f}, threshold {speaker['threshold']:.2f})")
    elif speaker.get("note"):
        parts.append(f"voice: {speaker['note']}")
    if report.get("psnr") is not None:
        parts.append(f"picture PSNR {report['psnr']:.1f} dB, SSIM {report.get('ssim', 0):.3f}")
    if not parts:
        return "report: nothing was measured"
    # The report's judges are the engines' own white-box surrogates: an upper bound on the protection.
    return "report (white-box surrogates, an upper bound): " + "; ".join(parts)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, MediaCleanerError) and exc.status_code is not None and 400 <= exc.status_code < 500:
        return 2
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, ValueError)) and not isinstance(exc, MediaCleanerError):
        return 2
    return 1


def _run(args: argparse.Namespace, client: MediaCleanerClient, quiet: bool) -> int:
    cmd = args.command

    def waiting(task_id: str, timeout: Optional[float], resume_hint: str) -> dict:
        bar = ProgressBar("processing", enabled=not quiet)
        try:
            task = client.wait(task_id, timeout=timeout, on_progress=bar.task)
        except KeyboardInterrupt:
            bar.finish("interrupted")
            raise _Interrupted(f"interrupted; task {task_id} keeps running on the server. "
                               f"Resume with: {resume_hint}") from None
        except MediaCleanerError:
            bar.finish()
            raise
        bar.finish()
        return task

    if cmd in ("protect", "upload"):
        src = Path(args.input)
        bar = ProgressBar("upload", enabled=not quiet)
        try:
            task = client.upload(src, progress=bar.bytes, **_upload_params(args))
        except BaseException:
            bar.finish()
            raise
        bar.finish(f"done: task {task['task_id']}")
        if cmd == "upload":
            _print_json(task)
            return 0
        task_id = task["task_id"]
        output = Path(args.output) if args.output else src.with_name(f"{src.stem}_protected.mp4")
        hint = f"{CLI_NAME} wait {task_id} && {CLI_NAME} download {task_id} -o {output}"
        waiting(task_id, args.timeout, hint)
        bar = ProgressBar("download", enabled=not quiet)
        try:
            saved = client.download(task_id, output, progress=bar.bytes)
        except KeyboardInterrupt:
            raise _Interrupted(f"interrupted; the protected video stays on the server. "
                               f"Download it with: {CLI_NAME} download {task_id} -o {output}") from None
        finally:
            bar.finish()
        try:
            report = client.report(task_id)
        except MediaCleanerError as exc:   # an old server, or one with reports off
            report = {"note": f"no report ({exc})"}
        if args.json:
            _print_json({"task": client.status(task_id), "saved_to": str(saved.resolve()), "report": report})
        else:
            print(f"protected video saved to {saved.resolve()}")
            print(verdict(report))
        return 0
    if cmd == "wait":
        _print_json(waiting(args.task_id, args.timeout, f"{CLI_NAME} wait {args.task_id}"))
        return 0
    if cmd == "download":
        bar = ProgressBar("download", enabled=not quiet)
        try:
            saved = client.download(args.task_id, args.output, progress=bar.bytes)
        finally:
            bar.finish()
        print(saved.resolve())
        return 0
    if cmd == "status":
        _print_json(client.status(args.task_id))
    elif cmd == "list":
        _print_json(client.list_tasks(user_id=args.user_id, status=args.status, limit=args.limit,
                                      offset=args.offset))
    elif cmd == "cancel":
        _print_json(client.cancel(args.task_id))
    elif cmd == "report":
        _print_json(client.report(args.task_id))
    elif cmd == "stats":
        _print_json(client.stats())
    elif cmd == "health":
        _print_json(client.health())
    return 0


class _Interrupted(Exception):
    """Ctrl-C while waiting; carries the resume hint."""


def main(argv: Optional[list[str]] = None, *, transport: Optional[httpx.BaseTransport] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    0 on success, 2 for usage errors and 4xx answers, 1 for other failures, 130 on Ctrl-C.
    ``transport`` is passed to the client (tests use :class:`httpx.MockTransport`).
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    quiet = bool(getattr(args, "quiet", False))
    try:
        with MediaCleanerClient(base_url=getattr(args, "server", None), api_key=getattr(args, "api_key", None),
                                transport=transport) as client:
            return _run(args, client, quiet)
    except _Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`client.py status ID | head`): not an error to report. Python's own advice:
        # point stdout at devnull so the interpreter's final flush does not fail again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):   # stdout is not a file (captured)
            pass
        return 1
    except (MediaCleanerError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
