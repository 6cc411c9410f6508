"""What the voice mask optimises: small named losses an engine composes (lower is better for the attack)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EmbeddingAwayLoss:
    """Push the speaker embedding of the protected audio away from the clean speaker embedding.

    An untargeted dodging loss on the cosine similarity, the speaker-verification score of GE2E / Resemblyzer.
    A verifier averages the partial windows' embeddings (``embed_utterance``), so the loss scores that
    average, ``max(0, cos(Σ_k w_k e_k, reference) - floor)``, plus ``window_share`` times the same hinge
    on each window (a shorter excerpt of the audio must not match either). Windows pushed in unrelated
    directions would average back towards the speaker: scoring the average makes them move together. The
    hinge at ``floor`` stops pushing once far enough, so effort (and audibility) goes only where needed.

    Arguments:
        floor (float): cosine similarity under which the audio counts as moved enough. Default: 0.45
            (the match threshold on dev speech is 0.7232; the margin absorbs what AAC and trimming undo).
        window_share (float): weight of the per-window term. Default: 0.5.

    Shape:
        embeddings: (windows, 256), L2-normalised. reference: (256,), L2-normalised. weights: (windows,),
        how much of each window is sound rather than pause (pauses cannot be moved and are trimmed before
        verification anyway). Returns a scalar.
    """

    floor: float = 0.45
    window_share: float = 0.5

    def __call__(self, embeddings: torch.Tensor, reference: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        utterance = (weights[:, None] * embeddings).sum(0)
        utterance = utterance / utterance.norm().clamp_min(1e-12)
        windows = (torch.relu(embeddings @ reference - self.floor) * weights).sum() / weights.sum().clamp_min(1e-6)
        return torch.relu(utterance @ reference - self.floor) + self.window_share * windows


@dataclass(frozen=True)
class BudgetPenalty:
    """Prefer the smallest perturbation that does the job: ``weight · mean(tanh(|z|)²)``, the mean squared
    fraction of the masking bound in use (0 = no perturbation, 1 = every bin at its bound).

    Arguments:
        weight (float): relative to the embedding loss (a cosine). Default: 0.02.
    """

    weight: float = 0.02

    def __call__(self, z_real: torch.Tensor, z_imag: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.tanh(torch.sqrt(z_real ** 2 + z_imag ** 2 + 1e-12)).pow(2).mean()
