"""Experiment: hide a face by warping it instead of adding noise (spatially transformed adversarial
examples, Xiao et al., "Spatially Transformed Adversarial Examples", ICLR 2018).

The eye forgives a slight displacement of features more than a pattern laid over the skin, so a warp might
fool a detector at a visibility where additive noise cannot (experiments/face_cloak_whitebox.py: at the default
floor, MTCNN finds every face). This asks the same question of a warp, under the same contract: the same
attack crop, loss, random journeys and visibility floor (1 − SSIM in the face) as the cloak, the change
clamped to the L∞ cap ``epsilon × strength``, and the white box judged on the protected frame itself.

The variable is a smooth displacement field (one vector per ``--cell`` crop pixels, bicubic in between,
zero outside the feathered face mask), stepped along its RMS-normalised gradient.

    .venv/bin/python -m experiments.face_cloak_warp_probe [--epsilon 0.12] [--strength 1] [--floor 0.015] \\
        [--steps 50] [--cell 8]

Prints one line per keyframe of experiments/face_cloak_keyframes.py (found or hidden, mean change, face
1 − SSIM) and a summary.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments.face_cloak_keyframes import dev_keyframes  # noqa: E402
from media_cleaner.evaluation.judges import best_match, detector  # noqa: E402
from media_cleaner.protection.face_cloak import CloakConfig, load_surrogate  # noqa: E402
from media_cleaner.protection.face_cloak.engine import _Crop  # noqa: E402
from media_cleaner.protection.face_cloak.losses import CloakLoss, structural_dissimilarity  # noqa: E402
from media_cleaner.protection.face_cloak.masks import face_mask  # noqa: E402
from media_cleaner.protection.face_cloak.transforms import RandomPipeline  # noqa: E402


def warp_attack(surrogate, image, box, mask, cap: float, floor: float, steps: int, cell: int):
    """The warped crop (1, 3, S, S) whose change is clamped to ``cap`` and whose face 1 − SSIM ≤ ``floor``."""
    size = image.shape[-1]
    loss, journey = CloakLoss(), RandomPipeline()
    with torch.no_grad():
        clean_landmarks = surrogate.stage_outputs(image, box).landmarks
    ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / size, 1 - 1 / size, size), torch.linspace(-1 + 1 / size, 1 - 1 / size, size),
                            indexing="ij")
    base = torch.stack([xs, ys], dim=-1)[None]

    def warped(field: torch.Tensor) -> torch.Tensor:
        flow = F.interpolate(field, size=(size, size), mode="bicubic", align_corners=False) * mask
        grid = base + flow.permute(0, 2, 3, 1) * (2 / size)
        moved = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return image + (moved - image).clamp(-cap, cap)

    def onto_floor(field: torch.Tensor) -> torch.Tensor:
        for _ in range(4):
            with torch.no_grad():
                measured = structural_dissimilarity(image, warped(field), mask).item()
            if measured <= floor:
                break
            field = field * math.sqrt(0.98 * floor / measured)
        return field

    field = torch.zeros(1, 2, size // cell, size // cell)
    best, best_loss = field.clone(), float("inf")
    for step in range(steps):
        field.requires_grad_(True)
        adversarial = warped(field)
        seen, seen_box = journey(adversarial, box)
        detection = loss.detection(surrogate.stage_outputs(seen, seen_box), clean_landmarks)
        total = detection + 0.3 * structural_dissimilarity(image, adversarial, mask) / floor
        gradient, = torch.autograd.grad(total.sum(), field)
        with torch.no_grad():
            if detection.item() < best_loss:
                best, best_loss = field.detach().clone(), detection.item()
            rate = 0.5 * (0.1 + 0.45 * (1 + math.cos(math.pi * step / max(1, steps - 1))))   # pixels
            field = onto_floor(field - rate * gradient / gradient.pow(2).mean().sqrt().clamp(min=1e-12))
    with torch.no_grad():
        return warped(best)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilon", type=float, default=0.12)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--floor", type=float, default=0.015, help="largest 1 − SSIM in the face")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cell", type=int, default=8, help="crop pixels per displacement vector")
    parser.add_argument("--cache", default="/tmp/face_cloak_keyframes/cache")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    surrogate, mtcnn, config = load_surrogate(), detector("mtcnn"), CloakConfig()
    cap = args.epsilon * args.strength
    found = []
    for clip, frame in dev_keyframes(args.cache):
        reference = mtcnn.detect(frame)
        faces = surrogate.detect(frame)
        if not reference or not faces:
            continue
        face = faces[0].box
        crop = _Crop.around(face, config)
        scale = config.crop_side / crop.side
        box = torch.tensor([[(face[0] - crop.x0) * scale, (face[1] - crop.y0) * scale,
                             (face[2] - crop.x0) * scale, (face[3] - crop.y0) * scale]])
        image = torch.from_numpy(crop.cut(frame, config.crop_side)).permute(2, 0, 1)[None].float() / 127.5 - 1
        mask = face_mask(config.crop_side, config.crop_side, box)
        adversarial = warp_attack(surrogate, image, box, mask, cap, args.floor, args.steps, args.cell)
        dissimilarity = structural_dissimilarity(image, adversarial, mask).item()
        protected = frame.copy()
        crop.paste(protected, ((adversarial - image)[0] * 127.5).permute(1, 2, 0).numpy())
        match = best_match(reference[0], mtcnn.detect(protected))
        change = np.abs(protected.astype(int) - frame.astype(int))
        found.append(match is not None)
        print(f"{clip[:40]:40s} {'found' if match is not None else 'HIDDEN':6s} mean change "
              f"{change[change > 0].mean():.2f}  crop 1-SSIM {dissimilarity:.4f}", flush=True)
    print(f"warp: MTCNN still finds the face on {sum(found)} of {len(found)} keyframes (eps={args.epsilon:g} "
          f"strength={args.strength:g} floor={args.floor:g} steps={args.steps} cell={args.cell})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
