"""The identity cloak probe with changes to the objective that are not engine settings (each measured in
EVALUATION.md and not kept):

    # the recognizer's chip jittered by ±15 % of the face instead of ±5 %
    .venv/bin/python -m experiments.identity_cloak_variants --alignment-jitter 0.15 clip VIDEO -o OUT.mp4 --judges …
    # the identity objective plus MTCNN O-Net's landmarks pushed away from the clean ones (weight W), to
    # misalign an attacker's own alignment
    .venv/bin/python -m experiments.identity_cloak_variants --landmark-weight 10 clip VIDEO -o OUT.mp4 --judges …

Everything after the variant's options is ``identity_cloak_probe``'s command line.
"""
from __future__ import annotations

import argparse
import sys

import torch

from media_cleaner.protection.face_cloak import losses


def with_landmarks(weight: float) -> None:
    """Add ``weight`` × :func:`~media_cleaner.protection.face_cloak.losses.landmark_loss` on MTCNN's stages to
    every objective, beside the identity term."""
    protection = losses.CloakLoss.protection

    def patched(self, detector, recognizer, journeys, clean_landmarks, identity, batch):
        total = protection(self, detector, recognizer, journeys, clean_landmarks, identity, batch)
        images = torch.cat([image for image, _ in journeys])
        boxes = torch.cat([box for _, box in journeys])
        displaced = losses.landmark_loss(detector.stage_outputs(images, boxes),
                                         clean_landmarks.repeat(len(journeys), 1, 1))
        return total + weight * displaced.view(len(journeys), batch).mean(dim=0)

    losses.CloakLoss.protection = patched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alignment-jitter", type=float, help="share of the face the chip moves and grows by")
    parser.add_argument("--landmark-weight", type=float, help="weight of MTCNN's landmark displacement")
    variant, probe_args = parser.parse_known_args()
    if variant.alignment_jitter is not None:
        losses.ALIGNMENT_JITTER = variant.alignment_jitter
    if variant.landmark_weight:
        with_landmarks(variant.landmark_weight)
    from experiments import identity_cloak_probe
    sys.argv = [sys.argv[0], *probe_args]
    identity_cloak_probe.main()


if __name__ == "__main__":
    main()
