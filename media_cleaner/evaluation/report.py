"""The per-task protection report the service stores when a task completes, and its before/after sheet.

It must be cheap whatever the video's length and can never fail a task, so it measures on a small
sample (its models are loaded once, ahead of the first task): :data:`SAMPLE_FRAMES` frames found by fast
seeks, the first :data:`AUDIO_SECONDS` seconds of sound. Figures: luma PSNR and SSIM of the sampled frames, the MTCNN
surrogate's detection rate on them (white box), the FaceNet surrogate's identity distance (white box),
Resemblyzer speaker similarity (white box) and the time protection took. The sheet (PNG) shows a few original frames, the same protected frames and the
perturbation (protected − original) amplified around mid-grey, so a person can see where it went.

A figure whose package is missing (facenet-pytorch, resemblyzer; requirements.txt installs both) is left
out with a note. The full black-box evaluation is ``python -m media_cleaner evaluate``.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from media_cleaner.media.ffmpeg import find_ffmpeg
from media_cleaner.protection.torch_env import import_model_packages
from media_cleaner.evaluation import EvaluationError, json_safe
from media_cleaner.evaluation.evaluate import _detection, _Originals
from media_cleaner.evaluation.media import even_indices, luma, probe, read_audio, read_frames_at
from media_cleaner.evaluation.metrics import frame_ssim

SAMPLE_FRAMES = 4          # frames measured, all shown on the sheet
SHEET_FRAMES = 4
TILE_WIDTH = 320           # pixels per frame on the sheet
AMPLIFY = 10               # the perturbation is shown ×10 around mid-grey (±13 levels fill the range)
AUDIO_SECONDS = 20.0
LABEL_HEIGHT = 22


def warm_up() -> None:
    """Load the report's models (MTCNN, the speaker encoder) ahead of the first task; missing ones are skipped.

    Loading them cold costs far more than measuring (imports of torch and the weights)."""
    import_model_packages()
    from media_cleaner.evaluation.judges import detector
    from media_cleaner.evaluation.voice import encoder
    from media_cleaner.protection.face_cloak.recognizer import RecognizerMissing, load_recognizer
    for load in (lambda: detector("mtcnn"), encoder, load_recognizer):
        try:
            load()
        except (EvaluationError, RecognizerMissing):
            pass


def _times(info, count: int) -> list[float]:
    """Seek times of ``count`` evenly spread frames. An accurate seek returns the first frame that starts at or
    after the time, so each time is a quarter frame before the frame it wants (rounding cannot skip it)."""
    step = 1.0 / info.fps if info.fps else 0.04
    return [max(0.0, (index - 0.25) * step) for index in even_indices(info.frame_count, count)]


def _psnr_ssim(originals: list[np.ndarray], protected: list[np.ndarray]) -> tuple[float, float]:
    mse = float(np.mean([np.mean((luma(a) - luma(b)) ** 2) for a, b in zip(originals, protected)]))
    psnr = math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
    return psnr, float(np.mean([frame_ssim(a, b) for a, b in zip(originals, protected)]))


def _speaker(input_path, output_path, ffmpeg, cancel) -> dict:
    from media_cleaner.evaluation.voice import MATCH_THRESHOLD, RATE, encoder, similarity
    original = read_audio(input_path, RATE, ffmpeg, AUDIO_SECONDS, cancel)
    protected = read_audio(output_path, RATE, ffmpeg, AUDIO_SECONDS, cancel)
    if original is None or protected is None:
        return {"note": "no sound"}
    try:
        speaker_encoder = encoder()
    except EvaluationError as exc:
        return {"note": str(exc)}
    a, b = speaker_encoder.embed(original), speaker_encoder.embed(protected)
    if a is None or b is None:
        return {"note": "too little speech to compare voices"}
    value = similarity(a, b)
    return {"similarity": value, "threshold": MATCH_THRESHOLD, "match": value >= MATCH_THRESHOLD,
            "white_box": True, "seconds_compared": min(AUDIO_SECONDS, len(original) / RATE)}


# FaceNet distance under which two chips are the same person (EER 0.2 % at 1.0 on the dev face photos:
# same-person mean 0.62, different people 1.39; EVALUATION.md "Identity cloak").
IDENTITY_MATCH_DISTANCE = 1.0


def _identity(judged: _Originals, protected: list[np.ndarray]) -> dict:
    """The identity cloak's own judge (white box): FaceNet's distance between each original face and the same
    place in the protected frame, on the largest face MTCNN found in the original (``judged``'s boxes)."""
    import torch
    from media_cleaner.protection.face_cloak.embedding import face_chips
    from media_cleaner.protection.face_cloak.recognizer import RecognizerMissing, load_recognizer
    if judged.boxes.get("mtcnn") is None:
        return {"note": judged.notes.get("mtcnn", "MTCNN unavailable")}
    try:
        recognizer = load_recognizer()
    except RecognizerMissing as exc:
        return {"note": str(exc)}
    distances = []
    for original, changed, faces in zip(judged.frames, protected, judged.boxes["mtcnn"]):
        if not faces:
            continue
        largest = max(faces, key=lambda face: face.area)
        box = [largest.x0, largest.y0, largest.x1, largest.y1]
        images = torch.from_numpy(np.stack([original, changed])).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            clean, moved = recognizer(face_chips(images, torch.tensor([box, box], dtype=torch.float32)))
        distances.append(float((clean - moved).norm()))
    if not distances:
        return {"note": "no face in the sampled frames"}
    return {"model": "FaceNet (the cloak's surrogate: white box, an upper bound)", "white_box": True,
            "mean_distance": float(np.mean(distances)), "threshold": IDENTITY_MATCH_DISTANCE,
            "match_rate": float(np.mean([d < IDENTITY_MATCH_DISTANCE for d in distances])),
            "frames": len(distances)}


def render_sheet(originals: list[np.ndarray], protected: list[np.ndarray]) -> np.ndarray:
    """Three rows (original, protected, perturbation ×AMPLIFY) of frames side by side, RGB uint8."""
    import cv2
    height, width = originals[0].shape[:2]
    tile_height = max(2, round(height * TILE_WIDTH / width))

    def tile(frame):
        return cv2.resize(frame, (TILE_WIDTH, tile_height), interpolation=cv2.INTER_AREA)

    def label(text):
        strip = np.full((LABEL_HEIGHT, TILE_WIDTH * len(originals), 3), 255, np.uint8)
        cv2.putText(strip, text, (6, LABEL_HEIGHT - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        return strip

    # The difference is taken at full size and only then shrunk, so a fine pattern is not lost first.
    perturbation = [np.clip(128 + AMPLIFY * (p.astype(np.int16) - o.astype(np.int16)), 0, 255).astype(np.uint8)
                    for o, p in zip(originals, protected)]
    rows = [label("original"), np.hstack([tile(f) for f in originals]),
            label("protected (as delivered)"), np.hstack([tile(f) for f in protected]),
            label(f"perturbation: protected - original, x{AMPLIFY} around grey"),
            np.hstack([tile(f) for f in perturbation])]
    return np.vstack(rows)


def write_png(image: np.ndarray, path: Path) -> None:
    """Write atomically (temp file, rename), so a reader never sees half a PNG."""
    import cv2
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise EvaluationError("the preview could not be encoded as PNG")
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data.tobytes())
    os.replace(partial, path)


def build_task_report(input_path: str | Path, output_path: str | Path, preview_path: str | Path, *,
                      protect_seconds: float, ffmpeg: str | None = None, cancel=None,
                      progress=None, original_info=None) -> dict:
    """Measure the task's cheap figures and write its sheet to ``preview_path``; the report (JSON-safe).

    ``cancel`` (the task's CancelToken) stops it between steps and kills its ffmpeg children; the caller
    handles :class:`~media_cleaner.media.cancel.TaskCancelled`. Other failures raise; the worker records them
    in the report instead of failing the task. ``progress`` receives a growing fraction in [0, 1] between
    the steps. ``original_info``: the input's probe, when the caller has it already.
    """
    started = time.monotonic()
    progress = progress or (lambda fraction: None)
    import_model_packages()   # not concurrently with the engines' own imports (see there)
    ffmpeg = find_ffmpeg(ffmpeg)
    original_info = original_info or probe(input_path, ffmpeg)
    protected_info = probe(output_path, ffmpeg)
    times = _times(original_info, SAMPLE_FRAMES)
    originals = read_frames_at(input_path, times, original_info, ffmpeg, cancel)
    protected = read_frames_at(output_path, times, protected_info, ffmpeg, cancel)
    if protected_info.width != original_info.width or protected_info.height != original_info.height:
        import cv2  # the pipeline drops an odd last row/column: compare on the common size
        protected = [cv2.resize(p, (original_info.width, original_info.height), interpolation=cv2.INTER_AREA)
                     for p in protected]
    psnr, ssim = _psnr_ssim(originals, protected)
    report: dict = {"frames_sampled": len(times), "psnr": psnr, "ssim": ssim, "protect_seconds": protect_seconds}
    if cancel is not None:
        cancel.raise_if_cancelled()
    progress(0.3)

    # The MTCNN surrogate only: the black-box judges are too slow for every task (see evaluate).
    judged = _Originals(originals, [], ["mtcnn"])
    report["detection"] = _detection(judged, protected, (1.0, 1.0))
    report["identity"] = _identity(judged, protected)
    if cancel is not None:
        cancel.raise_if_cancelled()
    progress(0.6)
    report["speaker"] = _speaker(input_path, output_path, ffmpeg, cancel) if original_info.has_audio else \
        {"note": "no sound"}
    if cancel is not None:
        cancel.raise_if_cancelled()
    progress(0.9)

    shown = even_indices(len(originals), SHEET_FRAMES)
    sheet = render_sheet([originals[i] for i in shown], [protected[i] for i in shown])
    write_png(sheet, Path(preview_path))
    report["max_abs_difference"] = int(max(np.max(np.abs(o.astype(np.int16) - p.astype(np.int16)))
                                           for o, p in zip(originals, protected)))
    report["preview_amplification"] = AMPLIFY
    report["report_seconds"] = round(time.monotonic() - started, 2)
    report["full_evaluation"] = ("python -m media_cleaner evaluate --original <your video> "
                                 "--protected <the download> (black-box judges, platform re-encode, VMAF)")
    return json_safe(report)
