"""The identity cloak's white-box figures: how far it moves its own FaceNet surrogate.

    # protect a clip with engine settings of your choice, then FaceNet's distance on 20 delivered frames
    .venv/bin/python -m experiments.identity_cloak_probe clip VIDEO -o OUT.mp4 [--epsilon 0.12] [--strength 1]
        [--config '{"face_dissimilarity": 0.03}'] [--judges]
    #   --judges: also the two black-box identity judges on the same frames, PSNR, VMAF and the face VMAF
    #   enlarged (the evaluation's figures)
    #   --decoy-from astronaut|VIDEO: every person's decoy is that real face's FaceNet embedding (the
    #   astronaut photo of scikit-image, or a video's frame 10) instead of the engine's random direction
    # the raw float keyframe (no codec): three frames, each optimised cold, for several identity weights
    .venv/bin/python -m experiments.identity_cloak_probe keyframes VIDEO --weights 1 5 10 20 [--config '{}']
    # the white-box ladder per preset: FaceNet's miss rate before the codec, as delivered, after the re-encode
    .venv/bin/python -m experiments.identity_cloak_probe ladder VIDEO [--presets invisible balanced strong]
        [--config '{"optimiser": "adam"}']

``--config`` takes CloakConfig fields as JSON (e.g. ``{"detect_from_budget": 1.0}`` keeps the identity
objective at the strongest budget). Distances are measured as the task report measures them
(media_cleaner.evaluation.report): the largest MTCNN face of the original frame, the same chip in both
frames; 1.0 or more is no longer the same person. The black-box figures come from
``python -m media_cleaner evaluate --original VIDEO --protected OUT.mp4``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from media_cleaner.evaluation.dataset import seed_engines  # noqa: E402
from media_cleaner.evaluation.evaluate import _identity as _judged, _Originals  # noqa: E402
from media_cleaner.evaluation.media import even_indices, probe, read_frames  # noqa: E402
from media_cleaner.evaluation.report import _identity  # noqa: E402
from media_cleaner.protection.face_cloak import CloakConfig, FaceCloak  # noqa: E402
from media_cleaner.protection.face_cloak.engine import _Crop  # noqa: E402
from media_cleaner.protection.face_cloak.tracker import FaceTrack  # noqa: E402
from media_cleaner.params import PRESETS, ProtectionParams  # noqa: E402
from media_cleaner.media.pipeline import protect_video  # noqa: E402
from media_cleaner.protection.seams import Protectors, VideoStreamInfo  # noqa: E402


def white_box(originals: list[np.ndarray], protected: list[np.ndarray]) -> str:
    figures = _identity(_Originals(originals, [], ["mtcnn"]), protected)
    if "note" in figures:
        return figures["note"]
    return (f"FaceNet distance mean {figures['mean_distance']:.3f}, still matched in "
            f"{figures['match_rate']:.0%} of {figures['frames']} frames")


def black_box(originals: list[np.ndarray], protected: list[np.ndarray]) -> str:
    """The evaluation's two identity judges (never attacked) on the same frames: mean distance, share of
    frames still matched, the clip template's distance (a match below 0.6 for dlib, 0.637 for SFace)."""
    clean = _Originals(originals, [], [])
    parts = []
    for name in ("dlib", "sface"):
        figures = _judged(clean, protected, (1.0, 1.0), name)
        if figures.get("mean_distance") is None:
            parts.append(f"{name}: {figures.get('note')}")
            continue
        parts.append(f"{name} distance {figures['mean_distance']:.3f} (matched {figures['match_rate']:.0%}, "
                     f"template {figures.get('template_distance', float('nan')):.3f})")
    return "; ".join(parts)


class _RealDecoyCloak(FaceCloak):
    """The engine with every person's decoy replaced by one given embedding (a real face's)."""

    def __init__(self, decoy: torch.Tensor, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._decoy = decoy

    def _learn_identities(self, images, boxes, tracks, poses=None) -> None:
        super()._learn_identities(images, boxes, tracks, poses)
        for track in tracks:
            track.decoy = self._decoy.clone()


def face_embedding(frame: np.ndarray, config: CloakConfig) -> torch.Tensor:
    """The engine's clean FaceNet embedding of the largest face MTCNN finds in ``frame``, cut as the engine cuts
    a keyframe's face."""
    cloak = FaceCloak(ProtectionParams(), threads=2, config=config)
    cloak.begin(VideoStreamInfo(frame.shape[1], frame.shape[0], 25.0, 1))
    faces = cloak.surrogate.detect(frame)
    if not faces:
        raise SystemExit("no face in the decoy's frame")
    track = FaceTrack(max(faces, key=lambda face: face.box[2] - face.box[0]).box)
    side = config.crop_side
    crop = _Crop.around(track.box, config)
    image = torch.from_numpy(crop.cut(frame, side)[None]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    cloak._learn_identities(image, torch.tensor([crop.box_in_crop(track.box, side)]), [track])
    return track.identity


def clip(args) -> None:
    params = ProtectionParams(epsilon=args.epsilon, video_strength=args.strength, every_n_frames=args.every,
                              audio_level="none")
    config = CloakConfig(**json.loads(args.config))
    if args.decoy_from:
        if args.decoy_from == "astronaut":
            from skimage.data import astronaut
            frame = astronaut()
        else:
            frame = read_frames(args.decoy_from, [10], probe(args.decoy_from))[0]
        cloak = _RealDecoyCloak(face_embedding(frame, config), params, threads=2, config=config)
    else:
        cloak = FaceCloak(params, threads=2, config=config)
    seed_engines(args.seed)   # the random journeys: two settings compared on one seed differ by their settings
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        protect_video(args.video, args.output, Protectors(cloak, None), temp_dir=scratch,
                      threads=2)
    took = time.monotonic() - started
    original, delivered = probe(args.video), probe(args.output)
    indices = even_indices(min(original.frame_count, delivered.frame_count), 20)
    originals, protected = read_frames(args.video, indices, original), read_frames(args.output, indices, delivered)
    print(f"protected in {took:.1f} s ({cloak.keyframes} keyframes, {cloak.optimisations} optimisations); "
          f"delivered: {white_box(originals, protected)}")
    if args.judges:
        from media_cleaner.evaluation.metrics import face_region, video_quality
        region = face_region(_Originals(originals, [], ["mtcnn"]).face_boxes, original.width, original.height)
        quality = video_quality(args.video, args.output, original, face=region)
        vmaf = "no libvmaf" if quality["vmaf"] is None else f"VMAF {quality['vmaf']:.1f}"
        if quality["face_vmaf"] is not None:
            vmaf += f", face VMAF enlarged {quality['face_vmaf']:.1f}"
        print(f"  black box: {black_box(originals, protected)}; PSNR {quality['psnr']:.1f}, {vmaf}", flush=True)


def keyframes(args) -> None:
    info = probe(args.video)
    frames = read_frames(args.video, [0, 30, 60], info)
    for weight in args.weights:
        cloak = FaceCloak(ProtectionParams(every_n_frames=1), threads=2,
                          config=CloakConfig(**{**json.loads(args.config), "identity": weight}))
        cloak.begin(VideoStreamInfo(info.width, info.height, info.fps, len(frames)))
        protected = []
        for index, frame in enumerate(frames):
            cloak.tracks = []   # cold: each keyframe optimised from zero
            torch.manual_seed(0)
            protected.append(cloak.protect_frame(frame, index / info.fps, 0))
        print(f"identity weight {weight:g}: raw keyframes: {white_box(frames, protected)}", flush=True)


class _Recording:
    """The cloak behind the video seam, keeping a copy of its output (before the codec) at ``indices``."""

    def __init__(self, cloak: FaceCloak, indices: list[int]):
        self.cloak, self.indices, self.frames = cloak, set(indices), {}

    def begin(self, info) -> None:
        self.cloak.begin(info)

    def protect_frame(self, frame, pts_s, index):
        out = self.cloak.protect_frame(frame, pts_s, index)
        if index in self.indices:
            self.frames[index] = out.copy()
        return out

    def end(self) -> None:
        self.cloak.end()


def ladder(args) -> None:
    """The white-box ladder: FaceNet's miss rate (distance ≥ 1.0: no longer the person) on the cloak's own
    output before the codec, as delivered (our CRF 17) and after the platform re-encode (720 lines, CRF 28)."""
    import cv2
    from media_cleaner.evaluation.reencode import platform_reencode
    info = probe(args.video)
    indices = even_indices(info.frame_count, 20)
    originals = read_frames(args.video, indices, info)
    for preset in args.presets:
        epsilon, strength = PRESETS[preset]
        cloak = FaceCloak(ProtectionParams(epsilon=epsilon, video_strength=strength, audio_level="none"),
                          threads=2, config=CloakConfig(**json.loads(args.config)))
        recording = _Recording(cloak, indices)
        seed_engines(args.seed)
        with tempfile.TemporaryDirectory() as scratch:
            delivered = f"{scratch}/delivered.mp4"
            protect_video(args.video, delivered, Protectors(recording, None), temp_dir=scratch, threads=2)
            reencoded = platform_reencode(delivered, f"{scratch}/reencoded.mp4")
            rungs = {"before the codec": [recording.frames[i] for i in indices],
                     "as delivered (CRF 17)": read_frames(delivered, indices, probe(delivered)),
                     "re-encoded (720p, CRF 28)": [cv2.resize(f, (info.width, info.height),
                                                              interpolation=cv2.INTER_CUBIC)
                                                   for f in read_frames(reencoded, indices, probe(reencoded))]}
            for rung, frames in rungs.items():
                figures = _identity(_Originals(originals, [], ["mtcnn"]), frames)
                print(f"{preset:9s} {rung:26s} FaceNet miss rate {1 - figures['match_rate']:4.0%}, "
                      f"mean distance {figures['mean_distance']:.3f}", flush=True)


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
    one.add_argument("--judges", action="store_true",
                     help="also the dlib and SFace judges on the same frames, PSNR and VMAF")
    one.add_argument("--decoy-from", help="astronaut, or a video: its face's embedding is every person's decoy")
    one.set_defaults(run=clip)
    rungs = commands.add_parser("ladder")
    rungs.add_argument("video")
    rungs.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    rungs.add_argument("--seed", type=int, default=0)
    rungs.add_argument("--config", default="{}", help="CloakConfig fields as JSON")
    rungs.set_defaults(run=ladder)
    cold = commands.add_parser("keyframes")
    cold.add_argument("video")
    cold.add_argument("--weights", type=float, nargs="+", default=[1, 5, 10, 20])
    cold.add_argument("--config", default="{}", help="CloakConfig fields as JSON")
    cold.set_defaults(run=keyframes)
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.run(args)


if __name__ == "__main__":
    main()
