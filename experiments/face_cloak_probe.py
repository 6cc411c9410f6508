"""Measure the face cloak on a set of videos: protect each one, score it with the evaluation harness
(delivered and after the platform re-encode), time it against a plain re-encode, and save before/after
close-ups to look at.

    .venv/bin/python -m experiments.face_cloak_probe VIDEO_OR_DIR [...] --epsilon 0.12 --strength 1 \
        --every-n 10 --frames 0 --cnn-frames 0 --out /tmp/face_cloak_probe --json figures.json \
        [--config face_dissimilarity=0.02 ...]

``--frames 0`` scores every frame (the targets count all frames); smaller numbers sample evenly for quick
development runs. The judges (OpenCV Haar, dlib HOG/CNN, dlib embeddings) only measure here: the cloak
never sees them. Prints one line per video and the mean over videos; writes every figure to ``--json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np


from media_cleaner.evaluation.evaluate import evaluate_pair  # noqa: E402
from media_cleaner.evaluation.media import probe, read_frames  # noqa: E402
from media_cleaner.protection.face_cloak import CloakConfig, FaceCloak, load_surrogate  # noqa: E402
from media_cleaner.params import ProtectionParams  # noqa: E402
from media_cleaner.media.pipeline import protect_video  # noqa: E402
from media_cleaner.protection.seams import PassThroughVideo, Protectors  # noqa: E402

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
BLACK_BOX = ("haar", "dlib_hog", "dlib_cnn")


def videos(paths: list[str]) -> list[Path]:
    found = []
    for path in map(Path, paths):
        found += sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) if path.is_dir() else [path]
    return found


def timed_protect(source: Path, target: Path, params: ProtectionParams, protectors: Protectors, threads: int,
                  work: Path) -> float:
    started = time.monotonic()
    protect_video(source, target, protectors, temp_dir=work, threads=threads)
    return time.monotonic() - started


def close_up(original: Path, protected: Path, target: Path) -> None:
    """Original | protected | 8 × |difference| around the first frame's face, as a PNG."""
    info = probe(original)
    middle = [max(0, info.frame_count // 2)]
    before, = read_frames(original, middle, info)
    after, = read_frames(protected, middle, probe(protected))
    faces = load_surrogate().detect(before)
    if faces:
        x1, y1, x2, y2 = faces[0].box
        side = max(x2 - x1, y2 - y1) * 1.8
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        top, left = int(max(0, cy - side / 2)), int(max(0, cx - side / 2))
        before = before[top:int(cy + side / 2), left:int(cx + side / 2)]
        after = after[top:int(cy + side / 2), left:int(cx + side / 2)]
    difference = np.clip(np.abs(after.astype(int) - before.astype(int)) * 8, 0, 255).astype(np.uint8)
    strip = np.concatenate([before, after, difference], axis=1)
    if strip.shape[0] < 256:   # small clips are enlarged so the eye can judge them
        strip = cv2.resize(strip, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(target), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))


def cloak_config(items: list[str]) -> CloakConfig:
    """A CloakConfig from ``FIELD=VALUE`` overrides (an unknown field raises AttributeError naming it)."""
    overrides = {}
    for item in items:
        field, _, value = item.partition("=")
        default = getattr(CloakConfig(), field)
        overrides[field] = type(default)(value) if not isinstance(default, bool) else value.lower() == "true"
    return CloakConfig(**overrides)


def summary(result: dict) -> dict:
    row = {}
    for variant in ("delivered", "reencoded"):
        video = result["video"].get(variant)
        if video is None:
            continue
        detection = video["detection"]
        row[f"{variant}_mtcnn_rate"] = detection["mtcnn"]["protected_rate"]
        for name in BLACK_BOX:
            row[f"{variant}_{name}_protection"] = detection[name]["protection"]
        values = [detection[name]["protection"] for name in BLACK_BOX if detection[name]["protection"] is not None]
        row[f"{variant}_black_box"] = statistics.mean(values) if values else None
        row[f"{variant}_identity_match"] = video["identity"]["match_rate"]
    quality = result["video"]["delivered"]["quality"]
    row["vmaf"] = quality.get("vmaf")
    row["face_ssim"] = quality.get("face_ssim")
    row["psnr"] = quality.get("psnr")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--epsilon", type=float, default=0.12)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--every-n", type=int, default=10)
    parser.add_argument("--frames", type=int, default=0, help="frames scored per video (0: all)")
    parser.add_argument("--cnn-frames", type=int, default=0, help="frames dlib CNN scores (0: the same)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bench", action="store_true", help="also time a plain re-encode, side by side")
    parser.add_argument("--config", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a CloakConfig field (repeatable), e.g. face_dissimilarity=0.02")
    parser.add_argument("--out", default="/tmp/face_cloak_probe")
    parser.add_argument("--json")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = ProtectionParams.parse(epsilon=args.epsilon, video_strength=args.strength,
                                    every_n_frames=args.every_n, audio_level="none")
    config = cloak_config(args.config)
    tag = f"e{args.epsilon:g}_s{args.strength:g}_n{args.every_n}"
    rows = []
    for source in videos(args.inputs):
        target = out / f"{source.stem}__{tag}.mp4"
        cloak = FaceCloak(params, threads=args.threads, config=config)
        seconds = timed_protect(source, target, params, Protectors(cloak, None), args.threads, out / "work")
        row = {"video": source.name, "protect_s": round(seconds, 2), "keyframes": cloak.keyframes}
        if args.bench:
            row["plain_s"] = round(timed_protect(source, out / "plain.mp4", params, Protectors(PassThroughVideo(), None),
                                                 args.threads, out / "work"), 2)
            row["ratio"] = round(row["protect_s"] / row["plain_s"], 2)
        result = evaluate_pair(source, target, frames=args.frames, cnn_frames=args.cnn_frames, threads=args.threads)
        row |= summary(result)
        close_up(source, target, out / f"{source.stem}__{tag}.png")
        rows.append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    means = {key: statistics.mean(r[key] for r in rows if r.get(key) is not None)
             for key in rows[0] if isinstance(rows[0][key], (int, float)) and key != "keyframes"
             and any(r.get(key) is not None for r in rows)}
    print("MEAN", json.dumps({k: round(v, 3) for k, v in means.items()}))
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "videos": rows, "mean": means}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
