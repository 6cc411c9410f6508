"""What happens to the protected audio after us, modelled so the attack can be optimised through it.

Expectation over Transformation (Athalye et al., "Synthesizing Robust Adversarial Examples", ICML 2018):
each step draws one random instance of every transform, so the perturbation works on average over them.
The platforms' chain is resampling (our output at 44.1/48 kHz goes back to 16 kHz in the encoder's
preprocessing, possibly shifted by a few samples), AAC at 128 kbit/s, and volume changes (``preprocess_wav``
normalises loudness). Each transform works at one stage of the front end:

- ``"wave"``: on the 16 kHz waveform (samples,)
- ``"spectrum"``: on its complex STFT (bins, frames); ``clean`` is the clean signal's STFT
- ``"power"``: on the power spectrogram (bins, frames)

All take a ``torch.Generator`` so a run is reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from media_cleaner.protection.voice_mask.frontend import HOP, N_FFT, SAMPLE_RATE


@dataclass(frozen=True)
class RandomDelay:
    """Delay by 0…``max_samples`` samples (zeros in front, same length): the encoder's frame grid never lines
    up with ours after resampling, trimming and AAC framing. Default: one hop (160 samples, 10 ms)."""

    max_samples: int = HOP
    stage = "wave"

    def __call__(self, wav: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shift = int(torch.randint(0, self.max_samples + 1, (1,), generator=generator, device=generator.device))
        return torch.nn.functional.pad(wav, (shift, 0))[:wav.shape[-1]] if shift else wav


@dataclass(frozen=True)
class AacQuantisationNoise:
    """A model of AAC at 128 kbit/s: complex Gaussian noise in every bin at ``level_db`` under the clean
    magnitude. AAC spends its bits where the signal's masking threshold is low, so its error is shaped like
    the signal, at roughly 15–25 dB under it at 128 kbit/s. Default: -20 dB."""

    level_db: float = -20.0
    stage = "spectrum"

    def __call__(self, spectrum: torch.Tensor, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        scale = clean.abs() * 10 ** (self.level_db / 20) / 2 ** 0.5
        noise = torch.complex(torch.randn(spectrum.shape, generator=generator, device=generator.device),
                              torch.randn(spectrum.shape, generator=generator, device=generator.device))
        return spectrum + scale * noise


@dataclass(frozen=True)
class RandomLowPass:
    """Remove everything above a random cutoff between ``min_hz`` and Nyquist (8 kHz), with a 500 Hz cosine
    roll-off: resamplers and encoders cut the top band differently. Default: 5 kHz."""

    min_hz: float = 5000.0
    stage = "power"

    def __call__(self, power: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        nyquist = SAMPLE_RATE / 2
        draw = float(torch.rand((1,), generator=generator, device=generator.device))
        cutoff = self.min_hz + draw * (nyquist - self.min_hz)
        freqs = torch.linspace(0, nyquist, N_FFT // 2 + 1, device=power.device)
        ramp = torch.clamp((freqs - cutoff) / 500.0, 0.0, 1.0)
        return power * (0.5 + 0.5 * torch.cos(torch.pi * ramp)).unsqueeze(-1) ** 2


@dataclass(frozen=True)
class RandomGain:
    """Scale the power by a random gain of ±``max_db`` dB: the encoder is not scale invariant (its input is
    mel *power*, not log power) and volume changes on the way. Default: 4 dB."""

    max_db: float = 4.0
    stage = "power"

    def __call__(self, power: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        gain_db = (2 * float(torch.rand((1,), generator=generator, device=generator.device)) - 1) * self.max_db
        return power * 10 ** (gain_db / 10)


def default_transforms() -> tuple:
    """The chain the engine optimises through: delay, AAC model, low-pass, gain."""
    return (RandomDelay(), AacQuantisationNoise(), RandomLowPass(), RandomGain())
