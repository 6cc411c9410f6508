"""Where protect's time goes: ``cProfile`` of one protect of a video, after a first run that loads the models
and pays for lazy initialisation (as a warmed-up worker would), sorted by cumulative time.

    .venv/bin/python -m experiments.protect_profile VIDEO [--config '{"per_person_up_to": 0.15}']
        [--audio-level weak] [--top 28]

``--config`` takes CloakConfig fields as JSON. Prints the protect time, the cloak's keyframes and
optimisations, then the profile's top entries (the face cloak's ``protect_frame``, ``_keyframe``,
``_optimise…`` and MTCNN's ``detect`` are the lines to read).
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile
import time

import torch

from media_cleaner.media.pipeline import protect_video
from media_cleaner.params import ProtectionParams
from media_cleaner.protection.face_cloak import CloakConfig, FaceCloak
from media_cleaner.protection.seams import Protectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video")
    parser.add_argument("--config", default="{}", help="CloakConfig fields as JSON")
    parser.add_argument("--audio-level", default="weak")
    parser.add_argument("--top", type=int, default=28, help="profile entries to print")
    args = parser.parse_args()
    cloak = FaceCloak(ProtectionParams(audio_level=args.audio_level), threads=2,
                      config=CloakConfig(**json.loads(args.config)))
    voice = None
    if args.audio_level != "none":
        from media_cleaner.protection.voice_mask import VoiceMask
        voice = VoiceMask(args.audio_level, threads=2)
    with tempfile.TemporaryDirectory() as scratch:
        protect_video(args.video, f"{scratch}/warm.mp4", Protectors(cloak, voice), temp_dir=scratch, threads=2)
        torch.manual_seed(0)
        profile = cProfile.Profile()
        started = time.monotonic()
        profile.enable()
        protect_video(args.video, f"{scratch}/out.mp4", Protectors(cloak, voice), temp_dir=scratch, threads=2)
        profile.disable()
        print(f"protect {time.monotonic() - started:.1f} s, {cloak.keyframes} keyframes, "
              f"{cloak.optimisations} optimisations")
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
