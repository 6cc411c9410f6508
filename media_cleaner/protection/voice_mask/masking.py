"""Where the perturbation may go and how large it may be: a spectral-shape (masking) constraint.

The idea follows the psychoacoustic attacks on speech models (Schönherr et al., "Adversarial Attacks Against
ASR Systems via Psychoacoustic Hiding", NDSS 2019; Qin et al., "Imperceptible, Robust, and Targeted
Adversarial Examples for ASR", ICML 2019): a perturbation stays unheard when, in every time-frequency bin,
it sits far enough under the signal that masks it. Here the threshold is the clean signal's own STFT
magnitude minus a margin (a first probe: 12 dB kept PESQ 4.2 and STOI 0.97), on the front end's
STFT grid (400-sample periodic Hann, 160-sample hop, 16 kHz):

    |D(f, t)| ≤ 10^(-margin_db / 20) · |X(f, t)| · q(t)

``q(t)`` is 1 in frames with sound and ``10^(-quiet_extra_db / 20)`` in quiet frames (more than
``quiet_below_db`` under the loudest frame of the span, or under ``quiet_floor_dbfs`` absolute): pauses
carry room tone, not speech, the encoder's evaluation trims them anyway, and a listener hears a
perturbation there first. Digital silence (X = 0) gets no perturbation at all.

The perturbation is *parametrised* inside the bound (``D = bound · tanh(|z|)/|z| · z`` for a free
complex ``z``), so the optimiser never leaves it; :meth:`SpectralMask.project` re-imposes the bound on a
finished waveform, whose own STFT can differ slightly from the ``D`` it was built from.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from media_cleaner.protection.voice_mask.frontend import istft, stft

# A full-scale sine gives an STFT peak of about (window sum) / 2 = 100 on this grid: the dBFS reference.
_FULL_SCALE_BIN = 100.0


@dataclass(frozen=True)
class SpectralMask:
    """The per-bin bound of the perturbation, relative to the clean signal.

    Arguments:
        margin_db (float): how far under the clean magnitude every bin of the perturbation stays, in dB.
            Larger is quieter and weaker. Default: 12.
        quiet_below_db (float): frames this many dB under the span's loudest frame count as quiet. Default: 35.
        quiet_floor_dbfs (float): frames under this level (dB full scale) count as quiet. Default: -60.
        quiet_extra_db (float): extra margin in quiet frames, in dB. Default: 20.
    """

    margin_db: float = 12.0
    quiet_below_db: float = 35.0
    quiet_floor_dbfs: float = -60.0
    quiet_extra_db: float = 20.0

    def bound(self, clean_spectrum: torch.Tensor) -> torch.Tensor:
        """Largest allowed perturbation magnitude per bin, shaped like ``clean_spectrum`` (bins × frames)."""
        magnitude = clean_spectrum.abs()
        frame_db = 10 * torch.log10((magnitude ** 2).mean(dim=-2) * 2 / _FULL_SCALE_BIN ** 2 + 1e-20)
        quiet = (frame_db < frame_db.max() - self.quiet_below_db) | (frame_db < self.quiet_floor_dbfs)
        gain = torch.where(quiet, 10 ** (-(self.margin_db + self.quiet_extra_db) / 20), 10 ** (-self.margin_db / 20))
        return magnitude * gain

    @staticmethod
    def shape(z_real: torch.Tensor, z_imag: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        """The complex perturbation spectrum ``bound · tanh(|z|)/|z| · z``: inside the bound for any z."""
        radius = torch.sqrt(z_real ** 2 + z_imag ** 2 + 1e-12)
        scale = bound * torch.tanh(radius) / radius
        return torch.complex(scale * z_real, scale * z_imag)

    def project(self, perturbation: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        """Clip the STFT magnitude of a perturbation waveform to ``bound`` (phase kept), back to a waveform."""
        spectrum = stft(perturbation)
        magnitude = spectrum.abs()
        spectrum = spectrum * torch.clamp(bound / (magnitude + 1e-12), max=1.0)
        return istft(spectrum, perturbation.shape[-1])
