"""The voice mask on synthetic speech: the front end against librosa, monotone levels, exact shapes and rates,
silence, the untouched stream at level "none", stopping on cancel, the early stop once far enough, and the
intelligibility (band-envelope) guard.

The speech is made here (a glottal pulse train through vowel formants, in syllables and pauses), so the
tests need no media files and no speech synthesiser.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import lfilter, resample_poly

from support import media_factory as mf
from media_cleaner.params import ProtectionParams
from media_cleaner.media.pipeline import protect_video
from media_cleaner.protection.seams import AudioStreamInfo
from media_cleaner.protection.registry import build_protectors
from media_cleaner.protection.voice_mask import LEVELS, MaskLevel, VoiceMask
from media_cleaner.protection.voice_mask.frontend import (
    MelFrontEnd,
    PARTIAL_FRAMES,
    SAMPLE_RATE,
    load_encoder,
    stft,
)
from media_cleaner.protection.voice_mask.losses import EnvelopeGuard, TimbreShift

# First three formants (Hz) of a few vowels, and their bandwidths.
VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (640, 1190, 2390)]
BANDWIDTHS = (90, 110, 170)
FAST = MaskLevel(margin_db=12.0, steps=1, floor=0.0)   # one step: shapes and plumbing, not strength


def synthetic_speech(seconds: float, rate: int = SAMPLE_RATE, f0: float = 120.0, seed: int = 0) -> np.ndarray:
    """Voiced syllables (pulse train with a wandering pitch through formant resonators) between pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    pitch = f0 * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * np.arange(n) / rate))
    phase = np.cumsum(pitch / rate)
    source = np.diff(np.floor(phase), prepend=0.0) - 1.0 / (rate / f0)   # one pulse per period, zero mean
    source += 0.02 * rng.standard_normal(n)                              # breath
    out = np.zeros(n)
    syllable = int(0.25 * rate)
    for index, start in enumerate(range(0, n, syllable)):
        piece = source[start:start + syllable]
        for formant, bandwidth in zip(VOWELS[index % len(VOWELS)], BANDWIDTHS):
            radius = np.exp(-np.pi * bandwidth / rate)
            piece = lfilter([1 - radius], [1, -2 * radius * np.cos(2 * np.pi * formant / rate), radius ** 2], piece)
        envelope = np.sin(np.pi * np.arange(len(piece)) / len(piece)) ** 2
        out[start:start + len(piece)] = piece * envelope * (index % 6 != 5)   # every sixth syllable a pause
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def run_mask(pcm: np.ndarray, rate: int, level, chunk: int | None = None, **options) -> np.ndarray:
    mask = VoiceMask(level, device="cpu", threads=1, **options)
    mask.begin(AudioStreamInfo(rate, pcm.shape[1], len(pcm) / rate))
    chunk = chunk or len(pcm)
    out = [mask.protect_chunk(pcm[start:start + chunk], start) for start in range(0, len(pcm), chunk)]
    mask.end()
    return np.concatenate(out)


def embedding(wave: np.ndarray) -> torch.Tensor:
    """Utterance embedding as ``embed_utterance`` forms it (partials every half window, averaged)."""
    encoder, front_end = load_encoder("cpu")
    with torch.no_grad():
        mel = front_end.from_wave(torch.as_tensor(wave))
        starts = list(range(0, mel.shape[0] - PARTIAL_FRAMES + 1, PARTIAL_FRAMES // 2))
        mean = encoder(torch.stack([mel[s:s + PARTIAL_FRAMES] for s in starts])).mean(0)
    return mean / mean.norm()


def test_front_end_matches_librosa():
    librosa = pytest.importorskip("librosa")
    wave = synthetic_speech(1.3)
    expected = librosa.feature.melspectrogram(y=wave, sr=SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=40).T
    got = MelFrontEnd().from_wave(torch.as_tensor(wave)).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_levels_are_monotone():
    wave = synthetic_speech(4.0, seed=1)[:, None]
    clean = embedding(wave[:, 0])
    similarity, snr = [], []
    for level in ("weak", "medium", "strong"):
        protected = run_mask(wave, SAMPLE_RATE, level)
        similarity.append(float(embedding(protected[:, 0]) @ clean))
        snr.append(10 * np.log10(np.sum(wave ** 2) / np.sum((protected - wave) ** 2)))
    assert similarity[0] > similarity[1] > similarity[2], similarity
    assert snr[0] > snr[1] > snr[2], snr
    assert similarity[2] < 0.9   # the strong level really moves the voice
    assert snr[0] > LEVELS["weak"].margin_db - 3   # and the weak one stays near its masking margin


@pytest.mark.parametrize("rate, channels", [(44100, 1), (48000, 2), (44100, 2), (16000, 1)])
def test_exact_samples_rate_and_channels(rate, channels):
    voice = resample_poly(synthetic_speech(2.3), rate, SAMPLE_RATE)[:int(2.3 * rate) + 7]   # an odd length
    pcm = np.stack([voice * (1 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32)
    chunk = int(0.9 * rate) + 3   # odd chunks, the last one shorter
    protected = run_mask(pcm, rate, FAST, chunk=chunk)
    assert protected.shape == pcm.shape and protected.dtype == np.float32
    assert np.all(np.abs(protected) <= 1)
    change = protected - pcm
    assert np.any(change != 0)
    assert 10 * np.log10(np.sum(pcm ** 2) / np.sum(change ** 2)) > 8   # hidden under the signal
    if channels == 2:   # one perturbation, from the mid channel, on both: the stereo image is kept
        np.testing.assert_allclose(change[:, 0], change[:, 1], atol=1e-6)


def test_silence_in_silence_out():
    silent = np.zeros((int(1.7 * 44100), 2), np.float32)
    assert np.array_equal(run_mask(silent, 44100, "medium", chunk=44100), silent)
    voice = resample_poly(synthetic_speech(2.0), 441, 160).astype(np.float32)
    one_sided = np.stack([voice, np.zeros_like(voice)], axis=1)   # a silent channel next to speech
    protected = run_mask(one_sided, 44100, FAST)
    assert np.all(protected[:, 1] == 0) and np.any(protected[:, 0] != voice)


def test_pauses_stay_quiet():
    wave = synthetic_speech(3.0, seed=2)
    wave[SAMPLE_RATE:2 * SAMPLE_RATE] *= 1e-3   # a second of room tone 60 dB down
    protected = run_mask(wave[:, None], SAMPLE_RATE, "strong")[:, 0]
    pause = slice(SAMPLE_RATE + 800, 2 * SAMPLE_RATE - 800)
    spr = 10 * np.log10(np.sum(wave[pause] ** 2) / np.sum((protected - wave)[pause] ** 2))
    assert spr > LEVELS["strong"].margin_db + 10


def test_cancel_stops_between_steps():
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 2

    wave = synthetic_speech(2.0)[:, None]
    protected = run_mask(wave, SAMPLE_RATE, MaskLevel(margin_db=6.0, steps=500, floor=0.0), cancelled=cancelled)
    assert len(calls) == 3 and protected.shape == wave.shape


def test_early_stop_once_the_hinge_is_satisfied():
    wave = synthetic_speech(2.0, seed=3)[:, None]
    # A floor of 1.0 is satisfied by the clean audio itself: no gradient step, no perturbation at all.
    mask = VoiceMask(MaskLevel(margin_db=6.0, steps=50, floor=1.0), device="cpu", threads=1)
    mask.begin(AudioStreamInfo(SAMPLE_RATE, 1, 2.0))
    assert np.array_equal(mask.protect_chunk(wave, 0), wave) and mask.steps_taken == [0]
    # Without the early stop (patience 0) every step of the ceiling is spent, and the voice moves.
    full = VoiceMask(MaskLevel(margin_db=6.0, steps=6, floor=0.0, patience=0), device="cpu", threads=1)
    full.begin(AudioStreamInfo(SAMPLE_RATE, 1, 2.0))
    protected = full.protect_chunk(wave, 0)
    assert full.steps_taken == [6] and np.any(protected != wave)


def test_envelope_guard_follows_intelligibility():
    wave = torch.as_tensor(synthetic_speech(3.0, seed=4))
    clean = stft(wave)
    speech = (clean.abs().pow(2).sum(0) > 1e-4 * clean.abs().pow(2).sum(0).max()).float()
    guard = EnvelopeGuard(target=0.98)
    assert float(guard.correlation(clean, clean, speech)) == pytest.approx(1.0, abs=1e-5)
    assert float(guard(clean, clean, speech)) == 0.0
    noise = torch.as_tensor(np.random.default_rng(0).standard_normal(len(wave)), dtype=torch.float32)
    correlations = [float(guard.correlation(clean, stft(wave + scale * noise * wave.std()), speech))
                    for scale in (0.05, 0.2, 0.8)]
    assert 1.0 > correlations[0] > correlations[1] > correlations[2], correlations
    assert float(guard(clean, stft(wave + 0.8 * noise * wave.std()), speech)) > 0


def test_intelligibility_target_keeps_the_envelopes():
    wave = synthetic_speech(3.0, seed=5)[:, None]
    guard, clean = EnvelopeGuard(), stft(torch.as_tensor(wave[:, 0]))
    speech = (clean.abs().pow(2).sum(0) > 1e-4 * clean.abs().pow(2).sum(0).max()).float()
    correlation = {}
    for target in (None, 0.995):
        level = MaskLevel(margin_db=4.0, steps=4, floor=0.0, patience=0, intelligibility=target)
        protected = torch.as_tensor(run_mask(wave, SAMPLE_RATE, level)[:, 0])
        correlation[target] = float(guard.correlation(clean, stft(protected), speech))
    assert correlation[0.995] > correlation[None], correlation


def test_timbre_shift_measures_the_mean_envelope_move():
    clean = torch.rand((200, 40), generator=torch.Generator().manual_seed(6)) + 0.1   # mel power (frames, bands)
    speech = torch.ones(clean.shape[0])
    term = TimbreShift(target_db=2.0, weight=0.2)
    assert float(term.shift_db(clean, clean, speech)) == pytest.approx(0.0, abs=1e-3)
    assert float(term(clean, clean, speech)) == pytest.approx(0.4, abs=1e-3)   # nothing moved: full cost
    louder = clean * 10 ** 0.3   # +3 dB in every band: the mean envelope moved by 3 dB, past the target
    assert float(term.shift_db(louder, clean, speech)) == pytest.approx(3.0, abs=1e-3)
    assert float(term(louder, clean, speech)) == 0.0


def test_the_timbre_term_moves_the_envelope_more_than_the_encoder_alone():
    wave = synthetic_speech(3.0, seed=7)[:, None]
    front_end, term = MelFrontEnd(), TimbreShift()
    clean = front_end.from_wave(torch.as_tensor(wave[:, 0]))
    speech = torch.ones(clean.shape[0])
    shift = {}
    for timbre in (None, 3.0):
        level = MaskLevel(margin_db=7.0, steps=6, floor=0.0, patience=0, timbre_db=timbre)
        protected = torch.as_tensor(run_mask(wave, SAMPLE_RATE, level)[:, 0])
        shift[timbre] = float(term.shift_db(front_end.from_wave(protected), clean, speech))
    assert shift[3.0] > shift[None] + 0.2, shift
    assert [LEVELS[name].timbre_db for name in ("weak", "medium", "strong")] == sorted(
        LEVELS[name].timbre_db for name in ("weak", "medium", "strong"))


def test_build_protectors_puts_the_voice_mask_on_the_audio_seam():
    assert isinstance(build_protectors(ProtectionParams(audio_level="medium"), device="cpu").audio, VoiceMask)
    assert build_protectors(ProtectionParams(audio_level="none"), device="cpu").audio is None


def test_level_none_keeps_the_audio_stream_bit_identical(tmp_path):
    source = mf.make_video(tmp_path / "clip.mp4", seconds=1, channels=2, sample_rate=48000)
    output = tmp_path / "protected.mp4"
    protect_video(source, output, build_protectors(ProtectionParams(audio_level="none")), temp_dir=tmp_path / "scratch")
    assert mf.audio_packet_checksums(output) == mf.audio_packet_checksums(source)


def test_protected_video_keeps_its_sound_length(tmp_path):
    source = mf.make_video(tmp_path / "clip.mp4", seconds=1.5, channels=2, sample_rate=44100)
    output = tmp_path / "protected.mp4"
    protect_video(source, output, build_protectors(ProtectionParams(audio_level="weak")), temp_dir=tmp_path / "scratch")
    assert mf.audio_samples(output).shape == mf.audio_samples(source).shape
