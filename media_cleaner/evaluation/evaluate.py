"""One original/protected pair → every figure of the evaluation (``python -m media_cleaner evaluate``).

The protected file is scored twice: as delivered, and after the platform re-encode (:mod:`.reencode`),
because that is what a scraper downloads. On evenly sampled frames (default 60; dlib's slow CNN on a
smaller even subset) each detector is run on the original frame and on the same protected frame:

- a detector's *original rate* is the share of sampled frames where it finds a face in the original; its
  *protected rate* the share where it finds, in the protected frame, a face overlapping (IoU ≥ 0.3) a face
  it found in the original; *protection* = 1 − protected rate / original rate;
- *identity*: dlib's 128-D embedding of the protected face against the original face (the largest face
  dlib HOG finds in the original frame); distance < 0.6 is a match, a frame where no face is found in
  the protected frame counts as protected;
- *quality*: PSNR/SSIM (luma, all frames) and VMAF from ffmpeg, SSIM inside the original face boxes;
  *flicker*: the face's change from each sampled frame to the next, against the original's own change;
- *purified*: the identity figures of the delivered file again after each cheap purification an attacker
  would try first (:mod:`.purification`: JPEG 75, a slight blur, down-then-up scaling, hqdn3d).

The sound is scored on the delivered file (speaker similarity also after the re-encode). Works on any pair
of videos; when frame counts differ, frames are paired by relative time.
"""
from __future__ import annotations

import math
import shlex
import tempfile
import time
from pathlib import Path

import numpy as np

from media_cleaner.media.ffmpeg import find_ffmpeg
from media_cleaner.evaluation import EvaluationError
from media_cleaner.evaluation.judges import (DETECTORS, SFACE_MATCH_DISTANCE, Box, best_match, detector,
                                             identity_judge)
from media_cleaner.evaluation.media import (
    even_indices,
    matching_indices,
    probe,
    read_audio,
    read_frames,
    require_file,
)
from media_cleaner.evaluation.metrics import (FACE_VIEW_HEIGHT, audio_quality, face_flicker, face_region,
                                              face_ssim, video_quality)
from media_cleaner.evaluation.purification import (
    FRAME_PURIFICATIONS,
    PURIFICATIONS,
    hqdn3d_video,
    purify_frames,
)
from media_cleaner.evaluation.reencode import aac_control, platform_reencode, reencode_command
from media_cleaner.evaluation.voice import (
    MATCH_THRESHOLD,
    RATE,
    SPEAKER_JUDGES,
    SpeakerJudge,
    enrollment_embeddings,
    read_speech,
    similarity,
    speaker_judge,
)

DEFAULT_FRAMES = 60
# dlib's CNN takes about a second per frame on a busy 2-core CPU: it sees an even subset of the sample.
DEFAULT_CNN_FRAMES = 8
# Reported in this order; the first is the white-box surrogate.
DETECTOR_ORDER = ("mtcnn", "haar", "dlib_hog", "dlib_cnn", "yuface", "blazeface")
# Whose boxes mark "the face" for face SSIM, most reliable first.
FACE_BOX_SOURCES = ("mtcnn", "dlib_hog", "haar")


def evaluate_command(original, protected, frames: int, cnn_frames: int, speech_reference=None,
                     reencode: bool = True, json_path=None, face_reference=None) -> str:
    """The command line that reproduces an evaluation."""
    parts = ["python", "-m", "media_cleaner", "evaluate", "--original", str(original), "--protected",
             str(protected), "--frames", str(frames), "--cnn-frames", str(cnn_frames)]
    if speech_reference:
        parts += ["--speech-reference", str(speech_reference)]
    if face_reference:
        parts += ["--face-reference", str(face_reference)]
    if not reencode:
        parts.append("--no-reencode")
    if json_path:
        parts += ["--json", str(json_path)]
    return shlex.join(parts)


class _Originals:
    """The sampled original frames and what the judges found in them (computed once, used for both the
    delivered and the re-encoded file)."""

    def __init__(self, frames: list[np.ndarray], cnn_positions: list[int], detectors: list[str],
                 next_frames: list[np.ndarray] | None = None, references: list[np.ndarray] | None = None):
        self.frames = frames
        self.references = references or []   # clean photos of the person: what a face search has enrolled
        self.next_frames = next_frames   # the frame after each sampled one, for the flicker figure
        self.cnn_positions = cnn_positions
        self.boxes: dict[str, list[list[Box]] | None] = {}
        self.notes: dict[str, str] = {}
        for name in detectors:
            try:
                judge = detector(name)
            except EvaluationError as exc:
                self.boxes[name], self.notes[name] = None, str(exc)
                continue
            positions = self.positions(name)
            self.boxes[name] = [judge.detect(frames[p]) for p in positions]
        self.face_boxes = self._face_boxes()
        self._identity_faces: dict[str, tuple[list, str | None]] = {}
        self._galleries: dict[str, list[np.ndarray]] = {}

    def positions(self, name: str) -> list[int]:
        return self.cnn_positions if name == "dlib_cnn" else list(range(len(self.frames)))

    def _face_boxes(self) -> list[list[Box]]:
        for name in FACE_BOX_SOURCES:
            if self.boxes.get(name) is not None and len(self.boxes[name]) == len(self.frames):
                return self.boxes[name]
        return [[] for _ in self.frames]

    def identity_faces(self, name: str) -> tuple[list, str | None]:
        """Per sampled frame, for the identity judge ``name``: (its largest face's box, that face's clean
        embedding) or None; and a note when the judge is unavailable. Computed once, on first use."""
        if name not in self._identity_faces:
            try:
                judge = identity_judge(name)
            except EvaluationError as exc:
                self._identity_faces[name] = [None] * len(self.frames), str(exc)
                return self._identity_faces[name]
            known = self.boxes.get(judge.detector) if judge.detector else None   # dlib HOG's, found above
            faces = []
            for position, frame in enumerate(self.frames):
                found = [(box, box) for box in known[position]] if known is not None else judge.faces(frame)
                box, handle = max(found, key=lambda pair: pair[0].area) if found else (None, None)
                faces.append(None if box is None else (box, judge.embed(frame, handle)))
            self._identity_faces[name] = faces, None
        return self._identity_faces[name]

    def gallery(self, name: str) -> list[np.ndarray]:
        """Judge ``name``'s embeddings of the largest face in each reference photo (empty without any)."""
        if not self.references:
            return []
        if name not in self._galleries:
            judge = identity_judge(name)
            self._galleries[name] = []
            for photo in self.references:
                found = judge.faces(photo)
                if found:
                    self._galleries[name].append(judge.embed(photo, max(found, key=lambda pair: pair[0].area)[1]))
        return self._galleries[name]


def _rate(count: int, total: int) -> float | None:
    return count / total if total else None


def _detection(originals: _Originals, protected: list[np.ndarray], scale: tuple[float, float]) -> dict:
    result = {}
    for name in DETECTOR_ORDER:
        if name not in originals.boxes:
            continue
        entry: dict = {"white_box": DETECTORS[name].white_box}
        original_boxes = originals.boxes[name]
        if original_boxes is None:
            result[name] = entry | {"original_rate": None, "protected_rate": None, "protection": None,
                                    "frames": 0, "note": originals.notes[name]}
            continue
        judge = detector(name)
        positions = originals.positions(name)
        found_original = found_protected = 0
        for position, boxes in zip(positions, original_boxes):
            if not boxes:
                continue
            found_original += 1
            # Boxes in the protected frame are mapped to the original's pixel grid before comparing.
            candidates = [b.scaled(*scale) for b in judge.detect(protected[position])]
            if any(best_match(box, candidates) is not None for box in boxes):
                found_protected += 1
        original_rate = _rate(found_original, len(positions))
        protected_rate = _rate(found_protected, len(positions))
        protection = (1 - protected_rate / original_rate) if original_rate else None
        result[name] = entry | {"original_rate": original_rate, "protected_rate": protected_rate,
                                "protection": protection, "frames": len(positions)}
    return result


def _black_box_mean(detection: dict) -> float | None:
    """Mean protection over the black-box detectors that saw a face in the original (the figure the detection
    targets are stated in); None when none did."""
    figures = [entry["protection"] for entry in detection.values()
               if not entry["white_box"] and entry.get("protection") is not None]
    return sum(figures) / len(figures) if figures else None


def _identity(originals: _Originals, protected: list[np.ndarray], scale: tuple[float, float],
              name: str = "dlib") -> dict:
    """The identity judge ``name`` on the protected frames: each original face (the largest the judge's own
    detector finds) against the face its detector finds at the same place in the protected frame."""
    faces, note = originals.identity_faces(name)
    counted = sum(face is not None for face in faces)
    if note or not counted:
        return {"match_rate": None, "mean_distance": None, "frames": counted,
                "note": note or f"{name}'s detector found no face in the sampled original frames"}
    judge = identity_judge(name)
    matches, distances, embedded = 0, [], []
    for face, frame in zip(faces, protected):
        if face is None:
            continue
        box, reference = face
        candidates = judge.faces(frame)
        scaled = [b.scaled(*scale) for b, _ in candidates]
        found = best_match(box, scaled)
        if found is None:
            continue   # no face found: the frame counts as protected
        # Embed in the protected frame's own pixels: that is what a face search would do.
        embedding = judge.embed(frame, candidates[scaled.index(found)][1])
        distance = judge.distance(embedding, reference)
        distances.append(distance)
        embedded.append(embedding)
        matches += distance < judge.threshold
    result = {"model": judge.model, "threshold": judge.threshold, "match_rate": matches / counted,
              "mean_distance": float(np.mean(distances)) if distances else None,
              "frames": counted, "faces_found": len(distances)}
    gallery = originals.gallery(name)
    if gallery:
        result["enrolment"] = _enrolment(judge, gallery, [face[1] for face in faces if face is not None],
                                         embedded, counted)
    # As an attacker judges a video: a face search or a face swap needs one good frame (the best one), and a
    # clip's template (the mean embedding over its frames) averages away per-frame noise.
    clean_template = judge.template([face[1] for face in faces if face is not None])
    template = judge.distance(judge.template(embedded), clean_template) if embedded else None
    best = min(distances) if distances else None
    return result | {"best_frame_distance": best, "template_distance": template,
                     "best_frame_matched": best is not None and best < judge.threshold,
                     "template_matched": template is not None and template < judge.threshold}


def _enrolment(judge, gallery: list[np.ndarray], clean: list[np.ndarray], protected: list[np.ndarray],
               counted: int) -> dict:
    """As a face search judges a frame: is it within the match distance of any enrolled photo of the person
    (``gallery``)? For the clean frames (the baseline: other photos are farther than the same frame) and the
    protected ones (a frame where no face is found counts as unmatched); and the clip's template against the
    gallery's."""
    def nearest(embedding):
        return min(judge.distance(embedding, photo) for photo in gallery)

    clean_nearest, protected_nearest = [nearest(e) for e in clean], [nearest(e) for e in protected]
    gallery_template = judge.template(gallery)
    template = judge.distance(judge.template(protected), gallery_template) if protected else None
    return {"references": len(gallery),
            "original_match_rate": float(np.mean([d < judge.threshold for d in clean_nearest])),
            "match_rate": sum(d < judge.threshold for d in protected_nearest) / counted,
            "original_nearest_distance": float(np.median(clean_nearest)),
            "nearest_distance": float(np.median(protected_nearest)) if protected_nearest else None,
            "original_template_matched": judge.distance(judge.template(clean), gallery_template) < judge.threshold,
            "template_matched": template is not None and template < judge.threshold}


PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def read_photos(folder) -> list[np.ndarray]:
    """The photos of ``folder`` as RGB arrays (longer side at most 1280 px, as a search engine keeps them)."""
    import cv2
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"the face reference {folder} is not a folder.")
    photos = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise EvaluationError(f"{path.name} in the face reference is not a readable image.")
        scale = min(1.0, 1280 / max(image.shape[:2]))
        photos.append(cv2.cvtColor(cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA),
                                   cv2.COLOR_BGR2RGB))
    if not photos:
        raise EvaluationError(f"the face reference {folder} holds no photo ({', '.join(PHOTO_SUFFIXES)}).")
    return photos


def _resize_to(frames: list[np.ndarray], width: int, height: int) -> list[np.ndarray]:
    import cv2
    return [f if f.shape[:2] == (height, width) else cv2.resize(f, (width, height), interpolation=cv2.INTER_CUBIC)
            for f in frames]


def next_indices(indices: list[int], frame_count: int) -> list[int]:
    """The frame after each of ``indices`` (the last frame stands in for its own successor)."""
    return [min(i + 1, frame_count - 1) for i in indices]


def read_with_next(path, indices: list[int], info, ffmpeg: str, threads: int):
    """(the frames ``indices``, the frame after each), in one decode of ``path``."""
    both = read_frames(path, indices + next_indices(indices, info.frame_count), info, ffmpeg, threads)
    return both[:len(indices)], both[len(indices):]


def _purified(originals: _Originals, variant, info, frames: list[np.ndarray], indices: list[int],
              scale: tuple[float, float], work: Path, ffmpeg: str, threads: int) -> dict:
    result = {}
    for name in PURIFICATIONS:
        if name in FRAME_PURIFICATIONS:
            cleaned = purify_frames(name, frames)
        else:   # hqdn3d looks at neighbouring frames: it runs on the whole video
            denoised = hqdn3d_video(variant, work / "hqdn3d.mp4", ffmpeg, threads)
            cleaned = read_frames(denoised, indices, info, ffmpeg, threads)
        # dlib's figures at the top (as before), the second black-box recognizer's beside them.
        result[name] = _identity(originals, cleaned, scale) | {"sface": _identity(originals, cleaned, scale, "sface")}
    return result


def _score_video(original, original_info, variant, originals: _Originals, indices: list[int],
                 ffmpeg: str, threads: int, work: Path | None = None) -> dict:
    """The figures of one protected file; ``work`` (a scratch folder) asks for the flicker and purification
    figures too."""
    info = probe(variant, ffmpeg)
    own_indices = matching_indices(indices, original_info.frame_count, info.frame_count)
    if work is None:
        frames, following = read_frames(variant, own_indices, info, ffmpeg, threads), None
    else:   # the flicker figure needs the frame after each sampled one too
        frames, following = read_with_next(variant, own_indices, info, ffmpeg, threads)
    scale = (original_info.width / info.width, original_info.height / info.height)
    quality = video_quality(original, variant, original_info, ffmpeg=ffmpeg, threads=threads,
                            face=face_region(originals.face_boxes, original_info.width, original_info.height))
    at_original_size = _resize_to(frames, original_info.width, original_info.height)
    quality["face_ssim"] = face_ssim(originals.frames, at_original_size, originals.face_boxes)
    detection = _detection(originals, frames, scale)
    result = {"detection": detection, "black_box_detection": _black_box_mean(detection),
              "identity": _identity(originals, frames, scale),
              "identity_sface": _identity(originals, frames, scale, "sface"),
              "quality": quality, "size": [info.width, info.height]}
    if work is not None:
        quality["flicker"] = face_flicker(originals.frames, originals.next_frames, at_original_size,
                                          _resize_to(following, original_info.width, original_info.height),
                                          originals.face_boxes)
        result["purified"] = _purified(originals, variant, info, frames, own_indices, scale, work, ffmpeg,
                                       threads)
    return result


def _speaker(judge: SpeakerJudge, original_embedding, protected_embedding, references) -> dict:
    """One judge's figures for one protected soundtrack: against the original utterance and, with
    ``references``, against an enrolment of the speaker's other clean speech (their mean similarity)."""
    result: dict = {"similarity": None, "threshold": judge.threshold, "match": None}
    if original_embedding is None or protected_embedding is None:
        return result | {"note": judge.too_short}
    value = similarity(original_embedding, protected_embedding)
    result |= {"similarity": value, "match": value >= judge.threshold}
    if references:
        result["enrollment_similarity"] = float(np.mean([similarity(protected_embedding, r) for r in references]))
        result["original_enrollment_similarity"] = float(np.mean([similarity(original_embedding, r)
                                                                  for r in references]))
        result["enrollment_match"] = result["enrollment_similarity"] >= judge.threshold
    # What the verdict uses: the enrolment when there is one (what a voice database holds), else the original.
    result["score"] = result.get("enrollment_similarity", result["similarity"])
    return result


def _matched(figures: dict) -> bool | None:
    """Whether a judge still recognises the speaker (by :func:`_speaker`'s ``score``)."""
    return figures.get("enrollment_match", figures["match"])


def _judge_voice(judge: SpeakerJudge, reference, variants: dict, speech_reference, speech) -> dict:
    """``judge`` on every variant of the soundtrack; ``drop``: how much less the re-encoded protected sound
    resembles the speaker than the clean sound through the same AAC encode (the control) does."""
    references = enrollment_embeddings(speech_reference, judge, speech=speech) if speech else []
    original_embedding = judge.embed(reference)
    result: dict = {"white_box": judge.white_box, "threshold": judge.threshold}
    for name, samples in variants.items():
        result[name] = _speaker(judge, original_embedding, judge.embed(samples), references)
    control, after = result.get("control"), result.get("reencoded")
    if control and after and control.get("score") is not None and after.get("score") is not None:
        result["drop"] = control["score"] - after["score"]
    return result


def _protected_by_all(judged: dict, variant: str) -> bool | None:
    """A voice is protected only when every judge fails to match it (None when a judge could not say)."""
    verdicts = [_matched(figures[variant]) for figures in judged.values() if variant in figures]
    if not verdicts or any(v is None for v in verdicts):
        return None
    return not any(verdicts)


def _score_audio(original, protected, reencoded, speech_reference, ffmpeg, work: Path) -> dict | None:
    reference = read_audio(original, RATE, ffmpeg)
    delivered = read_audio(protected, RATE, ffmpeg)
    if reference is None or delivered is None:
        return None
    result: dict = {"quality": audio_quality(reference, delivered)}
    variants = {"delivered": delivered}
    if reencoded is not None:
        after = read_audio(reencoded, RATE, ffmpeg)
        if after is not None:
            variants["reencoded"] = after
            # The control: the clean sound through the same AAC encode, so the drop is the mask's alone.
            variants["control"] = read_audio(aac_control(original, work / "control.m4a", ffmpeg), RATE, ffmpeg)
    speech = read_speech(speech_reference, ffmpeg) if speech_reference else None
    judged, notes = {}, {}
    for name in SPEAKER_JUDGES:
        try:
            judged[name] = _judge_voice(speaker_judge(name), reference, variants, speech_reference,
                                        speech)
        except EvaluationError as exc:
            notes[name] = str(exc)
    result["judges"] = judged | {name: {"note": note} for name, note in notes.items()}
    result["protected_by_all"] = {variant: None if notes else _protected_by_all(judged, variant)
                                  for variant in variants if variant != "control"}
    # The white-box figure under its old keys (the per-file table and older readers).
    white = judged.get("resemblyzer")
    result["speaker"] = white["delivered"] if white else {"similarity": None, "threshold": MATCH_THRESHOLD,
                                                          "match": None, "note": notes.get("resemblyzer")}
    if white and "reencoded" in white:
        result["reencoded"] = {"speaker": white["reencoded"]}
    return result


def evaluate_pair(original, protected, *, frames: int = DEFAULT_FRAMES, cnn_frames: int = DEFAULT_CNN_FRAMES,
                  speech_reference=None, face_reference=None, reencode: bool = True, detectors=DETECTOR_ORDER,
                  ffmpeg: str | None = None, threads: int = 2) -> dict:
    """Every figure of the evaluation for ``protected`` against ``original`` (see the module docstring).

    ``frames``: frames sampled evenly (0: all); ``cnn_frames``: the even subset dlib's CNN sees (0: the
    same frames as the others); ``speech_reference``: a folder (or a list of files) of clean utterances of
    the same speaker; ``face_reference``: a folder of other clean photos of the person (the identity judges
    then also say whether each frame matches any of them, ``identity…["enrolment"]``);
    ``reencode``: also score the platform re-encode. Raises :class:`EvaluationError` on unusable input.
    """
    started = time.monotonic()
    original = require_file(original, "the original")
    protected = require_file(protected, "the protected video")
    if isinstance(speech_reference, (str, Path)) and not Path(speech_reference).is_dir():
        raise EvaluationError(f"the speech reference {speech_reference} is not a folder.")
    references = read_photos(face_reference) if face_reference else None
    ffmpeg = find_ffmpeg(ffmpeg)
    original_info = probe(original, ffmpeg)
    indices = even_indices(original_info.frame_count, frames)
    cnn_count = len(indices) if cnn_frames <= 0 else min(cnn_frames, len(indices))
    cnn_positions = even_indices(len(indices), cnn_count)
    sampled, following = read_with_next(original, indices, original_info, ffmpeg, threads)
    originals = _Originals(sampled, cnn_positions, [name for name in DETECTOR_ORDER if name in detectors],
                           following, references)

    result: dict = {"original": str(original), "protected": str(protected), "frames_evaluated": len(indices),
                    "frames_evaluated_dlib_cnn": len(cnn_positions) if "dlib_cnn" in detectors else 0}
    with tempfile.TemporaryDirectory(prefix="media_cleaner_eval_") as work:
        result["video"] = {"delivered": _score_video(original, original_info, protected, originals, indices,
                                                     ffmpeg, threads, work=Path(work))}
        reencoded = None
        if reencode:
            reencoded = platform_reencode(protected, Path(work) / "reencoded.mp4", ffmpeg, threads)
            result["video"]["reencoded"] = _score_video(original, original_info, reencoded, originals, indices,
                                                        ffmpeg, threads)
            result["reencode_command"] = shlex.join(reencode_command(protected, "reencoded.mp4", "ffmpeg", threads))
        result["audio"] = _score_audio(original, protected, reencoded, speech_reference, ffmpeg, Path(work))
    result["white_box"] = ["mtcnn", "resemblyzer"]
    result["seconds"] = round(time.monotonic() - started, 1)
    result["command"] = evaluate_command(original, protected, frames, cnn_frames, speech_reference, reencode,
                                         face_reference=face_reference)
    return result


# --- the readable table ------------------------------------------------------------------------------

def _fmt(value, digits: int = 2, percent: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if percent:
        return f"{100 * value:.0f} %"
    return f"{value:.{digits}f}"


def format_table(result: dict) -> str:
    """The figures of :func:`evaluate_pair` as a plain-text table, ending with the command that made them."""
    variants = [name for name in ("delivered", "reencoded") if name in result["video"]]
    lines = [f"original : {result['original']}", f"protected: {result['protected']}",
             (f"frames   : {result['frames_evaluated']} sampled evenly "
              f"(dlib_cnn on {result['frames_evaluated_dlib_cnn']} of them)"), ""]
    # Wide enough for the longest label ("mtcnn (white box): found in protected").
    width = 40
    header = f"{'figure':<{width}}" + "".join(f"{name:>14}" for name in variants)
    lines += [header, "-" * len(header)]

    def row(label, getter, **fmt):
        cells = []
        for name in variants:
            try:
                cells.append(_fmt(getter(result["video"][name]), **fmt))
            except (KeyError, TypeError):
                cells.append("–")
        lines.append(f"{label:<{width}}" + "".join(f"{cell:>14}" for cell in cells))

    for name in DETECTOR_ORDER:
        if name not in result["video"]["delivered"]["detection"]:
            continue
        tag = f"{name}{' (white box)' if DETECTORS[name].white_box else ''}"
        row(f"{tag}: found in original", lambda v, n=name: v["detection"][n]["original_rate"], percent=True)
        row(f"{tag}: found in protected", lambda v, n=name: v["detection"][n]["protected_rate"], percent=True)
        row(f"{tag}: protection", lambda v, n=name: v["detection"][n]["protection"], percent=True)
    row("black-box detectors: mean protection", lambda v: v["black_box_detection"], percent=True)
    row("identity: dlib match rate", lambda v: v["identity"]["match_rate"], percent=True)
    row("identity: mean distance (<0.6 match)", lambda v: v["identity"]["mean_distance"])
    row("identity: best frame's distance", lambda v: v["identity"].get("best_frame_distance"))
    row("identity: clip template's distance", lambda v: v["identity"].get("template_distance"))
    row("identity: SFace match rate", lambda v: v["identity_sface"]["match_rate"], percent=True)
    row(f"identity: SFace distance (<{SFACE_MATCH_DISTANCE:.3f})", lambda v: v["identity_sface"]["mean_distance"])
    row("identity: SFace best frame", lambda v: v["identity_sface"].get("best_frame_distance"))
    row("identity: SFace template", lambda v: v["identity_sface"].get("template_distance"))
    for key, label in (("identity", "dlib"), ("identity_sface", "SFace")):
        if "enrolment" not in result["video"]["delivered"].get(key, {}):
            continue
        row(f"{label} vs enrolled photos: clean", lambda v, k=key: v[k]["enrolment"]["original_match_rate"],
            percent=True)
        row(f"{label} vs enrolled photos: matched", lambda v, k=key: v[k]["enrolment"]["match_rate"], percent=True)
        row(f"{label} vs enrolled: template", lambda v, k=key: v[k]["enrolment"]["template_matched"])
    row("PSNR (luma, dB)", lambda v: v["quality"]["psnr"])
    row("SSIM (luma)", lambda v: v["quality"]["ssim"], digits=4)
    row("face SSIM", lambda v: v["quality"]["face_ssim"], digits=4)
    row("VMAF", lambda v: v["quality"]["vmaf"], digits=1)
    row(f"face VMAF, enlarged to {FACE_VIEW_HEIGHT} px", lambda v: v["quality"]["face_vmaf"], digits=1)
    row("face flicker (× the original's)", lambda v: v["quality"]["flicker"]["ratio"])
    for name in PURIFICATIONS:
        row(f"after {name}: dlib match rate", lambda v, n=name: v["purified"][n]["match_rate"], percent=True)
        row(f"after {name}: template matched", lambda v, n=name: v["purified"][n]["template_matched"])
        row(f"after {name}: SFace match rate", lambda v, n=name: v["purified"][n]["sface"]["match_rate"],
            percent=True)
    audio = result.get("audio")
    lines.append("")
    if audio is None:
        lines.append("audio: none (one of the files has no sound)")
    else:
        lines += _voice_lines(audio)
    lines += ["", f"took {result['seconds']} s; reproduce with:", f"  {result['command']}"]
    return "\n".join(lines)


def _voice_lines(audio: dict) -> list[str]:
    lines = []
    for name, judged in audio["judges"].items():
        if "note" in judged:
            lines.append(f"speaker judge {name}: unavailable ({judged['note']})")
            continue
        tag = f"{name}{' (white box)' if judged['white_box'] else ''}"
        parts = []
        for variant in ("delivered", "reencoded", "control"):
            if variant in judged:
                figures = judged[variant]
                text = f"{variant} {_fmt(figures['similarity'], 3)}"
                if "enrollment_similarity" in figures:
                    text += f" (enrolment {_fmt(figures['enrollment_similarity'], 3)})"
                parts.append(text)
        lines.append(f"speaker {tag}, match ≥ {judged['threshold']}: " + "; ".join(parts)
                     + (f"; drop vs control {_fmt(judged['drop'], 3)}" if "drop" in judged else ""))
    verdict = audio["protected_by_all"]
    lines.append("voice protected from every judge: "
                 + ", ".join(f"{variant} {_fmt(value)}" for variant, value in verdict.items()))
    quality = audio["quality"]
    lines.append(f"audio quality: SNR {_fmt(quality['snr_db'], 1)} dB, PESQ-WB {_fmt(quality['pesq'])}, "
                 f"STOI {_fmt(quality['stoi'], 3)}")
    return lines
