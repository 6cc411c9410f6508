"""Can the cloak fool its own surrogate? On the dev keyframes of experiments/face_cloak_keyframes.py, protect one
frame with the given settings and ask facenet-pytorch's MTCNN (the white box the attack optimises against)
whether it still finds the face on the protected frame itself: uint8, before any encode. No codec, no re-encode, no other
judge: the most favourable case for the attack, which says whether a setting has the energy to hide a face
at all before transfer or codecs come into it.

    .venv/bin/python -m experiments.face_cloak_whitebox [--epsilon 0.12] [--strength 1] [--config FIELD=VALUE ...] \\
        [--no-codec-model]

--no-codec-model drops the differentiable codec from the attack's random journeys (the perturbation then
only has to survive rounding to uint8). Prints one line per keyframe (found or hidden, and the mean change inside
the changed pixels, in levels of 255), then how many keyframes MTCNN still finds the face on.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments.face_cloak_keyframes import dev_keyframes  # noqa: E402
from experiments.face_cloak_probe import cloak_config  # noqa: E402
from media_cleaner.evaluation.judges import best_match, detector  # noqa: E402
from media_cleaner.protection.face_cloak import FaceCloak  # noqa: E402
from media_cleaner.protection.face_cloak.transforms import RandomPipeline  # noqa: E402
from media_cleaner.params import ProtectionParams  # noqa: E402
from media_cleaner.protection.seams import VideoStreamInfo  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilon", type=float, default=0.12)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--config", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--no-codec-model", action="store_true")
    parser.add_argument("--cache", default="/tmp/face_cloak_keyframes/cache")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mtcnn = detector("mtcnn")
    params = ProtectionParams(epsilon=args.epsilon, video_strength=args.strength)
    found = []
    for clip, frame in dev_keyframes(args.cache):
        reference = mtcnn.detect(frame)
        if not reference:
            continue
        cloak = FaceCloak(params, config=cloak_config(args.config))
        cloak.begin(VideoStreamInfo(frame.shape[1], frame.shape[0], 25.0, 1))
        if args.no_codec_model:
            for attack in cloak._attack.values():
                attack.transform = RandomPipeline(codec=False)
        protected = cloak.protect_frame(frame, 0.0, 0)
        match = best_match(reference[0], mtcnn.detect(protected))
        change = np.abs(protected.astype(int) - frame.astype(int))
        found.append(match is not None)
        print(f"{clip[:40]:40s} {'found' if match is not None else 'HIDDEN':6s} mean change "
              f"{change[change > 0].mean():.2f}", flush=True)
    print(f"MTCNN still finds the face on {sum(found)} of {len(found)} keyframes "
          f"(eps={args.epsilon:g} strength={args.strength:g} {' '.join(args.config)}"
          f"{' no codec model' if args.no_codec_model else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
