"""``python -m media_cleaner protect``: the pipeline without a server."""
import subprocess
import sys

from support.media_factory import make_video

from media_cleaner.cli import main
from media_cleaner.media.probe import probe_media


def test_protect_writes_a_playable_copy(tmp_path, capsys):
    source = make_video(tmp_path / "talk.mov", seconds=0.5, size="160x120", fps=10)
    output = tmp_path / "safe.mp4"
    assert main(["protect", str(source), "-o", str(output), "--epsilon", "0.08", "--audio-level", "слабый"]) == 0
    info = probe_media(output)
    assert (info.frame_count, info.has_audio, info.width, info.height) == (5, True, 160, 120)
    assert "5 frames" in capsys.readouterr().out


def test_bad_input_and_parameters_are_one_line_errors(tmp_path, capsys):
    assert main(["protect", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "o.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err
    text = tmp_path / "x.mp4"
    text.write_text("not a video")
    assert main(["protect", str(text), "-o", str(tmp_path / "o.mp4")]) == 2
    assert "could not be read as a video" in capsys.readouterr().err
    assert main(["protect", str(text), "-o", str(tmp_path / "o.mp4"), "--epsilon", "0.5"]) == 2
    assert "epsilon 0.5 is above the maximum 0.2" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "media_cleaner", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "protect" in result.stdout
