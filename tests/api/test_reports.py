"""The per-task protection report: ``GET /report/{id}`` and its before/after sheet, through the real store,
workers and pipeline, and through client.py."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import httpx_transport, wait_for
from support.media_factory import make_face_video

from media_cleaner.service.queue import jobs
from media_cleaner.evaluation.report import AMPLIFY, render_sheet
from media_cleaner.protection.seams import PassThroughAudio, PassThroughVideo, Protectors

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import client as mc

# Every API test here runs on the embedded default and on the distributed backend (conftest.py).
BOTH_BACKENDS = True
REPORT_TIMEOUT = 180.0   # the first report loads MTCNN and the speaker encoder


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory) -> Path:
    return make_face_video(tmp_path_factory.mktemp("media") / "astronaut.mp4", seconds=1, size=256)


def pass_through(params, threads):
    return Protectors(PassThroughVideo(), PassThroughAudio())


class SlowVideo(PassThroughVideo):
    def protect_frame(self, frame, pts_s, index):
        time.sleep(0.2)
        return frame


def upload(api, path):
    with open(path, "rb") as fh:
        response = api.post("/upload", files={"file": (path.name, fh, "video/mp4")}, data={"audio_level": "weak"})
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def test_a_completed_task_has_a_report_and_a_preview_sheet(api_factory, face_clip, tmp_path):
    api = api_factory(pass_through, task_reports=True)
    task_id = upload(api, face_clip)
    task = wait_for(api, task_id, timeout=REPORT_TIMEOUT)
    assert task["status"] == "completed", task
    assert task["report"] and "error" not in task["report"], task["report"]

    response = api.get(f"/report/{task_id}")
    assert response.status_code == 200
    report = response.json()
    # Pass-through: high PSNR (only the CRF 17 encode), MTCNN still finds the face on every sampled frame.
    assert report["psnr"] > 35 and report["ssim"] > 0.95
    mtcnn = report["detection"]["mtcnn"]
    assert mtcnn["white_box"] and mtcnn["original_rate"] == 1.0 and mtcnn["protection"] == 0.0
    identity = report["identity"]   # FaceNet (white box): the pass-through face is still her
    assert identity["match_rate"] == 1.0 and identity["mean_distance"] < 0.3 and identity["frames"] >= 4
    assert report["protect_seconds"] > 0 and report["frames_sampled"] >= 4
    assert "speaker" in report and "preview" not in report   # no server paths
    assert report["preview_url"] == f"/report/{task_id}/preview.png"

    sheet = api.get(report["preview_url"])
    assert sheet.status_code == 200 and sheet.headers["content-type"] == "image/png"
    image = cv2.imdecode(np.frombuffer(sheet.content, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] == 4 * 320 and image.shape[0] > 3 * 320

    # client.py fetches both.
    client = mc.MediaCleanerClient("http://testserver", transport=httpx_transport(api))
    assert client.report(task_id)["psnr"] == report["psnr"]
    saved = client.download_preview(task_id, tmp_path / "sheet.png")
    assert saved.read_bytes() == sheet.content


def test_the_sheet_shows_where_the_perturbation_went():
    original = np.full((64, 64, 3), 100, np.uint8)
    changed = original.copy()
    changed[:, :32] += 2   # +2 levels on the left half only
    sheet = render_sheet([original], [changed])
    perturbation_row = sheet[-10]
    assert perturbation_row[:150].mean() == pytest.approx(128 + 2 * AMPLIFY, abs=1)
    assert perturbation_row[170:].mean() == pytest.approx(128, abs=1)


def test_unknown_task_is_404_and_unfinished_task_is_409(api_factory, face_clip):
    api = api_factory(lambda params, threads: Protectors(SlowVideo(), PassThroughAudio()), task_reports=True)
    assert api.get("/report/0123456789abcdef").status_code == 404
    assert api.get("/report/0123456789abcdef/preview.png").status_code == 404
    task_id = upload(api, face_clip)
    for path in (f"/report/{task_id}", f"/report/{task_id}/preview.png"):
        response = api.get(path)
        assert response.status_code == 409 and "not ready" in response.json()["detail"]
    api.delete(f"/tasks/{task_id}")


def test_a_report_that_fails_never_fails_the_task(api_factory, face_clip, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the detector exploded")

    monkeypatch.setattr(jobs, "build_task_report", broken)
    api = api_factory(pass_through, task_reports=True)
    task_id = upload(api, face_clip)
    task = wait_for(api, task_id, timeout=REPORT_TIMEOUT)
    assert task["status"] == "completed"
    report = api.get(f"/report/{task_id}").json()
    assert "the detector exploded" in report["error"] and report["protect_seconds"] > 0
    assert report["preview_url"] is None
    preview = api.get(f"/report/{task_id}/preview.png")
    assert preview.status_code == 409 and "the detector exploded" in preview.json()["detail"]
    assert api.get(f"/download/{task_id}").status_code == 200


def test_cancelling_while_the_report_is_made_cancels_the_task(api_factory, face_clip, monkeypatch, tmp_path):
    reached = []

    def waits_for_cancel(*args, cancel, **kwargs):
        reached.append(True)
        while not cancel.cancelled:
            time.sleep(0.02)
        cancel.raise_if_cancelled()

    monkeypatch.setattr(jobs, "build_task_report", waits_for_cancel)
    api = api_factory(pass_through, task_reports=True)
    task_id = upload(api, face_clip)
    deadline = time.monotonic() + 60
    while not reached and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reached, "the report step was never reached"
    assert api.delete(f"/tasks/{task_id}").json()["status"] == "cancelled"
    task = wait_for(api, task_id, statuses=("cancelled",), timeout=10)
    # The status is stored before the worker acts on it: wait for the worker to finish cleaning up.
    while api.get("/stats").json()["workers"]["busy"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert task["report"] is None and task["download_url"] is None
    assert not list((tmp_path / "videos_output").glob(f"{task_id}*"))


def test_progress_and_eta_cover_the_report(face_clip, tmp_path):
    """The bar does not sit at 99 % while the report is measured: protection fills PROTECT_SHARE of it, the
    report's steps the rest."""
    seen: list[float] = []
    job = jobs.Job(task_id="t", input_path=face_clip, output_path=tmp_path / "out.mp4",
                   params=jobs.ProtectionParams(), temp_dir=tmp_path / "scratch", threads=1, crf=17,
                   preset="ultrafast", audio_bitrate="128k", ffmpeg=None, stall_timeout_s=60,
                   max_duration_s=None, preview_path=tmp_path / "preview.png", data_dir=tmp_path)
    report = jobs.run_job(job, pass_through, seen.append, jobs.CancelToken())
    assert "error" not in report, report
    during_report = [value for value in seen if value > jobs.PROTECT_SHARE]
    assert max(value for value in seen if value <= jobs.PROTECT_SHARE) == pytest.approx(jobs.PROTECT_SHARE)
    assert len(during_report) >= 3 and during_report == sorted(during_report)
