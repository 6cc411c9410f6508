"""``python -m media_cleaner``: the protection pipeline from the command line, without a server.

    python -m media_cleaner protect talk.mp4 -o talk_protected.mp4 [--epsilon 0.12 --audio-level weak]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .auth import ROLES, KeyConfigError, KeyRing, add_key, revoke_user
from .config import Settings
from .params import AUDIO_LEVELS, ParameterError, ProtectionParams
from .pipeline import protect_video
from .probe import MediaError
from .protection import build_protectors


class UsageError(Exception):
    """A command used the wrong way; the message says how to use it."""


def add_param_arguments(parser: argparse.ArgumentParser) -> None:
    """The protection knobs, shared by every command that protects."""
    parser.add_argument("--epsilon", help="L∞ cap of the frame perturbation, 0.04–0.20 (default 0.12)")
    parser.add_argument("--video-strength", help="budget and effort multiplier, 1.0–2.0 (default 1.0)")
    parser.add_argument("--every-n-frames", help="optimise every N-th frame, 1–30 (default 10)")
    parser.add_argument("--audio-level", help=f"voice mask: {', '.join(AUDIO_LEVELS)} (default weak)")


def params_from_args(args: argparse.Namespace) -> ProtectionParams:
    return ProtectionParams.parse(args.epsilon, args.video_strength, args.every_n_frames, args.audio_level)


class ProgressLine:
    """A one-line progress bar on stderr (periodic lines when stderr is not a terminal)."""

    def __init__(self, label: str):
        self.label, self.started, self.last = label, time.monotonic(), -1.0
        self.tty = sys.stderr.isatty()

    def __call__(self, fraction: float) -> None:
        percent = 100.0 * fraction
        if (self.tty and percent - self.last < 0.5) or (not self.tty and percent - self.last < 10):
            return
        self.last = percent
        elapsed = time.monotonic() - self.started
        eta = f"{elapsed * (1 - fraction) / fraction:5.0f}s left" if fraction > 0.01 else ""
        bar = "#" * int(percent / 4)
        line = f"{self.label} [{bar:<25}] {percent:5.1f}% {eta}"
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def cmd_protect(args: argparse.Namespace) -> int:
    settings = Settings()
    params = params_from_args(args)
    source, output = Path(args.input), Path(args.output)
    if not source.is_file():
        raise MediaError(f"{source} does not exist or is not a file.")
    threads = args.threads or settings.threads_per_worker * settings.max_concurrent_tasks
    started = time.monotonic()
    bar = ProgressLine("protecting")
    work = Path(tempfile.mkdtemp(prefix="media_cleaner_"))
    try:
        info = protect_video(source, output, params, protectors=build_protectors(params, threads=threads),
                             progress=bar, temp_dir=work, threads=threads, crf=settings.video_crf,
                             preset=settings.video_preset, audio_bitrate=settings.audio_bitrate,
                             ffmpeg=settings.ffmpeg)
    finally:
        bar.done()
        shutil.rmtree(work, ignore_errors=True)
    took = time.monotonic() - started
    print(f"{output}: {info.frame_count} frames, {info.duration_s:.2f} s, protected in {took:.1f} s "
          f"({info.frame_count / max(took, 1e-9):.1f} frames/s)")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else Settings().api_keys_file
    if path is None:
        raise UsageError("Name the keys file with --file (or set MEDIA_CLEANER_API_KEYS_FILE).")
    if args.action in ("add", "revoke") and not args.user:
        raise UsageError(f"keys {args.action} needs --user NAME.")
    if args.action == "add":
        key = add_key(path, args.user, args.role)
        print(f"API key for {args.user} ({args.role}), shown once — store it now:\n{key}")
        print(f"Its hash is in {path}; start the server with MEDIA_CLEANER_API_KEYS_FILE={path}", file=sys.stderr)
    elif args.action == "revoke":
        print(f"{revoke_user(path, args.user)} key(s) of {args.user} removed from {path}; restart the server.")
    else:
        for principal in KeyRing.load(path, None).principals():
            print(f"{principal.user_id}\t{principal.role}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m media_cleaner", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    protect = commands.add_parser("protect", help="protect one video file")
    protect.add_argument("input", help="the video to protect")
    protect.add_argument("-o", "--output", required=True, help="where to write the protected mp4")
    protect.add_argument("--threads", type=int, help="CPU threads to use (default: all cores)")
    add_param_arguments(protect)
    protect.set_defaults(run=cmd_protect)

    keys = commands.add_parser("keys", help="create, list or revoke API keys (only hashes are stored)")
    keys.add_argument("action", choices=["add", "list", "revoke"])
    keys.add_argument("--user", help="user id the key belongs to (add, revoke)")
    keys.add_argument("--role", choices=ROLES, default="user", help="user (own tasks) or admin (all tasks)")
    keys.add_argument("--file", help="keys file (default: MEDIA_CLEANER_API_KEYS_FILE)")
    keys.set_defaults(run=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ParameterError, MediaError, KeyConfigError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
