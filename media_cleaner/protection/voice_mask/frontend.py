"""Resemblyzer's encoder and its 40-band mel front end, written in torch so that gradients reach the waveform.

Resemblyzer (Jemine, "Real-Time Voice Cloning", 2019; the GE2E speaker encoder of Wan et al., "Generalized
End-to-End Loss for Speaker Verification", ICASSP 2018) computes a *power* mel spectrogram with librosa
(16 kHz, 25 ms periodic Hann window = 400 samples, 10 ms hop = 160 samples, centred with zero padding,
40 mel bands) and feeds partial windows of 160 frames (1.6 s) to a 3-layer LSTM. :class:`MelFrontEnd`
reproduces that computation in torch (it matches ``resemblyzer.audio.wav_to_mel_spectrogram`` to about
1e-6 relative); the encoder is imported from the installed package with its shipped weights.
"""
from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16000        # Hz, the encoder's rate
N_FFT = 400                # samples (25 ms)
HOP = 160                  # samples (10 ms)
N_MELS = 40
PARTIAL_FRAMES = 160       # frames per partial window (1.6 s), as in resemblyzer.hparams
TARGET_DBFS = -30.0        # preprocess_wav raises quieter speech to this level (increase only)


def stft(wav: torch.Tensor) -> torch.Tensor:
    """Complex STFT (…, 201 bins, frames) with the front end's framing: the one the mask is defined on too."""
    window = torch.hann_window(N_FFT, periodic=True, device=wav.device, dtype=wav.dtype)
    return torch.stft(wav, N_FFT, HOP, window=window, center=True, pad_mode="constant", return_complex=True)


def istft(spectrum: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of :func:`stft` (least-squares overlap-add), ``length`` samples."""
    window = torch.hann_window(N_FFT, periodic=True, device=spectrum.device, dtype=torch.float32)
    return torch.istft(spectrum, N_FFT, HOP, window=window, center=True, length=length)


class MelFrontEnd(nn.Module):
    """Power spectrogram → 40-band mel, as ``librosa.feature.melspectrogram`` computes it for Resemblyzer.

    Input: power spectrogram (…, 201, frames) from ``stft(...).abs() ** 2``, or a waveform through
    :meth:`from_wave`. Output: mel power (…, frames, 40), time-major as the LSTM wants it.
    """

    def __init__(self):
        super().__init__()
        import librosa  # slow to import the first time (numba); the service warms it up at start-up
        basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS)
        self.register_buffer("basis", torch.from_numpy(np.asarray(basis, dtype=np.float32)))

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.basis, power).transpose(-1, -2)

    def from_wave(self, wav: torch.Tensor) -> torch.Tensor:
        return self(stft(wav).abs() ** 2)


_encoders: dict[str, tuple[nn.Module, MelFrontEnd]] = {}
_lock = threading.Lock()


def load_encoder(device: str = "cpu") -> tuple[nn.Module, MelFrontEnd]:
    """The frozen Resemblyzer encoder and the mel front end on ``device``, loaded once per process.

    The weights are the ``pretrained.pt`` shipped inside the ``resemblyzer`` package. Workers share one
    copy: the module is only read (its parameters never require gradients).
    """
    with _lock:
        if device not in _encoders:
            from resemblyzer import VoiceEncoder
            encoder = VoiceEncoder(device, verbose=False)
            for parameter in encoder.parameters():
                parameter.requires_grad_(False)
            # cuDNN computes an LSTM's backward pass only in training mode; this LSTM has no dropout, so
            # training mode computes exactly the same function.
            encoder.train(device.startswith("cuda"))
            _encoders[device] = (encoder, MelFrontEnd().to(device))
        return _encoders[device]


def partial_starts(frames: int, offset: int, stride: int = PARTIAL_FRAMES) -> list[int]:
    """First frames of the partial windows laid every ``stride`` frames from ``offset``, all inside
    ``frames`` (at least one window, starting at 0, when the span is shorter than a window)."""
    last = frames - PARTIAL_FRAMES
    if last <= 0:
        return [0]
    starts = list(range(offset % stride, last + 1, stride))
    return starts or [last]


def embed_partials(encoder: nn.Module, mel: torch.Tensor, starts: list[int]) -> torch.Tensor:
    """L2-normalised embeddings (len(starts), 256) of the partial windows of ``mel`` (frames, 40),
    zero-padded at the end when the span is shorter than one window."""
    if mel.shape[0] < PARTIAL_FRAMES:
        mel = torch.nn.functional.pad(mel, (0, 0, 0, PARTIAL_FRAMES - mel.shape[0]))
    batch = torch.stack([mel[start:start + PARTIAL_FRAMES] for start in starts])
    return encoder(batch)
