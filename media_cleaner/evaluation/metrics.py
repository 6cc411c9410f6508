"""Picture and sound quality: how much the protection costs the viewer and the listener.

Video: PSNR and SSIM on luma over all frames and VMAF, from one ffmpeg run (its psnr, ssim and libvmaf
filters); SSIM inside the original face boxes on the sampled frames, where a perturbation is most visible;
VMAF of the face region enlarged to a viewer's size (``face_vmaf``).
A distorted video of another size (the platform re-encode) is scaled back to the reference size first, as
VMAF's own method prescribes. Audio: SNR, PESQ (ITU-T P.862.2 wide band, 16 kHz) and STOI.
"""
from __future__ import annotations

import math
import re
import subprocess

import numpy as np

from media_cleaner.media.ffmpeg import FFmpegError, find_ffmpeg, run_ffmpeg, user_media_input_args
from media_cleaner.media.probe import MediaInfo
from media_cleaner.evaluation import EvaluationError
from media_cleaner.evaluation.judges import Box
from media_cleaner.evaluation.media import luma

AUDIO_RATE = 16000
# PESQ and STOI are defined on utterances; a long soundtrack is scored on its first two minutes.
MAX_AUDIO_SECONDS = 120.0
# The protected sound may be shifted by an encoder's priming; it is realigned within this lag.
MAX_AUDIO_LAG_S = 0.1

_PSNR = re.compile(r"PSNR y:(inf|[\d.]+)")
_SSIM = re.compile(r"SSIM Y:([\d.]+)")
_VMAF = re.compile(r"\[Parsed_libvmaf_(\d+) @ [^\]]*\] VMAF score: ([\d.]+)")

# The height in pixels at which :func:`video_quality`'s ``face_vmaf`` shows the face region: half of a 1080p screen, a
# talking head watched full-screen or on a phone. A small video is enlarged that much by every player; a
# perturbation that cannot be seen at the video's own size can be seen there (EVALUATION.md).
FACE_VIEW_HEIGHT = 540
# The face region is the largest face's box widened by this share of its side on each side (forehead, jaw).
FACE_REGION_MARGIN = 0.2


def has_libvmaf(ffmpeg: str | None = None) -> bool:
    result = subprocess.run([find_ffmpeg(ffmpeg), "-hide_banner", "-filters"], capture_output=True, check=False)
    return b" libvmaf " in result.stdout


def video_quality(reference: str, distorted: str, reference_info: MediaInfo, *, vmaf: bool = True,
                  face: tuple[int, int, int, int] | None = None, ffmpeg: str | None = None, threads: int = 2,
                  cancel=None) -> dict:
    """``{"psnr", "ssim", "vmaf", "face_vmaf"}`` of ``distorted`` against ``reference`` over all frames (luma).

    PSNR is ffmpeg's: from the mean squared error averaged over frames (inf when every frame is identical).
    ``vmaf`` is None when the ffmpeg in use lacks libvmaf. ``face_vmaf`` is VMAF over the face region ``face``
    (reference pixels, :func:`face_region`) scaled to FACE_VIEW_HEIGHT pixels tall, as a viewer sees a face
    enlarged; None without a region or libvmaf. The whole-frame VMAF averages the face with everything around
    it and judges a small video at its own size: a cloak that visibly ages a face watched full-screen kept it
    above 90. All of them come from one decode of each video.
    """
    executable = find_ffmpeg(ffmpeg)
    vmaf = vmaf and has_libvmaf(ffmpeg)
    face = face if vmaf else None
    width, height = reference_info.width, reference_info.height
    outputs = 2 + vmaf + (face is not None)
    labels = "".join(f"[d{i}]" for i in range(outputs)), "".join(f"[r{i}]" for i in range(outputs))
    graph = (f"[1:V:0]scale={width}:{height}:flags=bicubic,format=yuv420p,setpts=PTS-STARTPTS,"
             f"split={outputs}{labels[0]};"
             f"[0:V:0]format=yuv420p,setpts=PTS-STARTPTS,split={outputs}{labels[1]};"
             "[d0][r0]psnr[p];[d1][r1]ssim[s]")
    maps = ["-map", "[p]", "-map", "[s]"]
    if vmaf:
        # libvmaf takes the distorted picture first, the reference second.
        graph += f";[d2][r2]libvmaf=n_threads={threads}[v]"
        maps += ["-map", "[v]"]
    if face is not None:
        x, y, w, h = face
        enlarge = f"crop={w}:{h}:{x}:{y},scale={max(2, round(w * FACE_VIEW_HEIGHT / h / 2) * 2)}:" \
                  f"{FACE_VIEW_HEIGHT}:flags=bicubic"
        graph += f";[d3]{enlarge}[fd];[r3]{enlarge}[fr];[fd][fr]libvmaf=n_threads={threads}[f]"
        maps += ["-map", "[f]"]
    args = [executable, "-hide_banner", "-nostdin", "-nostats", "-threads", str(threads),
            *user_media_input_args(), "-i", str(reference), *user_media_input_args(), "-i", str(distorted),
            "-filter_complex", graph, *maps, "-f", "null", "-"]
    try:
        log = run_ffmpeg(args, registry=cancel)
    except FFmpegError as exc:
        raise EvaluationError(f"ffmpeg could not compare the videos: {exc.reason}") from exc
    psnr, ssim = _PSNR.findall(log), _SSIM.findall(log)
    if not psnr or not ssim:
        raise EvaluationError("ffmpeg compared the videos but printed no PSNR/SSIM (no frames in common?)")
    # Each libvmaf prints its score when the graph closes, in no fixed order, tagged with its place in the
    # graph: the whole frame's comes first in the graph, the face's second.
    scores = [float(score) for _, score in sorted((int(n), score) for n, score in _VMAF.findall(log))]
    if len(scores) < vmaf + (face is not None):
        raise EvaluationError("ffmpeg compared the videos but printed no VMAF (no frames in common?)")
    return {"psnr": math.inf if psnr[-1] == "inf" else float(psnr[-1]), "ssim": float(ssim[-1]),
            "vmaf": scores[0] if vmaf else None, "face_vmaf": scores[1] if face is not None else None}


def face_region(boxes: list[list[Box]], width: int, height: int) -> tuple[int, int, int, int] | None:
    """The region ``(x, y, w, h)`` (even sizes, inside the frame) that covers each sampled frame's largest
    face box widened by FACE_REGION_MARGIN; None when no face was found in any frame. One region for the
    whole video, so that a filter can cut it from every frame; a face that moves across the frame makes it
    large, and the figure then dilutes towards the whole frame's."""
    largest = [max(frame_boxes, key=lambda box: box.area) for frame_boxes in boxes if frame_boxes]
    if not largest:
        return None
    margin = FACE_REGION_MARGIN * max(max(b.x1 - b.x0, b.y1 - b.y0) for b in largest)
    x0 = max(0, int(min(b.x0 for b in largest) - margin))
    y0 = max(0, int(min(b.y0 for b in largest) - margin))
    x1 = min(width, int(math.ceil(max(b.x1 for b in largest) + margin)))
    y1 = min(height, int(math.ceil(max(b.y1 for b in largest) + margin)))
    w, h = (x1 - x0) // 2 * 2, (y1 - y0) // 2 * 2
    return (x0, y0, w, h) if w >= 16 and h >= 16 else None


def frame_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Luma SSIM of two RGB frames (or crops) of the same size, scikit-image's Gaussian-free default."""
    from skimage.metrics import structural_similarity
    ya, yb = luma(a), luma(b)
    side = min(ya.shape)
    window = min(7, side if side % 2 else side - 1)
    if window < 3:
        return 1.0 if np.array_equal(ya, yb) else 0.0
    return float(structural_similarity(ya, yb, data_range=255.0, win_size=window))


def _box_slices(box: Box, width: int, height: int):
    b = box.clipped(width, height)
    return slice(int(b.y0), int(math.ceil(b.y1))), slice(int(b.x0), int(math.ceil(b.x1)))


def face_ssim(originals: list[np.ndarray], protected: list[np.ndarray], boxes: list[list[Box]]) -> float | None:
    """Mean luma SSIM inside the original frames' face boxes; None when no face was found anywhere."""
    scores = []
    for original, changed, frame_boxes in zip(originals, protected, boxes):
        height, width = original.shape[:2]
        for box in frame_boxes:
            rows, cols = _box_slices(box, width, height)
            if rows.stop - rows.start >= 8 and cols.stop - cols.start >= 8:
                scores.append(frame_ssim(original[rows, cols], changed[rows, cols]))
    return float(np.mean(scores)) if scores else None


def face_flicker(originals: list[np.ndarray], original_next: list[np.ndarray], protected: list[np.ndarray],
                 protected_next: list[np.ndarray], boxes: list[list[Box]]) -> dict | None:
    """How much the face changes from each sampled frame to the next: the mean absolute luma change inside
    the original face boxes, in the protected video and in the original, and their ratio.

    A perturbation computed afresh on every frame shimmers even where the person holds still; one that
    follows the face does not. A ratio of 1 is the original's own motion (None for a still original, whose
    change is 0: ``excess``, the difference in luma levels, still says it); None when no face was found.
    """
    changed, own = [], []
    for frame, after, guarded, guarded_after, frame_boxes in zip(originals, original_next, protected,
                                                                  protected_next, boxes):
        height, width = frame.shape[:2]
        for box in frame_boxes:
            rows, cols = _box_slices(box, width, height)
            if rows.stop - rows.start < 8 or cols.stop - cols.start < 8:
                continue
            own.append(float(np.mean(np.abs(luma(after[rows, cols]) - luma(frame[rows, cols])))))
            changed.append(float(np.mean(np.abs(luma(guarded_after[rows, cols]) - luma(guarded[rows, cols])))))
    if not own:
        return None
    original_change, protected_change = float(np.mean(own)), float(np.mean(changed))
    ratio = protected_change / original_change if original_change > 0 else None
    return {"protected": protected_change, "original": original_change, "ratio": ratio,
            "excess": protected_change - original_change}


# --- sound ---------------------------------------------------------------------------------------------

def align(reference: np.ndarray, degraded: np.ndarray, rate: int = AUDIO_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Both signals cut to their common part after undoing a small delay of ``degraded`` (cross-correlation)."""
    max_lag = int(MAX_AUDIO_LAG_S * rate)
    window = min(len(reference), len(degraded), 10 * rate)
    lag = 0
    if window > 4 * max_lag:
        a, b = reference[:window], degraded[:window]
        size = 1 << int(math.ceil(math.log2(2 * window)))
        corr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
        candidates = np.concatenate([corr[:max_lag + 1], corr[-max_lag:]])
        lags = np.concatenate([np.arange(max_lag + 1), np.arange(-max_lag, 0)])
        if np.max(np.abs(candidates)) > 0:
            lag = int(lags[int(np.argmax(candidates))])
    if lag > 0:
        degraded = degraded[lag:]
    elif lag < 0:
        reference = reference[-lag:]
    length = min(len(reference), len(degraded))
    return reference[:length], degraded[:length]


def snr_db(reference: np.ndarray, degraded: np.ndarray) -> float:
    """Signal-to-noise ratio of ``degraded`` against ``reference`` in dB (inf when identical)."""
    noise = float(np.sum((reference.astype(np.float64) - degraded) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def audio_quality(reference: np.ndarray, degraded: np.ndarray, rate: int = AUDIO_RATE) -> dict:
    """``{"snr_db", "pesq", "stoi"}`` of two mono 16 kHz signals; a figure that cannot be computed
    (no speech for PESQ, too short for STOI) is None with the reason under ``notes``."""
    reference, degraded = align(reference, degraded, rate)
    limit = int(MAX_AUDIO_SECONDS * rate)
    reference, degraded = reference[:limit], degraded[:limit]
    result: dict = {"snr_db": snr_db(reference, degraded), "pesq": None, "stoi": None}
    notes = []
    try:
        from pesq import pesq
        result["pesq"] = float(pesq(rate, reference, degraded, "wb"))
    except ImportError:
        notes.append("pesq: package missing")
    except Exception as exc:   # the pesq package raises its own errors for silence and too-short audio
        notes.append(f"pesq: {type(exc).__name__}: {exc}".strip(": "))
    try:
        from pystoi import stoi
        result["stoi"] = float(stoi(reference, degraded, rate, extended=False))
    except ImportError:
        notes.append("stoi: package missing")
    except Exception as exc:
        notes.append(f"stoi: {type(exc).__name__}: {exc}")
    if notes:
        result["notes"] = notes
    return result
