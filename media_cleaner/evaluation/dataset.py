"""The data-set runner (``python -m media_cleaner evaluate-set DIR``): protect every file, evaluate each.

This is how the engines' figures are produced and compared, one command. Every video in the folder (and
its sub-folders) is protected with the given settings through the service's own pipeline
(:func:`~media_cleaner.media.pipeline.protect_video` with :func:`~media_cleaner.protection.build_protectors`
and the server's default encoder settings), then scored with :func:`.evaluate.evaluate_pair`. A folder of
speech files instead gets each file wrapped in a still grey video first, so the same pipeline and the same
figures apply (the video figures of a still frame without a face are then empty), and each utterance's
speaker figures are also taken against the other utterances in its folder (the speaker's enrolment).
"""
from __future__ import annotations

import math
import random
import shlex
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from media_cleaner.config import SUPPORTED_VIDEO_FORMATS, Settings
from media_cleaner.media.ffmpeg import (
    SOUND_DEMUXERS,
    FFmpegError,
    find_ffmpeg,
    run_ffmpeg,
    user_media_input_args,
)
from media_cleaner.params import ProtectionParams
from media_cleaner.media.pipeline import protect_video
from media_cleaner.media.probe import MediaError
from media_cleaner.protection.seams import PassThroughAudio, PassThroughVideo, Protectors
from media_cleaner.protection.registry import build_protectors, warm_up_engines
from media_cleaner.evaluation import EvaluationError
from media_cleaner.evaluation.evaluate import (
    DEFAULT_CNN_FRAMES,
    DEFAULT_FRAMES,
    DETECTOR_ORDER,
    evaluate_pair,
)
from media_cleaner.evaluation.purification import PURIFICATIONS
from media_cleaner.evaluation.voice import SPEECH_SUFFIXES

STILL_SIZE = "320x240"


def collect_inputs(folder: str | Path) -> tuple[list[Path], bool]:
    """The videos under ``folder`` (sorted), or its speech files when it holds no video; (files, is_speech)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder} does not exist or is not a folder.")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    videos = [p for p in files if p.suffix.lower() in SUPPORTED_VIDEO_FORMATS]
    if videos:
        return videos, False
    speech = [p for p in files if p.suffix.lower() in SPEECH_SUFFIXES]
    if not speech:
        raise EvaluationError(f"{folder} holds no video ({', '.join(SUPPORTED_VIDEO_FORMATS)}) and no speech "
                              f"({', '.join(sorted(SPEECH_SUFFIXES))}) files.")
    return speech, True


def wrap_speech(speech: Path, target: Path, ffmpeg: str | None = None) -> Path:
    """``speech`` as the soundtrack of a still grey video of the same length (AAC at 256 kbit/s, so the
    wrapper itself costs the sound little)."""
    args = [find_ffmpeg(ffmpeg), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"color=c=gray:s={STILL_SIZE}:r=25",
            *user_media_input_args(SOUND_DEMUXERS), "-i", str(speech),
            "-map", "0:v", "-map", "1:a", "-shortest", "-c:v", "libx264", "-preset", "ultrafast",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "256k", str(target)]
    try:
        run_ffmpeg(args)
    except FFmpegError as exc:
        raise EvaluationError(f"could not wrap {speech.name} in a video: {exc.reason}") from exc
    return target


def enrolment(utterance: Path, inputs: list[Path]) -> list[Path] | None:
    """The speaker's other utterances (the files beside ``utterance`` in its folder, one folder per speaker
    as speech corpora are laid out): what a voice database would have enrolled; None when there are none."""
    siblings = [p for p in inputs if p.parent == utterance.parent and p != utterance]
    return siblings or None


def person_photos(video: Path, root: str | Path | None) -> Path | None:
    """``root/<person>`` for a video named ``<person>__…`` when that folder exists (the development media's
    naming: the label before the double underscore), else None."""
    if root is None or "__" not in video.name:
        return None
    folder = Path(root) / video.name.split("__")[0]
    return folder if folder.is_dir() else None


# The per-file table: (column, path into the evaluate_pair result, how to show it).
COLUMNS = [
    *[(f"{name} D/R", ("video", "{variant}", "detection", name, "protection"), "percent2")
      for name in DETECTOR_ORDER],
    # The mean over the black-box detectors above (MTCNN, the white box, left out).
    ("black-box det D/R", ("video", "{variant}", "black_box_detection"), "percent2"),
    ("id match D/R", ("video", "{variant}", "identity", "match_rate"), "percent2"),
    # Over the set, the mean of these is the share of clips in which the person is still matched.
    ("best frame D/R", ("video", "{variant}", "identity", "best_frame_matched"), "percent2"),
    ("template D/R", ("video", "{variant}", "identity", "template_matched"), "percent2"),
    # The second black-box recognizer (SFace): per frame, and whether the clip's template still matches.
    ("SFace id D/R", ("video", "{variant}", "identity_sface", "match_rate"), "percent2"),
    ("SFace template D/R", ("video", "{variant}", "identity_sface", "template_matched"), "percent2"),
    # With --face-references: matched to the person's other photos, clean frames then protected ones.
    ("dlib enrol clean", ("video", "delivered", "identity", "enrolment", "original_match_rate"), "percent"),
    ("dlib enrol D/R", ("video", "{variant}", "identity", "enrolment", "match_rate"), "percent2"),
    ("SFace enrol clean", ("video", "delivered", "identity_sface", "enrolment", "original_match_rate"), "percent"),
    ("SFace enrol D/R", ("video", "{variant}", "identity_sface", "enrolment", "match_rate"), "percent2"),
    ("PSNR", ("video", "delivered", "quality", "psnr"), "1"),
    ("SSIM", ("video", "delivered", "quality", "ssim"), "3"),
    ("faceSSIM", ("video", "delivered", "quality", "face_ssim"), "3"),
    ("VMAF D/R", ("video", "{variant}", "quality", "vmaf"), "0-2"),
    # The face region enlarged to a viewer's size (evaluation.metrics.video_quality).
    ("faceVMAF D/R", ("video", "{variant}", "quality", "face_vmaf"), "0-2"),
    ("flicker×", ("video", "delivered", "quality", "flicker", "ratio"), "2"),
    # Identity after each cheap purification of the delivered file (see evaluation.purification).
    *[(f"id {name}", ("video", "delivered", "purified", name, "match_rate"), "percent")
      for name in PURIFICATIONS],
    *[(f"SFace {name}", ("video", "delivered", "purified", name, "sface", "match_rate"), "percent")
      for name in PURIFICATIONS],
    ("spk sim", ("audio", "speaker", "similarity"), "3"),
    # The black-box speaker judge after the re-encode (against the enrolment when one is given), how much less
    # it recognises the speaker than in the clean control, and whether every judge is below its threshold.
    ("R2N score", ("audio", "judges", "se_res2net50", "reencoded", "score"), "3"),
    ("R2N drop", ("audio", "judges", "se_res2net50", "drop"), "3"),
    ("voice safe D/R", ("audio", "protected_by_all", "{variant}"), "percent2"),
    ("PESQ", ("audio", "quality", "pesq"), "2"),
    ("STOI", ("audio", "quality", "stoi"), "3"),
]


def _get(result: dict, path: tuple, variant: str):
    value = result
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key.format(variant=variant))
    if isinstance(value, bool):   # a yes/no figure: its mean over the set is a share of clips
        return float(value)
    return value if isinstance(value, (int, float)) else None


def _values(result: dict, path: tuple) -> list:
    variants = ("delivered",)
    if any("{variant}" in key for key in path) and "reencoded" in result.get("video", {}):
        variants += ("reencoded",)
    return [_get(result, path, variant) for variant in variants]


def _show(values: list, style: str) -> str:
    def one(value):
        if value is None:
            return "–"
        if math.isinf(value):
            return "∞"
        if style.startswith("percent"):
            return f"{100 * value:.0f}%"
        return f"{value:.{0 if style == '0-2' else int(style)}f}"
    return "/".join(one(v) for v in values)


def means(results: list[dict]) -> dict:
    """Mean of each table column over the files that have it (an infinite PSNR counts as 100 dB)."""
    summary = {}
    for label, path, _ in COLUMNS:
        per_variant = list(zip(*[_values(r, path) for r in results])) if results else []
        column = []
        for values in per_variant:
            finite = [min(v, 100.0) for v in values if v is not None]
            column.append(sum(finite) / len(finite) if finite else None)
        summary[label] = column
    return summary


def format_set_table(report: dict) -> str:
    """The per-file table, the means and the command that reproduces them."""
    name_width = max([len(Path(f["file"]).name) for f in report["files"]] + [8])
    widths = [max(len(label), 9) for label, _, _ in COLUMNS]
    header = f"{'file':<{name_width}}" + "".join(f" {label:>{w}}" for (label, _, _), w in zip(COLUMNS, widths))
    legend = ("D/R: as delivered / after the platform re-encode; detector columns are protection rates "
              "(1 − protected/original detection)")
    lines = [f"settings: {report['settings']}, engines {report['engines']}", legend, "", header, "-" * len(header)]
    for entry in report["files"]:
        name = Path(entry["file"]).name
        if "error" in entry:
            lines.append(f"{name:<{name_width}} error: {entry['error']}")
            continue
        cells = [_show(_values(entry["result"], path), style) for _, path, style in COLUMNS]
        lines.append(f"{name:<{name_width}}" + "".join(f" {c:>{w}}" for c, w in zip(cells, widths)))
    lines.append("-" * len(header))
    cells = [_show(report["means"][label], style) for label, _, style in COLUMNS]
    lines.append(f"{'mean':<{name_width}}" + "".join(f" {c:>{w}}" for c, w in zip(cells, widths)))
    lines += ["", f"{len(report['files'])} files in {report['seconds']:.0f} s; reproduce with:",
              f"  {report['command']}"]
    return "\n".join(lines)


def pass_through_protectors(params: ProtectionParams, threads: int) -> Protectors:
    """The seams with the engines off (the baseline: the same pipeline and encode, nothing changed)."""
    return Protectors(PassThroughVideo(), None if params.audio_level == "none" else PassThroughAudio())


def engine_protectors(params: ProtectionParams, threads: int) -> Protectors:
    return build_protectors(params, threads=threads)


def seed_engines(seed: int) -> None:
    """Seed what the engines draw at random (the attacks' random transformations and jitter: Python's and
    torch's generators), so that protecting one file twice gives the same file. The models must be loaded
    already (:func:`~media_cleaner.protection.registry.warm_up_engines`): building a network draws its
    initial weights from torch's generator, and only the first task of a process builds them."""
    import torch
    random.seed(seed)
    torch.manual_seed(seed)


def evaluate_set(folder: str | Path, params: ProtectionParams, *, frames: int = DEFAULT_FRAMES,
                 cnn_frames: int = DEFAULT_CNN_FRAMES, reencode: bool = True, threads: int = 2,
                 settings: Settings | None = None, on_file: Callable[[dict], None] | None = None,
                 pass_through: bool = False, face_references: str | Path | None = None,
                 seed: int | None = 0) -> dict:
    """Protect and evaluate every file of ``folder``; ``on_file(entry)`` is called as each one finishes.

    ``pass_through``: protect with the engines off, which gives the baseline every engine is compared to.
    ``face_references``: a folder of ``<person>/<photos>``; a video named ``<person>__…`` is also judged
    against that person's photos (:func:`.evaluate.evaluate_pair`'s ``face_reference``).
    ``seed``: :func:`seed_engines` before each file, so that a run's figures reproduce (unseeded, two runs of
    `strong` differed by up to 10 points on one detector); None leaves the generators as they are.
    """
    make_protectors = pass_through_protectors if pass_through else engine_protectors
    started = time.monotonic()
    settings = settings or Settings()
    inputs, is_speech = collect_inputs(folder)
    ffmpeg = find_ffmpeg(settings.ffmpeg)
    if seed is not None and not pass_through:
        warm_up_engines()
    entries = []
    with tempfile.TemporaryDirectory(prefix="media_cleaner_set_") as work:
        work = Path(work)
        for number, source in enumerate(inputs):
            entry: dict = {"file": str(source)}
            try:
                original = wrap_speech(source, work / f"{number}_wrapped.mp4", ffmpeg) if is_speech else source
                protected = work / f"{number}_protected.mp4"
                t0 = time.monotonic()
                if seed is not None:
                    seed_engines(seed)
                protectors = make_protectors(params, threads)
                protect_video(original, protected, protectors, temp_dir=work / "tmp",
                              threads=threads, crf=settings.video_crf, preset=settings.video_preset,
                              audio_bitrate=settings.audio_bitrate, ffmpeg=ffmpeg)
                entry["protect_seconds"] = round(time.monotonic() - t0, 2)
                entry["result"] = evaluate_pair(original, protected, frames=frames, cnn_frames=cnn_frames,
                                                reencode=reencode, ffmpeg=ffmpeg, threads=threads,
                                                speech_reference=enrolment(source, inputs) if is_speech else None,
                                                face_reference=person_photos(source, face_references))
            except (EvaluationError, MediaError) as exc:   # one bad file must not stop the whole set
                entry["error"] = str(exc)
            entries.append(entry)
            if on_file is not None:
                on_file(entry)
    parts = ["python", "-m", "media_cleaner", "evaluate-set", str(folder), "--epsilon", str(params.epsilon),
             "--video-strength", str(params.video_strength), "--every-n-frames", str(params.every_n_frames),
             "--audio-level", params.audio_level, "--frames", str(frames), "--cnn-frames", str(cnn_frames)]
    if face_references:
        parts += ["--face-references", str(face_references)]
    if not reencode:
        parts.append("--no-reencode")
    if pass_through:
        parts.append("--pass-through")
    parts += ["--seed", "none" if seed is None else str(seed)]
    good = [e["result"] for e in entries if "result" in e]
    return {"settings": {"epsilon": params.epsilon, "video_strength": params.video_strength,
                         "every_n_frames": params.every_n_frames, "audio_level": params.audio_level,
                         "crf": settings.video_crf, "preset": settings.video_preset},
            "seed": seed, "engines": "off (pass-through)" if pass_through else "on", "files": entries,
            "means": means(good),
            "seconds": round(time.monotonic() - started, 1), "command": shlex.join(parts)}
