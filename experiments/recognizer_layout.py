"""What storing the face recognizers' convolution weights channels-last buys on this machine: one chip's
forward and backward pass through FaceNet and dlib's ResNet in both layouts, then (with a VIDEO) whole protects
at the default with the two layouts alternated in one process, audio off.

    .venv/bin/python -m experiments.recognizer_layout [VIDEO --runs 4]

Medians of each; the load average is printed beside them (a busy machine slows both alike, as they alternate).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from media_cleaner.media.pipeline import protect_video
from media_cleaner.params import ProtectionParams
from media_cleaner.protection.face_cloak.dlib_recognizer import load_dlib_recognizer
from media_cleaner.protection.face_cloak.recognizer import load_recognizer
from media_cleaner.protection.registry import build_protectors

LAYOUTS = {"plain": torch.contiguous_format, "channels-last": torch.channels_last}


def step_ms(network, size: int, repeats: int = 12) -> float:
    """Median milliseconds of one forward and backward pass of a (1, 3, size, size) chip to its input."""
    chip = torch.rand(1, 3, size, size) * 255
    times = []
    for _ in range(repeats + 2):   # the first two pay for lazy initialisation
        start = time.perf_counter()
        x = chip.clone().requires_grad_(True)
        torch.autograd.grad(network(x).sum(), x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", nargs="?")
    parser.add_argument("--runs", type=int, default=4, help="protects per layout")
    args = parser.parse_args()
    torch.set_num_threads(2)
    networks = {"FaceNet": (load_recognizer("cpu"), 160), "dlib ResNet": (load_dlib_recognizer("cpu"), 150)}
    for name, (network, size) in networks.items():
        figures = {}
        for layout, memory_format in LAYOUTS.items():
            network.to(memory_format=memory_format)
            figures[layout] = step_ms(network, size)
        network.to(memory_format=torch.channels_last)   # as the engine loads it
        print(f"{name}: one chip forward and backward, " + ", ".join(f"{k} {v:.1f} ms" for k, v in figures.items()))
    if not args.video:
        return
    protectors = build_protectors(ProtectionParams(audio_level="none"), threads=2)
    times: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    with tempfile.TemporaryDirectory() as work:
        for run in range(args.runs):
            for layout in (LAYOUTS if run % 2 == 0 else reversed(LAYOUTS)):
                for network, _ in networks.values():
                    network.to(memory_format=LAYOUTS[layout])
                start = time.monotonic()
                protect_video(args.video, Path(work) / "out.mp4", protectors, temp_dir=Path(work) / "tmp", threads=2)
                times[layout].append(time.monotonic() - start)
    print(f"whole protect, {args.runs} runs each (load average {os.getloadavg()[0]:.1f}): "
          + ", ".join(f"{k} median {statistics.median(v):.2f} s ({', '.join(f'{t:.2f}' for t in v)})"
                      for k, v in times.items()))


if __name__ == "__main__":
    main()
