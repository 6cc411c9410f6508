"""The voice mask's objective: one object that owns every term the optimiser minimises on a span.

- what protects, :meth:`VoiceObjective.reach`: the encoder's embedding pushed away from the speaker's
  (:class:`~.losses.EmbeddingAwayLoss`, through one random draw of the transforms and a random window
  offset) and, when the level asks for it, the mean envelope moved (:class:`~.losses.TimbreShift`); at or
  under zero the span is protected enough;
- what it costs, :meth:`VoiceObjective.cost`: the share of the masking budget in use
  (:class:`~.losses.BudgetPenalty`) and, when the level guards intelligibility, the band envelopes
  (:class:`~.losses.EnvelopeGuard`).

A new term is a new class in :mod:`.losses` and one line here; the loop (:mod:`.attack`) does not change.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from media_cleaner.protection.voice_mask.frontend import PARTIAL_FRAMES, embed_partials, partial_starts, stft
from media_cleaner.protection.voice_mask.losses import BudgetPenalty, EmbeddingAwayLoss, EnvelopeGuard, TimbreShift


@dataclass
class Span:
    """What the objective knows of the span being protected (16 kHz)."""

    spectrum: torch.Tensor           # the clean STFT (bins, frames)
    speech: torch.Tensor             # (frames,) 1.0 where the attack may work and the encoder hears speech
    audible: torch.Tensor | None     # (frames,) the frames STOI scores, when the guard is on
    level_gain: float                # the loudness normalisation the verifier applies first
    reference: torch.Tensor          # the speaker's clean embedding, unit length
    clean_mel: torch.Tensor | None   # the clean mel power, when the timbre term is on


def window_weights(speech: torch.Tensor, starts: list[int]) -> torch.Tensor:
    """The share of sound frames in each partial window (0 for a window of pauses)."""
    padded = torch.nn.functional.pad(speech, (0, max(0, starts[-1] + PARTIAL_FRAMES - speech.shape[0])))
    return torch.stack([padded[start:start + PARTIAL_FRAMES].mean() for start in starts])


class VoiceObjective:
    """Every term of the voice mask for one stream. ``level`` is a :class:`~.engine.MaskLevel`."""

    def __init__(self, level, encoder, front_end, transforms: tuple, generator: torch.Generator):
        self.encoder, self.front_end, self.transforms, self.generator = encoder, front_end, transforms, generator
        self.away = EmbeddingAwayLoss(floor=level.floor)
        self.penalty = BudgetPenalty()
        self.guard = None if level.intelligibility is None else EnvelopeGuard(level.intelligibility)
        self.timbre = None if level.timbre_db is None else TimbreShift(level.timbre_db)

    def reach(self, protected: torch.Tensor, span: Span) -> torch.Tensor:
        """How far the protected wave still is from protected (≤ 0: far enough); a scalar."""
        away = self.encoder_away(protected, span)
        if self.timbre is not None:   # on the sound as sent: an envelope shift survives the codecs
            away = away + self.timbre(self.front_end(stft(protected).abs() ** 2), span.clean_mel, span.speech)
        return away

    def cost(self, z_real: torch.Tensor, z_imag: torch.Tensor, protected: torch.Tensor, span: Span) -> torch.Tensor:
        """What the perturbation costs the listener; a scalar."""
        cost = self.penalty(z_real, z_imag)
        if self.guard is not None:
            cost = cost + self.guard(span.spectrum, stft(protected), span.audible)
        return cost

    def encoder_away(self, wave: torch.Tensor, span: Span) -> torch.Tensor:
        """The away-loss of ``wave`` through one random draw of the transforms, over shifted windows."""
        generator = self.generator
        for transform in self.transforms:
            if transform.stage == "wave":
                wave = transform(wave, generator)
        spectrum = stft(wave)
        for transform in self.transforms:
            if transform.stage == "spectrum":
                spectrum = transform(spectrum, span.spectrum, generator)
        power = spectrum.abs() ** 2 * span.level_gain
        for transform in self.transforms:
            if transform.stage == "power":
                power = transform(power, generator)
        mel = self.front_end(power)
        offset = int(torch.randint(0, PARTIAL_FRAMES, (1,), generator=generator, device=generator.device))
        starts = partial_starts(mel.shape[0], offset)
        embeddings = embed_partials(self.encoder, mel, starts)
        return self.away(embeddings, span.reference, window_weights(span.speech, starts))
