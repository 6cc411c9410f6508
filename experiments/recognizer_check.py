"""Does the converted FaceNet recognise people? Same-person and different-person distances on a folder of
``<identity>/<photos>`` (e.g. the development faces), and the equal error rate.

    .venv/bin/python -m experiments.recognizer_check ../shared/media/dev/faces [--per-person 6]

The folder in that command is the development faces, outside this repository (beside the checkout) and never
committed: their rights stay with their owners, so a fresh clone has none. Any folder of ``<identity>/<photos>`` works.

Faces are found and cut with facenet-pytorch's MTCNN (160 px chip, margin 20), embedded with
media_cleaner.protection.face_cloak.recognizer; folders starting with "_" (group shots) are skipped.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import cv2
import numpy as np
import torch

from media_cleaner.protection.face_cloak.recognizer import load_recognizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--per-person", type=int, default=6)
    args = parser.parse_args()
    from facenet_pytorch import MTCNN
    torch.set_num_threads(2)
    cropper, recognizer = MTCNN(image_size=160, margin=20, post_process=False), load_recognizer()
    embeddings, people = [], []
    for person in sorted(p for p in Path(args.folder).iterdir() if p.is_dir() and not p.name.startswith("_")):
        for photo in sorted(person.iterdir())[:args.per_person]:
            image = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
            scale = min(1.0, 1024 / max(image.shape[:2]))
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            chip = cropper(image)
            if chip is not None:
                with torch.no_grad():
                    embeddings.append(recognizer(chip[None].float())[0].numpy())
                people.append(person.name)
    same, different = [], []
    for i, j in itertools.combinations(range(len(embeddings)), 2):
        (same if people[i] == people[j] else different).append(float(np.linalg.norm(embeddings[i] - embeddings[j])))
    same, different = np.array(same), np.array(different)
    eer, threshold = min(((np.mean(same >= t) + np.mean(different < t)) / 2, t) for t in np.linspace(0.3, 1.6, 261))
    print(f"{len(embeddings)} faces of {len(set(people))} people; distance same {same.mean():.3f}, "
          f"different {different.mean():.3f}; EER {eer:.3%} at {threshold:.3f}")


if __name__ == "__main__":
    main()
