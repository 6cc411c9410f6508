"""The identity cloak's white-box figures: how far it moves its own FaceNet surrogate.

    # protect a clip with engine settings of your choice, then FaceNet's distance on 20 delivered frames
    .venv/bin/python -m experiments.identity_cloak_probe clip VIDEO -o OUT.mp4 [--epsilon 0.12] [--strength 1]
        [--config '{"face_dissimilarity": 0.03}']
    # the raw float keyframe (no codec): three frames, each optimised cold, for several identity weights
    .venv/bin/python -m experiments.identity_cloak_probe keyframes VIDEO --weights 1 5 10 20

``--config`` takes CloakConfig fields as JSON (e.g. ``{"detect_from_budget": 1.0}`` keeps the identity
objective at the strongest budget). Distances are measured as the task report measures them
(media_cleaner.evaluation.report): the largest MTCNN face of the original frame, the same chip in both
frames; 1.0 or more is no longer the same person. The black-box figures come from
``python -m media_cleaner evaluate --original VIDEO --protected OUT.mp4``.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time

import numpy as np
import torch

from media_cleaner.evaluation.evaluate import _Originals  # noqa: E402
from media_cleaner.evaluation.media import even_indices, probe, read_frames  # noqa: E402
from media_cleaner.evaluation.report import _identity  # noqa: E402
from media_cleaner.protection.face_cloak import CloakConfig, FaceCloak  # noqa: E402
from media_cleaner.params import ProtectionParams  # noqa: E402
from media_cleaner.media.pipeline import protect_video  # noqa: E402
from media_cleaner.protection.seams import Protectors, VideoStreamInfo  # noqa: E402


def white_box(originals: list[np.ndarray], protected: list[np.ndarray]) -> str:
    figures = _identity(_Originals(originals, [], ["mtcnn"]), protected)
    if "note" in figures:
        return figures["note"]
    return (f"FaceNet distance mean {figures['mean_distance']:.3f}, still matched in "
            f"{figures['match_rate']:.0%} of {figures['frames']} frames")


def clip(args) -> None:
    params = ProtectionParams(epsilon=args.epsilon, video_strength=args.strength, every_n_frames=args.every,
                              audio_level="none")
    cloak = FaceCloak(params, threads=2, config=CloakConfig(**json.loads(args.config)))
    random.seed(args.seed)   # the random journeys: two settings compared on one seed differ by their settings
    torch.manual_seed(args.seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        protect_video(args.video, args.output, Protectors(cloak, None), temp_dir=scratch,
                      threads=2)
    original, delivered = probe(args.video), probe(args.output)
    indices = even_indices(min(original.frame_count, delivered.frame_count), 20)
    print(f"protected in {time.monotonic() - started:.1f} s; delivered: "
          f"{white_box(read_frames(args.video, indices, original), read_frames(args.output, indices, delivered))}")


def keyframes(args) -> None:
    info = probe(args.video)
    frames = read_frames(args.video, [0, 30, 60], info)
    for weight in args.weights:
        cloak = FaceCloak(ProtectionParams(every_n_frames=1), threads=2, config=CloakConfig(identity=weight))
        cloak.begin(VideoStreamInfo(info.width, info.height, info.fps, len(frames)))
        protected = []
        for index, frame in enumerate(frames):
            cloak.tracks = []   # cold: each keyframe optimised from zero
            torch.manual_seed(0)
            protected.append(cloak.protect_frame(frame, index / info.fps, 0))
        print(f"identity weight {weight:g}: raw keyframes: {white_box(frames, protected)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("clip")
    one.add_argument("video")
    one.add_argument("-o", "--output", required=True)
    one.add_argument("--epsilon", type=float, default=0.12)
    one.add_argument("--strength", type=float, default=1.0)
    one.add_argument("--seed", type=int, default=0, help="seed of the random journeys")
    one.add_argument("--every", type=int, default=ProtectionParams().every_n_frames, help="every_n_frames")
    one.add_argument("--config", default="{}", help="CloakConfig fields as JSON")
    one.set_defaults(run=clip)
    ladder = commands.add_parser("keyframes")
    ladder.add_argument("video")
    ladder.add_argument("--weights", type=float, nargs="+", default=[1, 5, 10, 20])
    ladder.set_defaults(run=keyframes)
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.run(args)


if __name__ == "__main__":
    main()
