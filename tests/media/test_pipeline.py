"""protect_video end to end on small generated clips: what the output keeps, what it drops, and how a run
fails or stops (no partial output, no scratch files left)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from support import media_factory as mf
from media_cleaner.media.ffmpeg import inspect_ffmpeg
from media_cleaner.params import ProtectionParams
from media_cleaner.media.cancel import CancelToken, TaskCancelled
from media_cleaner.media.pipeline import protect_video
from media_cleaner.media.probe import MediaError, probe_media
from media_cleaner.protection.seams import PassThroughAudio, PassThroughVideo, Protectors

AAC_FRAME = 1024
# ffmpeg before 6.0 does not apply the end trim of an MP4 edit list when it decodes, so it hears the encoder's
# padding of the source's last AAC frame (< 1024 samples of silence) as sound, and keeps it.
_RELEASE = inspect_ffmpeg().release
END_PADDING_HEARD = AAC_FRAME if _RELEASE is not None and _RELEASE < (6, 0) else 0


def run(source, tmp_path, params=ProtectionParams(), **options):
    """The pipeline on ``source``; pass-through protectors unless the test gives its own (the engines have
    their own tests: here the media handling is under test, and it must not depend on the machine's speed)."""
    output = tmp_path / "out" / "protected.mp4"
    output.parent.mkdir(exist_ok=True)
    options.setdefault("temp_dir", tmp_path / "scratch")
    protectors = options.pop("protectors", None) or Protectors(
        PassThroughVideo(), None if params.audio_level == "none" else PassThroughAudio())
    protect_video(source, output, protectors, **options)
    return output


def assert_nothing_left(tmp_path):
    assert not any((tmp_path / "scratch").iterdir())
    assert not any((tmp_path / "out").iterdir())


def test_keeps_frames_duration_and_sound(tmp_path):
    source = mf.make_video(tmp_path / "clip.mp4", seconds=2, fps=25, channels=2, sample_rate=44100)
    seen = []
    output = run(source, tmp_path, progress=seen.append)
    before, after = probe_media(source), probe_media(output)
    assert after.frame_count == before.frame_count == 50
    assert abs(after.duration_s - before.duration_s) <= 1 / 25
    assert (after.channels, after.sample_rate, after.audio_codec) == (2, 44100, "aac")
    # the edit list trims the priming
    assert 0 <= len(mf.audio_samples(output)) - len(mf.audio_samples(source)) <= END_PADDING_HEARD
    assert mf.frame_times(output) == pytest.approx(mf.frame_times(source), abs=1e-3)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 50
    assert not any((tmp_path / "scratch").iterdir())


def test_pass_through_looks_the_same(tmp_path):
    source = mf.make_video(tmp_path / "clip.mp4", seconds=0.4, audio=False)
    output = run(source, tmp_path)
    assert mf.psnr(mf.decode_frame(source, 5), mf.decode_frame(output, 5)) > 35


@pytest.mark.parametrize("flag", [90, -90])
def test_rotated_input_plays_upright(tmp_path, flag):
    source = mf.make_video(tmp_path / "phone.mp4", seconds=0.4, audio=False, rotate=flag)
    output = run(source, tmp_path)
    before, after = probe_media(source), probe_media(output)
    assert (after.width, after.height) == (before.width, before.height) == (240, 320)
    assert after.rotation == 0
    assert mf.psnr(mf.decode_frame(source, 3), mf.decode_frame(output, 3)) > 35


def test_variable_frame_rate_timestamps_survive(tmp_path):
    source = mf.make_video(tmp_path / "vfr.mp4", seconds=2, fps=25, vfr=True)
    output = run(source, tmp_path)
    assert probe_media(output).vfr
    assert mf.frame_times(output) == pytest.approx(mf.frame_times(source), abs=1e-3)


def test_late_sound_stays_in_sync(tmp_path):
    source = mf.make_video(tmp_path / "late.mp4", seconds=1, audio_delay_s=0.5, sample_rate=48000)
    output = run(source, tmp_path)
    video_start, audio_start = mf.stream_starts(source)

    def onset(samples):  # the tone's first sample
        return int(np.argmax(np.abs(samples[:, 0]) > 0.01)) / 48000

    assert onset(mf.audio_samples(output)) + mf.stream_starts(output)[1] == pytest.approx(
        audio_start - video_start + onset(mf.audio_samples(source)), abs=0.005)


def test_odd_size_is_cropped_to_even(tmp_path):
    source = mf.make_video(tmp_path / "odd.mkv", seconds=0.4, size="321x241", pix_fmt="yuv444p", audio=False)
    after = probe_media(run(source, tmp_path))
    assert (after.width, after.height, after.frame_count) == (320, 240, 10)


@pytest.mark.parametrize("name", ["clip.mkv", "clip.webm", "clip.mov", "clip.avi", "clip.flv", "clip.m4v"])
def test_containers(tmp_path, name):
    source = mf.make_video(tmp_path / name, seconds=1, size="160x120", fps=25)
    output = run(source, tmp_path)
    before, after = probe_media(source), probe_media(output)
    assert after.frame_count == before.frame_count
    assert (after.width, after.height, after.channels, after.sample_rate) == (160, 120, 2, 48000)
    assert abs(len(mf.audio_samples(output)) - len(mf.audio_samples(source))) <= AAC_FRAME


@pytest.mark.parametrize("codec, pix_fmt", [("libx264", "yuv420p10le"), ("libx265", "yuv420p10le")])
def test_ten_bit_and_hevc(tmp_path, codec, pix_fmt):
    source = mf.make_video(tmp_path / "deep.mkv", seconds=0.4, codec=codec, pix_fmt=pix_fmt, audio=False)
    output = run(source, tmp_path)
    after = probe_media(output)
    assert (after.video_codec, after.pix_fmt, after.frame_count) == ("h264", "yuv420p", 10)
    assert mf.psnr(mf.decode_frame(source, 2), mf.decode_frame(output, 2)) > 35


def test_no_audio(tmp_path):
    output = run(mf.make_video(tmp_path / "silent.mp4", seconds=0.4, audio=False), tmp_path)
    assert not probe_media(output).has_audio


def test_identifying_metadata_is_removed(tmp_path):
    tags = {"location": "+48.8577+002.2950/", "make": "Apple", "model": "iPhone 15",
            "creation_time": "2024-05-01T10:00:00Z", "title": "my holiday"}
    source = mf.make_video(tmp_path / "phone.mov", seconds=0.4, metadata=tags, rotate=-90)
    assert "iPhone 15" in mf.listing(source)
    text = mf.listing(run(source, tmp_path)).lower()
    for word in ("location", "48.8577", "apple", "iphone", "creation_time", "holiday", "encoder", "lavf"):
        assert word not in text


@pytest.mark.parametrize("name, audio_codec, copied", [
    ("clip.mp4", "aac", True), ("clip.webm", "libopus", True), ("clip.avi", "libmp3lame", True),
    ("clip.mov", "pcm_s16le", False)])  # MP4 cannot hold PCM: it becomes AAC
def test_audio_level_none_keeps_the_original_sound(tmp_path, name, audio_codec, copied):
    source = mf.make_video(tmp_path / name, seconds=1, size="160x120", audio_codec=audio_codec)
    output = run(source, tmp_path, ProtectionParams(audio_level="none"))
    before, after = probe_media(source), probe_media(output)
    assert after.audio_codec == (before.audio_codec if copied else "aac")
    if copied:
        assert mf.audio_packet_checksums(output) == mf.audio_packet_checksums(source)
    assert abs(len(mf.audio_samples(output)) - len(mf.audio_samples(source))) <= AAC_FRAME


class InvertCorner(PassThroughVideo):
    def protect_frame(self, frame, pts_s, index):
        frame[:40, :40] = 255 - frame[:40, :40]
        return frame


class HalveVolume(PassThroughAudio):
    def protect_chunk(self, pcm, start_sample):
        return pcm * 0.5


def test_protectors_change_the_output(tmp_path):
    source = mf.make_video(tmp_path / "clip.mp4", seconds=0.4)
    output = run(source, tmp_path, protectors=Protectors(video=InvertCorner(), audio=HalveVolume()))
    before, after = mf.decode_frame(source, 4), mf.decode_frame(output, 4)
    assert mf.psnr(255 - before[:40, :40], after[:40, :40]) > 30
    assert mf.psnr(before[60:, 60:], after[60:, 60:]) > 35
    loud, quiet = mf.audio_samples(source), mf.audio_samples(output)
    assert np.sqrt(np.mean(quiet ** 2)) == pytest.approx(np.sqrt(np.mean(loud ** 2)) / 2, rel=0.05)


class Recorder(PassThroughVideo):
    def __init__(self, fail_at=None, delay_s=0.0):
        self.fail_at, self.delay_s, self.calls = fail_at, delay_s, []

    def begin(self, info):
        self.calls.append(("begin", info.width, info.height, info.frame_count))

    def protect_frame(self, frame, pts_s, index):
        self.calls.append(("frame", index, round(pts_s, 3)))
        time.sleep(self.delay_s)
        if index == self.fail_at:
            raise RuntimeError("engine crashed")
        return frame

    def end(self):
        self.calls.append(("end",))


def test_protector_sees_every_frame_with_its_time(tmp_path):
    recorder = Recorder()
    run(mf.make_video(tmp_path / "clip.mp4", seconds=0.4, fps=25, audio=False), tmp_path,
        protectors=Protectors(video=recorder, audio=None))
    assert recorder.calls[0] == ("begin", 320, 240, 10)
    assert recorder.calls[1:-1] == [("frame", index, round(index * 0.04, 3)) for index in range(10)]
    assert recorder.calls[-1] == ("end",)


def test_failing_protector_leaves_nothing(tmp_path):
    recorder = Recorder(fail_at=5)
    with pytest.raises(RuntimeError, match="engine crashed"):
        run(mf.make_video(tmp_path / "clip.mp4", seconds=1), tmp_path, protectors=Protectors(recorder, None))
    assert recorder.calls[-1] == ("end",)
    assert_nothing_left(tmp_path)


def test_cancel_stops_quickly_and_leaves_nothing(tmp_path):
    source = mf.make_video(tmp_path / "clip.mp4", seconds=4, fps=25)
    token = CancelToken()
    cancelled_at = []

    def cancel_soon():
        time.sleep(0.5)
        cancelled_at.append(time.monotonic())
        token.cancel()

    threading.Thread(target=cancel_soon, daemon=True).start()
    with pytest.raises(TaskCancelled):
        run(source, tmp_path, protectors=Protectors(Recorder(delay_s=0.05), PassThroughAudio()), cancel=token)
    assert time.monotonic() - cancelled_at[0] < 1.0
    assert_nothing_left(tmp_path)


def test_cancel_before_start(tmp_path):
    token = CancelToken()
    token.cancel()
    with pytest.raises(TaskCancelled):
        run(mf.make_video(tmp_path / "clip.mp4", seconds=0.4), tmp_path, cancel=token)
    assert_nothing_left(tmp_path)


def test_undecodable_input_is_a_media_error(tmp_path):
    source = tmp_path / "junk.mp4"
    source.write_bytes(b"\x00" * 4096)
    (tmp_path / "out").mkdir()
    (tmp_path / "scratch").mkdir()
    with pytest.raises(MediaError):
        run(source, tmp_path)
    assert_nothing_left(tmp_path)


MEASURE_PIPELINE_MEMORY = """
import resource, sys
from pathlib import Path
from media_cleaner.media.pipeline import protect_video
from media_cleaner.protection.seams import PassThroughVideo, Protectors
work = Path(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
protect_video(work / "big.mp4", work / "out.mp4", Protectors(PassThroughVideo(), None), temp_dir=work / "scratch",
              threads=2, preset="ultrafast")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_memory_stays_bounded(tmp_path):
    """A 1080p minute would be 11 GB of RGB: frames must flow through, not pile up.

    Measured in a fresh interpreter that runs only the pipeline: in the test process the high-water mark is
    already far above anything the pipeline adds (torch and the models are loaded), so it would not move."""
    import subprocess
    import sys
    mf.make_video(tmp_path / "big.mp4", seconds=2, size="1280x720", fps=25, audio=False)
    result = subprocess.run([sys.executable, "-c", MEASURE_PIPELINE_MEMORY, str(tmp_path)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    grown_mb = float(result.stdout.strip().splitlines()[-1])
    assert grown_mb < 100, grown_mb  # 50 frames of 2.7 MB held at once would be 135 MB


def _yuv_frame(path, index):
    """Frame ``index`` as raw YUV bytes, with no colour conversion at all."""
    out = mf._ffmpeg("-i", str(path), "-vf", f"select=eq(n\\,{index})", "-frames:v", "1", "-f", "rawvideo",
                     "-pix_fmt", "yuv420p", "-", capture=True).stdout
    return np.frombuffer(out, dtype=np.uint8)


@pytest.mark.parametrize("tags,expected", [([], "yuv420p(progressive"),
                                           (["-colorspace", "bt709", "-color_primaries", "bt709",
                                             "-color_trc", "bt709"], "yuv420p(tv, bt709")])
def test_colours_are_kept_tagged_or_not(tmp_path, tags, expected):
    # 1280x720: an untagged HD input is the case where players and ffmpeg guess differently.
    source = tmp_path / "hd.mp4"
    mf._ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=10:duration=0.3", "-c:v", "libx264",
               "-pix_fmt", "yuv420p", *tags, str(source))
    output = run(source, tmp_path)
    assert expected in mf.listing(output)
    # The same YUV values, so every player, whatever it assumes for untagged video, shows the same colours.
    assert mf.psnr(_yuv_frame(source, 1), _yuv_frame(output, 1)) > 35
