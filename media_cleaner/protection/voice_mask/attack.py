"""The optimisation loop of the voice mask on one span: normalised complex steps inside the masking bound.

- a spectral initialisation: the first gradient, taken at zero, sets every bin's phase against the gradient
  at a fixed fraction of its bound (a fast-gradient step in the masked complex domain), and the following
  steps, per-bin normalised like a sign step and shrinking linearly, refine instead of search;
- an early stop: once ``patience`` consecutive random draws of the transforms find the objective satisfied,
  the span is done, so ``steps`` is a ceiling that only hard spans reach.
"""
from __future__ import annotations

from typing import Callable

import torch

from media_cleaner.protection.voice_mask.frontend import istft
from media_cleaner.protection.voice_mask.masking import SpectralMask
from media_cleaner.protection.voice_mask.objective import Span, VoiceObjective


def optimise_span(objective: VoiceObjective, span: Span, clean: torch.Tensor, fixed: torch.Tensor,
                  bound: torch.Tensor, *, steps: int, step_size: float, patience: int,
                  cancelled: Callable[[], bool]) -> tuple[torch.Tensor, int]:
    """(the perturbation of ``clean`` inside ``bound``, the gradient steps taken). ``fixed`` is what was
    already sent for the span's context and is added unchanged."""
    length = len(clean)
    z_real = torch.zeros_like(bound, requires_grad=True)
    z_imag = torch.zeros_like(bound, requires_grad=True)
    satisfied, taken = 0, 0
    for step in range(steps):
        if cancelled():
            break
        protected = clean + fixed + istft(SpectralMask.shape(z_real, z_imag, bound), length)
        reach = objective.reach(protected, span)
        if patience and float(reach.detach()) <= 0.0:
            # Far enough under this draw of the transforms: no backward pass and no update (a step of the
            # budget penalty alone would only shrink z by a whole radius). Stop after ``patience`` such draws
            # in a row: spans that reach the floor early keep their small perturbation.
            satisfied += 1
            if satisfied >= patience:
                break
            continue
        satisfied, taken = 0, taken + 1
        loss = reach + objective.cost(z_real, z_imag, protected, span)
        grad_real, grad_imag = torch.autograd.grad(loss, (z_real, z_imag))
        with torch.no_grad():
            # Every bin moves against its own gradient by the same radius: a sign step generalised to complex
            # bins, so quiet bins (small gradients, small bounds) are not starved.
            norm = torch.sqrt(grad_real ** 2 + grad_imag ** 2)
            radius = step_size * (1 - step / steps)
            scale = torch.where(norm > 0, radius / norm.clamp_min(1e-30), torch.zeros_like(norm))
            z_real -= scale * grad_real
            z_imag -= scale * grad_imag
    with torch.no_grad():
        return istft(SpectralMask.shape(z_real, z_imag, bound), length), taken
