"""probe_media: what it reads from real files, and the messages for files it cannot use; find_ffmpeg's lookup."""
from __future__ import annotations

from fractions import Fraction

import pytest

from support import media_factory as mf
from media_cleaner.media import ffmpeg as ffmpeg_bin
from media_cleaner.media.ffmpeg import FFmpegNotFound, error_reason, find_ffmpeg
from media_cleaner.media.probe import MediaError, probe_media


def test_plain_mp4(tmp_path):
    info = probe_media(mf.make_video(tmp_path / "clip.mp4", seconds=2, size="320x240", fps=25))
    assert info.summary() == {
        "duration_s": 2.0, "width": 320, "height": 240, "fps": 25.0, "frames": 50, "has_audio": True,
        "rotation": 0, "vfr": False, "video_codec": "h264", "audio_codec": "aac", "channels": 2,
        "sample_rate": 48000}
    assert info.frame_rate == Fraction(25)
    assert info.pix_fmt == "yuv420p"
    assert "mp4" in info.container


@pytest.mark.parametrize("flag, rotation", [(90, 270), (-90, 90), (180, 180)])
def test_rotation_gives_display_size(tmp_path, flag, rotation):
    info = probe_media(mf.make_video(tmp_path / "turned.mp4", seconds=0.4, audio=False, rotate=flag))
    assert info.rotation == rotation
    assert (info.coded_width, info.coded_height) == (320, 240)
    assert (info.width, info.height) == ((320, 240) if rotation == 180 else (240, 320))


def test_variable_frame_rate_and_exact_count(tmp_path):
    info = probe_media(mf.make_video(tmp_path / "vfr.mp4", seconds=2, fps=25, vfr=True, audio=False))
    assert info.vfr
    assert info.frame_count == 35  # 3 of every 10 frames dropped


def test_mkv_rounded_timestamps_are_constant_rate(tmp_path):
    info = probe_media(mf.make_video(tmp_path / "clip.mkv", seconds=1, fps=30, audio=False))
    assert not info.vfr
    assert info.frame_rate == Fraction(30)


def test_colour_tags_ten_bit_and_mono(tmp_path):
    path = mf.make_video(tmp_path / "hevc.mkv", seconds=0.4, codec="libx265", pix_fmt="yuv420p10le", channels=1,
                         sample_rate=22050)
    info = probe_media(path)
    assert (info.video_codec, info.pix_fmt, info.color_range) == ("hevc", "yuv420p10le", "tv")
    assert (info.channels, info.sample_rate) == (1, 22050)


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(MediaError, match="could not be read as a video") as error:
        probe_media(path)
    assert str(tmp_path) not in error.value.message


def test_empty_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        probe_media(tmp_path / "empty.mp4")


def test_truncated_mp4(tmp_path):
    path = mf.make_truncated_mp4(tmp_path / "cut.mp4", tmp_path)
    with pytest.raises(MediaError, match="incomplete") as error:
        probe_media(path)
    assert "upload" in error.value.message and str(tmp_path) not in error.value.message


def test_audio_only(tmp_path):
    with pytest.raises(MediaError, match="only sound"):
        probe_media(mf.make_audio_only(tmp_path / "voice.m4a"))


def test_missing_file_message_has_no_path(tmp_path):
    with pytest.raises(MediaError) as error:
        probe_media(tmp_path / "gone.mp4")
    assert str(tmp_path) not in error.value.message


def test_error_reason_keeps_the_cause_and_hides_paths():
    log = ("Input #0, mov,mp4,m4a,3gp,3g2,mj2, from '/srv/data/in.mp4':\n  Duration: 00:00:01.00\n"
           "[h264 @ 0x55d0c0a0] Invalid NAL unit size (1234 > 99).\n"
           "[in#0 @ 0x55d0c0b0] Error opening input /srv/data/in.mp4: Invalid data found\n")
    reason = error_reason(log)
    assert "Invalid NAL unit size" in reason and "/srv/data" not in reason and "in.mp4" in reason


def test_find_ffmpeg_order(tmp_path, monkeypatch):
    find_ffmpeg.cache_clear()
    try:
        monkeypatch.delenv(ffmpeg_bin.ENV_VARIABLE, raising=False)
        assert find_ffmpeg()  # whatever is installed (at worst the imageio-ffmpeg binary)
        local = tmp_path / "ffmpeg"
        local.write_text("#!/bin/sh\n")
        local.chmod(0o755)
        monkeypatch.setattr(ffmpeg_bin, "LOCAL_FFMPEG_DIR", tmp_path)
        find_ffmpeg.cache_clear()
        assert find_ffmpeg() == str(local)
        assert find_ffmpeg("/bin/sh") == "/bin/sh"  # an explicit override wins
        monkeypatch.setenv(ffmpeg_bin.ENV_VARIABLE, str(tmp_path / "nowhere"))
        find_ffmpeg.cache_clear()
        with pytest.raises(FFmpegNotFound):
            find_ffmpeg()
    finally:
        find_ffmpeg.cache_clear()
