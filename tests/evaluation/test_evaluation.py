"""The evaluation harness on media the tests make: a video against itself scores no protection and an
infinite PSNR; against a heavily blurred copy the judges lose the face (clearly positive protection).

The face is scikit-image's ``astronaut`` photo (a real face), written as a short clip with ffmpeg.
"""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from media_cleaner.cli import main
from media_cleaner.evaluation import EvaluationError, json_safe
from media_cleaner.evaluation.dataset import collect_inputs, evaluate_set, format_set_table, wrap_speech
from media_cleaner.evaluation.evaluate import evaluate_pair, format_table
from media_cleaner.evaluation.judges import Box, best_match, identity_judge
from media_cleaner.evaluation.media import even_indices, matching_indices
from media_cleaner.evaluation.metrics import face_flicker, face_region
from media_cleaner.evaluation.purification import (
    FRAME_PURIFICATIONS,
    PURIFICATIONS,
    hqdn3d_video,
    purify_frames,
)
from media_cleaner.evaluation.voice import equal_error_threshold
from media_cleaner.media.ffmpeg import find_ffmpeg
from media_cleaner.params import ProtectionParams
from media_cleaner.media.probe import probe_media
from support.media_factory import make_face_video

DETECTORS = ("mtcnn", "haar", "dlib_hog", "dlib_cnn", "yuface", "blazeface")


def blurred_copy(source: Path, target: Path) -> Path:
    subprocess.run([find_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(source),
                    "-vf", "gblur=sigma=30", "-c:v", "libx264", "-crf", "18", "-c:a", "copy", str(target)],
                   check=True)
    return target


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory) -> Path:
    return make_face_video(tmp_path_factory.mktemp("media") / "astronaut.mp4")


@pytest.fixture(scope="module")
def self_result(face_clip) -> dict:
    return evaluate_pair(face_clip, face_clip, frames=4, cnn_frames=2)


# --- a video against itself -----------------------------------------------------------------------------

def test_a_video_against_itself_has_no_protection_and_infinite_psnr(self_result):
    delivered = self_result["video"]["delivered"]
    for name in DETECTORS:
        figures = delivered["detection"][name]
        assert figures["original_rate"] == 1.0, (name, figures)   # the judges do see this face
        assert figures["protected_rate"] == 1.0 and figures["protection"] == 0.0, (name, figures)
    assert delivered["detection"]["mtcnn"]["white_box"] is True
    assert delivered["detection"]["haar"]["white_box"] is False
    assert delivered["detection"]["dlib_cnn"]["frames"] == 2 and self_result["frames_evaluated_dlib_cnn"] == 2
    assert delivered["black_box_detection"] == 0.0
    assert delivered["identity"]["match_rate"] == 1.0 and delivered["identity"]["mean_distance"] < 1e-6
    # As an attacker judges the clip: its best frame and its template still match (it is the same video).
    assert delivered["identity"]["best_frame_distance"] < 1e-6 and delivered["identity"]["template_distance"] < 1e-6
    assert delivered["identity"]["best_frame_matched"] and delivered["identity"]["template_matched"]
    sface = delivered["identity_sface"]   # the second recognizer, with its own detector, agrees
    assert sface["match_rate"] == 1.0 and sface["mean_distance"] < 1e-6 and sface["template_matched"], sface
    assert sface["model"].startswith("SFace") and sface["threshold"] == pytest.approx(0.637)
    quality = delivered["quality"]
    assert math.isinf(quality["psnr"]) and quality["ssim"] == pytest.approx(1.0)
    assert quality["face_ssim"] == pytest.approx(1.0) and quality["vmaf"] > 95 and quality["face_vmaf"] > 95
    assert self_result["frames_evaluated"] == 4
    # The face changes between frames exactly as much as in the original, because it is the original.
    assert quality["flicker"]["excess"] == pytest.approx(0.0, abs=1e-9)


def test_purification_leaves_an_unprotected_face_recognisable(self_result):
    purified = self_result["video"]["delivered"]["purified"]
    assert list(purified) == list(PURIFICATIONS)
    for name, identity in purified.items():
        # Mild filtering does not change who a clean face is: a protection that these undo has failed.
        assert identity["match_rate"] == 1.0 and identity["template_matched"], (name, identity)
        assert 0 < identity["mean_distance"] < 0.3 or name == "hqdn3d", (name, identity)
        assert identity["sface"]["match_rate"] == 1.0 and identity["sface"]["template_matched"], (name, identity)
    assert "purified" not in self_result["video"]["reencoded"]   # judged on the file as delivered


def test_the_sface_judge_knows_her_after_jpeg_and_not_a_cat():
    import cv2
    from skimage import data
    judge = identity_judge("sface")
    face = data.astronaut()
    _, handle = max(judge.faces(face), key=lambda pair: pair[0].area)
    ok, jpeg = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, 60])
    again = cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)
    _, handle_again = max(judge.faces(again), key=lambda pair: pair[0].area)
    assert judge.distance(judge.embed(face, handle), judge.embed(again, handle_again)) < 0.2
    # A cat where her face was (cut at her landmarks) is nobody she could be.
    cat = np.ascontiguousarray(cv2.resize(data.chelsea(), face.shape[1::-1]))
    assert judge.distance(judge.embed(face, handle), judge.embed(cat, handle)) > judge.threshold


def test_blazeface_finds_her_where_mtcnn_does_in_any_frame_shape_and_no_face_in_coffee():
    from skimage import data
    from media_cleaner.evaluation.judges import BLAZEFACE_MODELS, blazeface_anchors, detector
    assert [len(blazeface_anchors(side, layers)) for _, side, layers in BLAZEFACE_MODELS] == [896, 2304]
    judge, face = detector("blazeface"), data.astronaut()
    reference = max(detector("mtcnn").detect(face), key=lambda box: box.area)
    found = judge.detect(face)
    assert len(found) == 1 and found[0].iou(reference) > 0.5, (found, reference)
    # Letterboxed to a square and back: in a wide frame the box moves with her, in a tall one too. In an
    # 1100 px frame her 94 px face is too small for the short-range model: the full-range one finds it.
    for height, width, top, left in ((512, 640, 0, 100), (640, 512, 110, 0), (900, 1100, 300, 500)):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[top:top + 512, left:left + 512] = face
        moved = Box(found[0].x0 + left, found[0].y0 + top, found[0].x1 + left, found[0].y1 + top)
        boxes = judge.detect(frame)
        assert len(boxes) == 1 and boxes[0].iou(moved) > 0.6, (boxes, moved)
    assert judge.detect(data.coffee()) == []


def test_each_purification_removes_fine_noise_and_keeps_the_picture():
    from skimage import data
    clean = data.astronaut()
    noise = np.random.default_rng(0).choice([-12, 12], size=clean.shape)
    noisy = np.clip(clean.astype(int) + noise, 0, 255).astype(np.uint8)
    error = lambda a: float(np.mean(np.abs(a.astype(float) - clean)))   # noqa: E731
    for name in FRAME_PURIFICATIONS:
        cleaned = purify_frames(name, [noisy])[0]
        assert cleaned.shape == clean.shape and cleaned.dtype == np.uint8
        assert error(cleaned) < 0.8 * error(noisy), name   # high-frequency noise is what they strip
        assert error(purify_frames(name, [clean])[0]) < 6, name   # and the picture itself survives


def test_hqdn3d_writes_a_denoised_copy_with_every_frame(face_clip, tmp_path):
    denoised = hqdn3d_video(face_clip, tmp_path / "denoised.mp4")
    original, cleaned = probe_media(face_clip, find_ffmpeg()), probe_media(denoised, find_ffmpeg())
    assert cleaned.frame_count == original.frame_count and (cleaned.width, cleaned.height) == (384, 384)


def test_flicker_is_the_face_change_against_the_originals_own():
    rng = np.random.default_rng(1)
    still = np.full((64, 64, 3), 128, np.uint8)
    moving = still + 2   # the person moves a little: the face brightens by two levels
    boxes = [[Box(8, 8, 56, 56)]]
    static_mask = rng.integers(-3, 4, still.shape)
    same_mask = face_flicker([still], [moving], [still + static_mask], [moving + static_mask], boxes)
    assert same_mask["ratio"] == pytest.approx(1.0) and same_mask["excess"] == pytest.approx(0.0)
    fresh_mask = np.clip(moving.astype(int) + rng.integers(-3, 4, still.shape), 0, 255)
    shimmer = face_flicker([still], [moving], [still + static_mask], [fresh_mask], boxes)
    assert shimmer["ratio"] > 1.05 and shimmer["excess"] > 0
    assert face_flicker([still], [still], [still], [still], [[]]) is None   # no face, no figure


def test_the_platform_reencode_costs_quality_but_keeps_the_face(self_result):
    reencoded = self_result["video"]["reencoded"]
    assert 28 < reencoded["quality"]["psnr"] < 80
    assert reencoded["detection"]["dlib_hog"]["protection"] == 0.0
    assert reencoded["identity"]["match_rate"] == 1.0   # a re-encode alone does not change who it is
    assert "-crf 28" in self_result["reencode_command"]


def test_sound_against_itself(self_result):
    audio = self_result["audio"]
    assert math.isinf(audio["quality"]["snr_db"])
    assert audio["quality"]["stoi"] == pytest.approx(1.0, abs=1e-3)
    assert audio["speaker"]["threshold"] == pytest.approx(0.7235)
    # The black-box judge knows the sound from itself; the AAC control costs it almost nothing.
    black_box = audio["judges"]["se_res2net50"]
    assert black_box["white_box"] is False and black_box["threshold"] == pytest.approx(0.4317)
    assert black_box["delivered"]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert black_box["delivered"]["match"] and abs(black_box["drop"]) < 0.05
    # Unprotected: never "protected from every judge" (Resemblyzer cannot judge a one-second tone: unknown).
    assert audio["protected_by_all"]["delivered"] in (False, None)


def test_the_table_ends_with_the_command_that_reproduces_it(self_result, face_clip):
    table = format_table(self_result)
    assert "haar: protection" in table and "∞" in table
    assert table.splitlines()[-1].strip().startswith("python -m media_cleaner evaluate --original")
    assert f"--protected {face_clip}" in self_result["command"]


# --- a blurred copy: the judges lose the face -----------------------------------------------------------

def test_a_heavily_blurred_copy_is_clearly_protected(face_clip, tmp_path):
    blurred = blurred_copy(face_clip, tmp_path / "blurred.mp4")
    result = evaluate_pair(face_clip, blurred, frames=3, cnn_frames=1, reencode=False)
    detection = result["video"]["delivered"]["detection"]
    assert "reencoded" not in result["video"]
    assert detection["haar"]["protection"] >= 0.5, detection
    assert detection["dlib_hog"]["protection"] >= 0.5, detection
    assert np.mean([detection[n]["protection"] for n in DETECTORS]) >= 0.5, detection
    black_box = [detection[n]["protection"] for n in DETECTORS if n != "mtcnn"]
    assert result["video"]["delivered"]["black_box_detection"] == pytest.approx(np.mean(black_box))
    assert result["video"]["delivered"]["identity"]["match_rate"] <= 0.5
    assert result["video"]["delivered"]["identity_sface"]["match_rate"] <= 0.5
    quality = result["video"]["delivered"]["quality"]
    assert quality["psnr"] < 30 and quality["face_ssim"] < 0.8


def test_a_change_to_the_face_alone_shows_in_the_enlarged_face_vmaf(face_clip, tmp_path):
    # Grain on the astronaut's face only: diluted by the whole frame, plain when the face is enlarged.
    changed = tmp_path / "grain.mp4"
    subprocess.run([find_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(face_clip),
                    "-filter_complex", "[0:v]split[a][b];[b]crop=100:130:150:40,noise=alls=14:allf=u[g];"
                    "[a][g]overlay=150:40", "-c:v", "libx264", "-crf", "18", str(changed)], check=True)
    quality = evaluate_pair(face_clip, changed, frames=3, cnn_frames=0, reencode=False)["video"]["delivered"]["quality"]
    assert quality["face_vmaf"] < quality["vmaf"] - 5, quality


def test_the_face_region_covers_the_largest_face_of_every_frame_inside_the_frame():
    boxes = [[Box(100, 50, 140, 100), Box(10, 10, 20, 20)], [], [Box(120, 60, 170, 110)]]
    # Widened by a fifth of the largest side (50 px) on each side; the small face is not the person's.
    assert face_region(boxes, 200, 150) == (90, 40, 90, 80)
    assert face_region([[Box(5, 100, 56, 149)]], 200, 150) == (0, 89, 66, 60)   # kept inside the frame, even
    assert face_region([[], []], 200, 150) is None


# --- against enrolled photos of the person ---------------------------------------------------------------

def test_frames_are_also_judged_against_enrolled_photos(face_clip, tmp_path):
    import cv2
    from skimage import data
    photos = tmp_path / "astronaut_photos"
    photos.mkdir()
    photo = data.astronaut()
    cv2.imwrite(str(photos / "portrait.jpg"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(photos / "mirrored.png"), cv2.cvtColor(np.ascontiguousarray(photo[:, ::-1]), cv2.COLOR_RGB2BGR))
    (photos / "notes.txt").write_text("not a photo: skipped")
    blurred = blurred_copy(face_clip, tmp_path / "blurred.mp4")
    same = evaluate_pair(face_clip, face_clip, frames=2, cnn_frames=1, reencode=False, face_reference=photos)
    hidden = evaluate_pair(face_clip, blurred, frames=2, cnn_frames=1, reencode=False, face_reference=photos)
    for key in ("identity", "identity_sface"):
        enrolment = same["video"]["delivered"][key]["enrolment"]
        assert enrolment["references"] == 2, enrolment
        assert enrolment["original_match_rate"] == 1.0 and enrolment["match_rate"] == 1.0, enrolment
        assert enrolment["template_matched"] and enrolment["original_template_matched"], enrolment
        # The clean frames still match the photos; the blurred ones no longer do.
        blurred_enrolment = hidden["video"]["delivered"][key]["enrolment"]
        assert blurred_enrolment["original_match_rate"] == 1.0
        assert blurred_enrolment["match_rate"] <= 0.5, (key, blurred_enrolment)
    assert f"--face-reference {photos}" in same["command"]
    assert "SFace vs enrolled photos: matched" in format_table(same)


def test_a_face_reference_that_holds_no_photo_is_refused(face_clip, tmp_path):
    with pytest.raises(EvaluationError, match="is not a folder"):
        evaluate_pair(face_clip, face_clip, frames=1, face_reference=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="holds no photo"):
        evaluate_pair(face_clip, face_clip, frames=1, face_reference=tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "face.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(EvaluationError, match="face.jpg in the face reference is not a readable image"):
        evaluate_pair(face_clip, face_clip, frames=1, face_reference=tmp_path / "broken")


def test_a_set_finds_each_persons_photos_by_the_videos_label(tmp_path):
    from media_cleaner.evaluation.dataset import person_photos
    (tmp_path / "ada").mkdir()
    assert person_photos(Path("clips/ada__take_1.mp4"), tmp_path) == tmp_path / "ada"
    assert person_photos(Path("clips/bob__take_1.mp4"), tmp_path) is None      # nobody's photos
    assert person_photos(Path("clips/ada.mp4"), tmp_path) is None              # no label in the name
    assert person_photos(Path("clips/ada__take_1.mp4"), None) is None


# --- the command line -----------------------------------------------------------------------------------

def test_cli_evaluate_writes_the_documented_json_shape(face_clip, tmp_path, capsys):
    target = tmp_path / "figures.json"
    code = main(["evaluate", "--original", str(face_clip), "--protected", str(face_clip), "--frames", "2",
                 "--cnn-frames", "1", "--no-reencode", "--json", str(target)])
    assert code == 0
    figures = json.loads(target.read_text())
    delivered = figures["video"]["delivered"]
    assert set(delivered["detection"]) == set(DETECTORS)
    for entry in delivered["detection"].values():
        assert {"original_rate", "protected_rate", "protection"} <= set(entry)
    assert {"match_rate", "mean_distance"} <= set(delivered["identity"])
    assert {"psnr", "ssim", "face_ssim", "vmaf"} <= set(delivered["quality"])
    assert delivered["quality"]["psnr"] == "inf"   # valid JSON: no bare Infinity
    assert {"similarity", "threshold", "match"} <= set(figures["audio"]["speaker"])
    assert {"snr_db", "pesq", "stoi"} <= set(figures["audio"]["quality"])
    assert figures["frames_evaluated"] == 2
    assert "haar" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["evaluate", "--original", "/no/such/original.mp4", "--protected", "/no/such/protected.mp4"],
    ["bench", "/no/such/video.mp4"],
    ["evaluate-set", "/no/such/folder"],
])
def test_cli_missing_input_is_a_one_line_error_with_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "/no/such/" in err and "\n" not in err


def test_speech_reference_must_be_a_folder(face_clip):
    with pytest.raises(EvaluationError, match="not a folder"):
        evaluate_pair(face_clip, face_clip, speech_reference="/no/such/speaker")


# --- the data-set runner --------------------------------------------------------------------------------

def test_evaluate_set_protects_and_scores_every_video(face_clip, tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(face_clip.read_bytes())
    (folder / "notes.txt").write_text("not a video")
    seen = []
    report = evaluate_set(folder, ProtectionParams(audio_level="none"), frames=2, cnn_frames=1, reencode=False,
                          on_file=seen.append, pass_through=True)
    assert [Path(e["file"]).name for e in report["files"]] == ["a.mp4"] and len(seen) == 1
    result = report["files"][0]["result"]
    # Pass-through protection: the judges still see the face; the CRF 17 encode keeps PSNR high.
    assert result["video"]["delivered"]["detection"]["haar"]["protection"] == 0.0
    assert result["video"]["delivered"]["quality"]["psnr"] > 35
    assert report["means"]["haar D/R"] == [0.0]
    table = format_set_table(report)
    assert "a.mp4" in table and "mean" in table
    assert "evaluate-set" in report["command"] and "--pass-through" in report["command"]
    assert "--seed 0" in report["command"] and report["seed"] == 0


def test_a_seeded_set_protects_the_same_way_twice(face_clip, tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(face_clip.read_bytes())
    runs = [evaluate_set(folder, ProtectionParams(audio_level="none"), frames=2, cnn_frames=1, reencode=False,
                         seed=3)["files"][0]["result"]["video"]["delivered"] for _ in range(2)]
    first, second = runs
    assert first["quality"]["psnr"] < 60   # the engines did change the face
    assert first["quality"]["psnr"] == second["quality"]["psnr"]
    assert first["identity"]["mean_distance"] == second["identity"]["mean_distance"]


def test_a_folder_of_speech_is_wrapped_in_still_videos(tmp_path):
    folder = tmp_path / "speech" / "speaker_1"
    folder.mkdir(parents=True)
    subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=200:duration=1", str(folder / "u1.wav")], check=True)
    files, is_speech = collect_inputs(tmp_path / "speech")
    assert is_speech and [f.name for f in files] == ["u1.wav"]
    wrapped = wrap_speech(files[0], tmp_path / "wrapped.mp4")
    info = probe_media(wrapped, find_ffmpeg())
    assert info.has_audio and info.width == 320 and info.height == 240
    assert abs(info.duration_s - 1.0) < 0.1   # the still video lasts as long as the speech
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no video"):
        collect_inputs(tmp_path / "empty")


# --- small pieces ---------------------------------------------------------------------------------------

def test_even_sampling_and_pairing():
    assert even_indices(100, 4) == [12, 37, 62, 87]
    assert even_indices(5, 0) == [0, 1, 2, 3, 4] and even_indices(3, 10) == [0, 1, 2]
    assert matching_indices([0, 50, 99], 100, 50) == [0, 25, 49]


def test_boxes_match_by_overlap():
    face = Box(0, 0, 10, 10)
    assert face.iou(Box(0, 0, 10, 10)) == 1.0 and face.iou(Box(20, 20, 30, 30)) == 0.0
    assert best_match(face, [Box(5, 5, 15, 15)]) is None            # IoU 1/7 < 0.3
    assert best_match(face, [Box(1, 1, 11, 11), Box(50, 50, 60, 60)]) == Box(1, 1, 11, 11)


def test_equal_error_threshold_sits_between_the_classes():
    threshold, eer = equal_error_threshold([0.9, 0.85, 0.8, 0.6], [0.2, 0.3, 0.7, 0.4])
    assert 0.6 < threshold < 0.8 and eer == pytest.approx(0.25)
    threshold, eer = equal_error_threshold([0.9, 0.8], [0.1, 0.2])
    assert 0.2 < threshold < 0.8 and eer == 0.0


def test_json_safe_writes_infinities_as_strings():
    assert json_safe({"a": [math.inf, -math.inf, math.nan, 1.5]}) == {"a": ["inf", "-inf", None, 1.5]}


def test_bench_times_protect_against_a_plain_reencode(face_clip):
    from media_cleaner.evaluation.bench import bench, format_bench
    result = bench(face_clip, ProtectionParams(audio_level="none"), runs=1, pass_through=True)
    assert len(result["protect_seconds"]) == len(result["plain_seconds"]) == 1
    assert result["ratio_median"] == pytest.approx(result["protect_seconds"][0] / result["plain_seconds"][0])
    # The peak is this process's own: at least what it holds right now (torch and the models are loaded).
    now_mb = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
    assert result["frames_per_second"] > 0 and result["peak_rss_mb"] >= 0.9 * now_mb
    text = format_bench(result)
    assert "ratio protect / plain re-encode (median of 1)" in text and "--pass-through" in result["command"]
