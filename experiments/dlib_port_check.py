"""Does the torch port of dlib's face-recognition ResNet compute what dlib computes? On the same 150 px chips,
dlib's own descriptor (``face_recognition_model_v1.compute_face_descriptor``) against
media_cleaner.protection.face_cloak.dlib_recognizer, face by face, and the distances between faces by both.

    .venv/bin/python -m experiments.dlib_port_check [--faces ../shared/media/dev/faces] [--photos 5]

The ``--faces`` folder is the development faces, outside this repository (beside the checkout) and never
committed: their rights stay with their owners, so a fresh clone has none. Any folder of ``<person>/<photos>``
works.

Faces are found with dlib's HOG detector, aligned with its 5-point landmarks and cut with
``dlib.get_face_chip(image, shape, size=150, padding=0.25)``, as ``face_recognition`` does; the images are
skimage's astronaut and the first photo of a few people of that folder. Prints the largest absolute
difference of the descriptors per face and over all (the port is meant to agree within 1e-3), the two
distance matrices, the conversion time, and forward and backward times for a batch of 4 chips on one CPU
thread. Then where MTCNN's landmarks fall in dlib's chip (``CHIP_TEMPLATE``) and how well a chip cut by them
embeds. dlib is needed here only, as the reference.
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import cv2
import dlib
import numpy as np
import torch

from media_cleaner.protection.face_cloak.dlib_recognizer import (MATCH_THRESHOLD, DlibResNet, convert_dlib,
                                                                 _installed_dat, load_dlib_recognizer)

# The development photos live outside this repository, beside the checkout: their rights stay with their
# owners, so they are never committed and a fresh clone has none; --faces takes any folder of <person>/<photos>.
DEV_FACES = Path(__file__).resolve().parents[2] / "shared" / "media" / "dev" / "faces"
PHOTOS = ["barack_obama/barack_obama__facerec_obama.jpg", "barack_obama/barack_obama__facerec_obama1.jpg",
          "angelina_jolie/angelina_jolie__deepface_img1.jpg", "jack_dorsey/jack_dorsey__deepface_img16.jpg",
          "_multi/obama+biden__facerec_two_people.jpg"]


def images(folder: Path, count: int) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8) of the astronaut and the first ``count`` development photos, at most 800 px."""
    from skimage import data
    out = [("astronaut", data.astronaut())]
    for relative in PHOTOS[:count]:
        path = folder / relative
        if not path.is_file():
            print(f"(no {path}, skipped)")
            continue
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        scale = min(1.0, 800 / max(image.shape[:2]))
        out.append((path.stem, cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)))
    return out


def timed(function, repeats: int = 3) -> float:
    """The best of ``repeats`` wall-clock times of ``function()``, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=DEV_FACES)
    parser.add_argument("--photos", type=int, default=len(PHOTOS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    state = convert_dlib(_installed_dat())
    print(f"conversion of {_installed_dat().name}: {time.perf_counter() - start:.2f} s, "
          f"{sum(v.numel() for v in state.values()):,} values in {len(state)} tensors")
    port = DlibResNet()
    port.load_state_dict(state)
    port.eval().requires_grad_(False)
    cached = load_dlib_recognizer()   # the weights fetch-models converted
    assert all(torch.equal(a, b) for a, b in zip(port.state_dict().values(), cached.state_dict().values()))

    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(str(_installed_dat().with_name("shape_predictor_5_face_landmarks.dat")))
    reference = dlib.face_recognition_model_v1(str(_installed_dat()))
    names, chips, by_dlib = [], [], []
    for name, image in images(args.faces, args.photos):
        for index, box in enumerate(detector(image, 1)):
            chip = dlib.get_face_chip(image, landmarks(image, box), size=150, padding=0.25)
            names.append(f"{name}#{index}")
            chips.append(chip)
            by_dlib.append(np.array(reference.compute_face_descriptor(chip)))   # a 150×150 chip, no jitter
    batch = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        by_port = port(batch).double().numpy()
    by_dlib = np.stack(by_dlib)

    print(f"\n{len(names)} faces; max |port - dlib| per face (descriptor norm by dlib):")
    differences = np.abs(by_port - by_dlib).max(axis=1)
    for name, difference, norm in zip(names, differences, np.linalg.norm(by_dlib, axis=1)):
        print(f"  {name:48s} {difference:.2e}  (|d| {norm:.3f})")
    print(f"max over all faces: {differences.max():.2e}  ({'OK' if differences.max() < 1e-3 else 'FAIL'}: < 1e-3)")

    print(f"\nEuclidean distances, dlib / port (a match below {MATCH_THRESHOLD}):")
    worst = 0.0
    for i, j in itertools.combinations(range(len(names)), 2):
        a, b = np.linalg.norm(by_dlib[i] - by_dlib[j]), np.linalg.norm(by_port[i] - by_port[j])
        worst = max(worst, abs(a - b))
        print(f"  {names[i]:34s} {names[j]:34s} {a:.4f} / {b:.4f}{'  match' if a < MATCH_THRESHOLD else ''}")
    print(f"max |distance difference|: {worst:.2e}")

    four = batch[np.arange(4) % len(names)].clone()
    with torch.no_grad():
        forward = timed(lambda: port(four))
    target = torch.from_numpy(by_port[::-1][np.arange(4) % len(names)].copy()).float()

    def forward_backward() -> torch.Tensor:
        chips_ = four.clone().requires_grad_(True)
        (port(chips_) - target).square().sum().backward()
        return chips_.grad

    both = timed(forward_backward)
    gradient = forward_backward()
    print(f"\nbatch of 4 chips, 1 CPU thread: forward {forward * 1000:.0f} ms, forward + backward "
          f"{both * 1000:.0f} ms; gradient w.r.t. the chips finite: {bool(torch.isfinite(gradient).all())}, "
          f"nonzero: {int((gradient != 0).sum()):,} of {gradient.numel():,}, max |g| {gradient.abs().max():.2e}")


def chip_template(folder: Path) -> None:
    """Where MTCNN's landmarks fall in dlib's own chip (the median over the faces of ``folder``, what
    ``dlib_recognizer.CHIP_TEMPLATE`` holds), and how close a chip cut from MTCNN's landmarks by it embeds to
    dlib's own descriptor of the face."""
    from media_cleaner.protection.face_cloak import load_surrogate
    from media_cleaner.protection.face_cloak.dlib_recognizer import CHIP_TEMPLATE, chip_pose
    from media_cleaner.protection.face_cloak.embedding import posed_chips
    detector, mtcnn = dlib.get_frontal_face_detector(), load_surrogate()
    shape = dlib.shape_predictor(str(_installed_dat().with_name("shape_predictor_5_face_landmarks.dat")))
    reference = dlib.face_recognition_model_v1(str(_installed_dat()))
    port = load_dlib_recognizer()
    from skimage import data
    photos = [data.astronaut()] + [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
                                   for p in sorted(folder.glob("*/*.jpg"))[:60]]
    in_chip, distances = [], []
    for image in photos:
        scale = min(1.0, 900 / max(image.shape[:2]))
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        rects, faces = detector(image, 1), mtcnn.detect(image)
        if not rects or not faces or faces[0].landmarks is None:
            continue
        landmarks = shape(image, max(rects, key=lambda r: r.area()))
        face = max(faces, key=lambda f: f.box[2] - f.box[0])
        details = dlib.get_face_chip_details(landmarks, 150, 0.25)
        centre = np.array([(details.rect.left() + details.rect.right() + 1) / 2,
                           (details.rect.top() + details.rect.bottom() + 1) / 2])
        turn = np.array([[np.cos(details.angle), -np.sin(details.angle)],
                         [np.sin(details.angle), np.cos(details.angle)]])
        in_chip.append((np.asarray(face.landmarks) - centre) @ turn / (details.rect.width() / 150) + 75)
        own = np.array(reference.compute_face_descriptor(dlib.get_face_chip(image, landmarks, size=150,
                                                                             padding=0.25)))
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
        pose = torch.tensor([chip_pose(face.box, face.landmarks)])
        with torch.no_grad():
            cut = posed_chips(tensor, torch.tensor([face.box], dtype=torch.float32), pose, 150)
            distances.append(float(np.linalg.norm(port(cut)[0].numpy() - own)))
    points = np.stack(in_chip)
    print(f"\nMTCNN's landmarks in dlib's chip, median over {len(points)} faces (spread "
          f"{points.std(axis=0).mean():.1f} px): {np.round(np.median(points, axis=0), 1).tolist()}")
    print(f"  CHIP_TEMPLATE holds {[list(p) for p in CHIP_TEMPLATE]}")
    print(f"chip cut from MTCNN's landmarks by CHIP_TEMPLATE against dlib's own descriptor: median distance "
          f"{np.median(distances):.3f}, max {max(distances):.3f} (a match is below {MATCH_THRESHOLD})")


if __name__ == "__main__":
    main()
    chip_template(DEV_FACES)
