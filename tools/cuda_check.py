#!/usr/bin/env python3
"""CUDA check of the face cloak: the same frames through the engine on the GPU and on the CPU.

    python -m tools.cuda_check [--frames 10] [--every-n-frames 5]

Prints, per device: seconds per keyframe, the largest pixel change against the cap, and the MTCNN
surrogate's best face probability before and after. Needs a CUDA GPU for the GPU half (it says so
otherwise). The frames are ``skimage.data.astronaut()`` (a real face that ships with scikit-image).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from skimage import data

from media_cleaner.protection.face_cloak import FaceCloak, load_surrogate  # noqa: E402
from media_cleaner.params import ProtectionParams  # noqa: E402
from media_cleaner.protection.seams import VideoStreamInfo  # noqa: E402


def best_face_probability(device: str, frame: np.ndarray) -> float:
    faces = load_surrogate(device).detect(frame)
    return max((face.probability for face in faces), default=0.0)


def run(device: str, frames: list[np.ndarray], every_n: int) -> dict:
    params = ProtectionParams(every_n_frames=every_n)
    cloak = FaceCloak(params, device=device, threads=1)
    height, width = frames[0].shape[:2]
    cloak.begin(VideoStreamInfo(width=width, height=height, fps=25.0, frame_count=len(frames)))
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = [cloak.protect_frame(frame.copy(), index / 25.0, index) for index, frame in enumerate(frames)]
    if device == "cuda":
        torch.cuda.synchronize()
    took = time.perf_counter() - started
    cloak.end()
    change = max(int(np.abs(o.astype(int) - f.astype(int)).max()) for o, f in zip(out, frames))
    return {"device": device, "keyframes": cloak.keyframes, "s_per_keyframe": took / max(1, cloak.keyframes),
            "max_change": change, "cap": params.effective_epsilon * 127.5,
            "face_before": best_face_probability(device, frames[0]),
            "face_after": best_face_probability(device, out[0])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--every-n-frames", type=int, default=5)
    args = parser.parse_args()
    frames = [np.ascontiguousarray(data.astronaut()) for _ in range(args.frames)]
    devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    if "cuda" not in devices:
        print("no CUDA device: only the CPU half runs")
    else:
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    for device in devices:
        result = run(device, frames, args.every_n_frames)
        print(f"{device}: {result['keyframes']} keyframes, {result['s_per_keyframe']:.2f} s per keyframe, "
              f"max change {result['max_change']} (cap {result['cap']:.1f}), surrogate face probability "
              f"{result['face_before']:.3f} -> {result['face_after']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
