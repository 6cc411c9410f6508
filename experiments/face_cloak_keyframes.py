"""Quick face-cloak experiments on single keyframes: attack two frames of each clip (a cold keyframe, as
the cloak does on a new face), encode them as our pipeline would (libx264 CRF 17, yuv420p), run the
platform re-encode, and score every judge, face SSIM and VMAF. A configuration takes minutes instead of
the probe's hour, so it is the tool for comparing CloakConfig settings side by side; the probe
(experiments/face_cloak_probe.py) then measures the chosen one on whole videos.

    .venv/bin/python -m experiments.face_cloak_keyframes NAME [--clips DIR_OR_FILES ...] [--epsilon 0.12] \
        [--strength 1] [--config FIELD=VALUE ...] [--out /tmp/face_cloak_keyframes]

Prints one line: protection rates as delivered / after the re-encode (MTCNN is white box; BB is the mean
of Haar, dlib HOG and dlib CNN), the dlib identity match rate, VMAF median (min), face SSIM median and the
attack's seconds per keyframe; appends it to OUT/results.txt and writes close-up strips (original |
protected | 8 × difference) of the first clip's frames.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments.face_cloak_probe import cloak_config, videos  # noqa: E402
from media_cleaner.evaluation.judges import Box, best_match, detector, embedder  # noqa: E402
from media_cleaner.evaluation.media import probe, read_frames  # noqa: E402
from media_cleaner.evaluation.metrics import frame_ssim, video_quality  # noqa: E402
from media_cleaner.evaluation.reencode import platform_reencode  # noqa: E402
from media_cleaner.protection.face_cloak import FaceCloak  # noqa: E402
from media_cleaner.media.ffmpeg import find_ffmpeg  # noqa: E402
from media_cleaner.params import ProtectionParams  # noqa: E402
from media_cleaner.protection.seams import VideoStreamInfo  # noqa: E402

# The development clips: outside this repository, beside the checkout, and never committed (their rights stay
# with their owners, so a fresh clone has none); --clips takes any other videos.
DEV_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "media" / "dev" / "videos"
DEV_CLIPS = ["matt_damon__pcavs_00010", "amy_adams__pcavs_00373", "david_beckham__pcavs_00098",
             "hdtf_woman_glasses_unknown__vretalking_5", "katie_hill__sadtalker_WDA_000",
             "eric_swalwell_guess__vretalking_2", "hdtf_man_suit_unknown__vretalking_1",
             "rhea_seehorn__w2lgfpgan_kim_7s_raw"]
JUDGES = ("mtcnn", "haar", "dlib_hog", "dlib_cnn")
FFMPEG = find_ffmpeg()


def keyframes(clips: list[Path], cache: Path) -> list[tuple[str, np.ndarray]]:
    """Frames at a quarter and three quarters of each clip (decoded once, then cached)."""
    frames = []
    for clip in clips:
        cached = cache / f"{clip.stem}.npy"
        if not cached.exists():
            info = probe(clip)
            np.save(cached, np.stack(read_frames(clip, [info.frame_count // 4, 3 * info.frame_count // 4], info)))
        frames += [(clip.stem, frame) for frame in np.load(cached)]
    return frames


def dev_keyframes(cache: str | Path) -> list[tuple[str, np.ndarray]]:
    """:func:`keyframes` of the :data:`DEV_CLIPS` in :data:`DEV_VIDEOS` (../shared/media/dev/videos, outside
    this repository and never committed: the clips' rights stay with their owners), decoded once into
    ``cache``. The figures these keyframes gave are in EVALUATION.md."""
    Path(cache).mkdir(parents=True, exist_ok=True)
    return keyframes([DEV_VIDEOS / f"{name}.mp4" for name in DEV_CLIPS], Path(cache))


def encode(frame: np.ndarray, target: Path, crf: int = 17) -> None:
    """A 3-frame still clip, coded as the pipeline codes (libx264 CRF 17, yuv420p); CRF 0 is lossless."""
    height, width = frame.shape[:2]
    subprocess.run([FFMPEG, "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
                    "-r", "25", "-i", "-", "-c:v", "libx264", "-crf", str(crf), "-preset", "fast", "-pix_fmt", "yuv420p",
                    str(target)], input=np.stack([frame] * 3).tobytes(), check=True)


def decode(path: Path, width: int, height: int) -> np.ndarray:
    """The first frame, scaled back to width × height (the re-encode is smaller)."""
    result = subprocess.run([FFMPEG, "-loglevel", "error", "-i", str(path), "-frames:v", "1", "-s", f"{width}x{height}",
                             "-sws_flags", "bicubic", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                            capture_output=True, check=True)
    return np.frombuffer(result.stdout[:width * height * 3], np.uint8).reshape(height, width, 3)


def strip(original: np.ndarray, delivered: np.ndarray, box: Box, target: Path) -> None:
    side = max(box.x1 - box.x0, box.y1 - box.y0) * 1.6
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    y0, x0, y1, x1 = int(max(0, cy - side / 2)), int(max(0, cx - side / 2)), int(cy + side / 2), int(cx + side / 2)
    before, after = original[y0:y1, x0:x1], delivered[y0:y1, x0:x1]
    difference = np.clip(np.abs(after.astype(int) - before.astype(int)) * 8, 0, 255).astype(np.uint8)
    picture = np.concatenate([before, after, difference], axis=1)
    if picture.shape[0] < 300:
        picture = cv2.resize(picture, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(target), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))


def score(frame: np.ndarray, protected: np.ndarray, work: Path, tag: str) -> tuple[dict, Box | None, np.ndarray]:
    """One keyframe's figures; also the face box and the delivered frame (for the strip)."""
    height, width = frame.shape[:2]
    original, delivered, reencoded = work / f"{tag}_o.mp4", work / f"{tag}_d.mp4", work / f"{tag}_r.mp4"
    encode(frame, original, crf=0)   # the lossless reference VMAF compares with
    encode(protected, delivered)
    platform_reencode(delivered, reencoded)
    variants = {"D": decode(delivered, width, height), "R": decode(reencoded, width, height)}
    reference = {name: detector(name).detect(frame) for name in JUDGES}
    boxes = [b.clipped(width, height) for b in (reference["mtcnn"] or reference["dlib_hog"])]
    row = {"vmaf": video_quality(str(original), str(delivered), probe(original))["vmaf"]}
    if boxes:
        row["face_ssim"] = float(np.mean([frame_ssim(frame[int(b.y0):int(b.y1), int(b.x0):int(b.x1)],
                                                     variants["D"][int(b.y0):int(b.y1), int(b.x0):int(b.x1)])
                                          for b in boxes]))
    for variant, image in variants.items():
        for name in JUDGES:
            if reference[name]:
                found = detector(name).detect(image)
                row[f"{name}_{variant}"] = float(np.mean([best_match(b, found) is None for b in reference[name]]))
        if boxes:   # identity at the original face box, as the evaluation does
            distance = np.linalg.norm(embedder().embed(frame, boxes[0]) - embedder().embed(image, boxes[0]))
            row[f"id_{variant}"] = float(distance < 0.6)
    return row, (boxes[0] if boxes else None), variants["D"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="a label for this configuration")
    parser.add_argument("--clips", nargs="+", help="videos or folders (default: eight dev clips, 224 px to 1080p)")
    parser.add_argument("--epsilon", type=float, default=0.12)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--config", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--out", default="/tmp/face_cloak_keyframes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = cloak_config(args.config)
    clips = videos(args.clips) if args.clips else [DEV_VIDEOS / f"{name}.mp4" for name in DEV_CLIPS]
    out = Path(args.out)
    work = out / args.name
    (out / "cache").mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    params = ProtectionParams(epsilon=args.epsilon, video_strength=args.strength)
    rows, attack_s = [], 0.0
    for i, (clip, frame) in enumerate(keyframes(clips, out / "cache")):
        cloak = FaceCloak(params, config=config)
        cloak.begin(VideoStreamInfo(frame.shape[1], frame.shape[0], 25.0, 1))
        started = time.monotonic()
        protected = cloak.protect_frame(frame, 0.0, 0)
        attack_s += time.monotonic() - started
        row, box, delivered = score(frame, protected, work, str(i))
        rows.append(row)
        if i < 2 and box is not None:
            strip(frame, delivered, box, out / f"{args.name}_strip{i}.png")

    def mean(key: str) -> float:
        return float(np.nanmean([row[key] for row in rows if key in row]))

    black_box = {v: np.mean([mean(f"{name}_{v}") for name in JUDGES[1:]]) for v in "DR"}
    line = (f"{args.name:24s} eps={args.epsilon:g} strength={args.strength:g} | MTCNN {mean('mtcnn_D'):.2f}/"
            f"{mean('mtcnn_R'):.2f} Haar {mean('haar_D'):.2f}/{mean('haar_R'):.2f} HOG {mean('dlib_hog_D'):.2f}/"
            f"{mean('dlib_hog_R'):.2f} CNN {mean('dlib_cnn_D'):.2f}/{mean('dlib_cnn_R'):.2f} BB {black_box['D']:.2f}/"
            f"{black_box['R']:.2f} id {mean('id_D'):.2f}/{mean('id_R'):.2f} | VMAF "
            f"{np.nanmedian([r['vmaf'] for r in rows]):.1f} (min {np.nanmin([r['vmaf'] for r in rows]):.1f}) "
            f"face SSIM {np.nanmedian([r.get('face_ssim', np.nan) for r in rows]):.3f} | "
            f"{attack_s / len(rows):.2f} s/keyframe | {' '.join(args.config)}")
    print(line)
    with open(out / "results.txt", "a") as fh:
        fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
