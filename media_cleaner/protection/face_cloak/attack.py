"""Projected-gradient attacks on the surrogate, on a small shared base (the shape of torchattacks).

:class:`Attack` owns what every attack shares: the surrogate in eval mode, the device, the cancellation
check and a ``__repr__`` that lists the parameters. :class:`CloakPGD` is the face cloak's optimiser.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from media_cleaner.protection.face_cloak.losses import CloakLoss, IdentityTarget, structural_dissimilarity
from media_cleaner.protection.face_cloak.masks import perceptual_budget, ycbcr_to_rgb
from media_cleaner.protection.face_cloak.surrogate import MTCNNSurrogate
from media_cleaner.protection.face_cloak.transforms import RandomPipeline


# "rms": the normalised-gradient step, projected onto the visibility floor after every step;
# "adam": Adam on a tanh-bounded variable with the floor as an annealed squared-hinge penalty.
OPTIMISERS = ("rms", "adam")

# The adam optimiser's hinge weight on (1 − SSIM) / floor − 1, squared: annealed geometrically from the first
# to the last value over the steps, so that early steps may cross the floor to find where the recognizer is
# weak, and later ones are pulled back under it (Fawkes anneals its DSSIM penalty the same way).
HINGE_WEIGHTS = (1.0, 100.0)


class Attack:
    """Base of the attacks: holds the model, its device and an optional ``cancelled`` check.

    ``cancelled`` (a callable returning True to abandon the run) is polled between optimisation steps, so
    that a cancelled task stops within one step instead of after the whole attack.
    """

    def __init__(self, model: nn.Module, cancelled: Callable[[], bool] | None = None):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.cancelled = cancelled or (lambda: False)

    def _parameters(self) -> dict:
        return {}

    def __repr__(self) -> str:
        items = ", ".join(f"{key}={value!r}" for key, value in self._parameters().items())
        return f"{type(self).__name__}({items})"


@dataclass
class AttackResult:
    """What :meth:`CloakPGD.__call__` returns for B crops carrying G perturbations (G = B unless crops share).

    delta_rgb: (G, 3, H, W) RGB perturbation in [-1, 1] units, |δ| ≤ epsilon × mask everywhere;
    delta_ycbcr: (G, 3, H, W) the optimiser's variable, to warm-start the next keyframe;
    detection_loss: (G,) the objective at the end without the visibility terms (the weighted detection and
        identity losses; lower: better protected);
    steps: the steps actually taken (fewer on early success or cancellation).
    """

    delta_rgb: torch.Tensor
    delta_ycbcr: torch.Tensor
    detection_loss: torch.Tensor
    steps: int


class Groups:
    """Which crops share one perturbation: crop ``i`` carries variable ``index[i]`` (a person's one
    perturbation, optimised over several of their face-aligned frames at once). ``index`` None: each crop
    has its own (the identity mapping, at no cost)."""

    def __init__(self, index: torch.Tensor | None, batch: int):
        self.index = index
        self.count = batch if index is None else int(index.max()) + 1

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """Per-variable (G, …) → per-crop (B, …)."""
        return x if self.index is None else x[self.index]

    def _reduce(self, x: torch.Tensor, how: str) -> torch.Tensor:
        if self.index is None:
            return x
        index = self.index.view(-1, *([1] * (x.dim() - 1))).expand_as(x)
        out = torch.zeros((self.count, *x.shape[1:]), dtype=x.dtype, device=x.device)
        return out.scatter_reduce(0, index, x, reduce=how, include_self=False)

    def min(self, x: torch.Tensor) -> torch.Tensor:
        """Per-crop (B, …) → per-variable (G, …), the smallest over each variable's crops (the caps and the
        floor's shrink: one perturbation must respect every frame it is applied to)."""
        return self._reduce(x, "amin")

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """Per-crop (B, …) → per-variable (G, …), the mean over each variable's crops (its score)."""
        return self._reduce(x, "mean")

    def max(self, x: torch.Tensor) -> torch.Tensor:
        """Per-crop (B, …) → per-variable (G, …), the largest over each variable's crops."""
        return self._reduce(x, "amax")


class CloakPGD(Attack):
    """Projected gradient descent under a perceptual L∞ budget, with expectation over transformations.

    Follows Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks" (ICLR 2018), with
    four departures that trade saturation for invisibility:

    - the variable is the perturbation in YCbCr, projected onto per-pixel caps (:func:`.masks.perceptual_budget`:
      face mask, texture masking, chroma at a fraction of luma), then onto the user's RGB cap
      ``epsilon`` × mask;
    - the step is the gradient normalised by its RMS (not its sign), so pixels move in proportion to how
      much they matter and the cap is rarely reached, plus a perceptual penalty that pulls unused change back;
    - the loss is averaged over ``eot_samples`` random journeys through :class:`.transforms.RandomPipeline`
      (codec, resampling, blur, input diversity), so what survives is what the detectors downstream see;
    - a visibility floor: after every step, a crop whose face-region luma dissimilarity (1 − SSIM,
      :func:`.losses.structural_dissimilarity`) exceeds ``max_dissimilarity`` has its perturbation scaled down
      onto it (for small changes 1 − SSIM grows with the square of the perturbation, so one rescale by
      √(allowed / measured) lands near the floor; up to three more passes absorb where the RGB cap clips), and the returned perturbation
      is the best one seen (lowest detection loss) among those that respected it. The floor, not the L∞
      cap, is what keeps a close-up face from looking mottled: SSIM divides a change by the contrast the
      face already has there.

    Distance measure: L∞ (in the [-1, 1] pixel range).

    Arguments:
        model (MTCNNSurrogate): the white-box surrogate.
        epsilon (float): L∞ cap in the [-1, 1] range (the effective ``epsilon × video_strength``). Default: 0.12.
        steps (int): optimisation steps. Default: 20.
        step_size (float): first step's RMS pixel move as a fraction of ``epsilon``, decayed by a cosine to a
            tenth. Default: 0.6.
        eot_samples (int): random transformations per step. Default: 2.
        loss (CloakLoss): the objective. Default: ``CloakLoss()``.
        transform (nn.Module): the random journey. Default: ``RandomPipeline()``.
        chroma_ratio (float): Cb/Cr caps as a share of the luma cap. Default: 0.3.
        texture_floor (float): luma cap on flat regions as a share of ``epsilon``. Default: 0.35.
        max_dissimilarity (float | None): the visibility floor, the largest 1 − SSIM allowed inside the
            face (pre-codec, luma, 7 × 7 window); None: no floor. Default: None.
        structural (float): weight of the face dissimilarity (divided by ``max_dissimilarity``) in the loss,
            so unused change is pulled back before the floor has to push. Default: 0.3.
        recognizer (nn.Module | None): the face-recognition surrogate, an embedding of
            :mod:`.embedding` (``(images, boxes, poses) → unit vectors``), for the identity term of ``loss``;
            None: detection only. Default: None.
        smooth (int): cell size of the variable in crop pixels: the perturbation is optimised on a grid this
            much coarser and upsampled (bicubic) before it is applied, so that it is made of low spatial
            frequencies — the ones that survive codecs and downscales and transfer between detectors (Guo
            et al., "Low Frequency Adversarial Perturbation", UAI 2019), and that SSIM and VMAF, which look
            at local structure, weigh least. 1: per pixel. Default: 1.
        optimiser (str): ``rms``, the normalised-gradient steps above with the floor as a projection, or
            ``adam``: Adam (lr ``step_size`` / 2, cosine-decayed) on a tanh-bounded variable, the floor a
            squared hinge weighted up from ``HINGE_WEIGHTS[0]`` to ``HINGE_WEIGHTS[1]`` over the steps (needs
            ``max_dissimilarity``); what it returns respects the floor all the same. Default: "rms".
        cancelled (callable | None): polled between steps; True abandons the run. Default: None.

    Shapes:
        images (B, 3, H, W) clean RGB crops in [-1, 1] (H, W multiples of 16); boxes (B, 4) face boxes in crop
        pixels; mask (B, 1, H, W) in [0, 1]; init (G, 3, *:meth:`variable_size`) YCbCr warm start or None;
        groups (B,) long, which of G shared perturbations each crop carries (the frames of one person,
        face-aligned), or None: one perturbation per crop (G = B). The result is per perturbation (G).

    Example::
        attack = CloakPGD(load_surrogate(), epsilon=0.12, steps=20)
        result = attack(crops, boxes, mask)      # crops + result.delta_rgb hides the faces
    """

    def __init__(self, model: MTCNNSurrogate, epsilon: float = 0.12, steps: int = 20, step_size: float = 0.6,
                 eot_samples: int = 2, loss: CloakLoss | None = None, transform: nn.Module | None = None,
                 chroma_ratio: float = 0.3, texture_floor: float = 0.35, max_dissimilarity: float | None = None,
                 structural: float = 0.3, smooth: int = 1, recognizer: nn.Module | None = None,
                 optimiser: str = "rms", cancelled: Callable[[], bool] | None = None):
        super().__init__(model, cancelled)
        if optimiser not in OPTIMISERS:
            raise ValueError(f"optimiser must be one of {', '.join(OPTIMISERS)}, not {optimiser!r}")
        if optimiser == "adam" and max_dissimilarity is None:
            raise ValueError("the adam optimiser needs a visibility floor (max_dissimilarity)")
        self.optimiser = optimiser
        self.recognizer = recognizer
        self.max_dissimilarity, self.structural, self.smooth = max_dissimilarity, structural, max(1, int(smooth))
        self.epsilon, self.steps, self.step_size, self.eot_samples = epsilon, steps, step_size, eot_samples
        self.loss = loss or CloakLoss()
        self.transform = transform or RandomPipeline()
        self.chroma_ratio, self.texture_floor = chroma_ratio, texture_floor
        self._groups = Groups(None, 0)   # set by each call

    def _parameters(self) -> dict:
        return {"epsilon": self.epsilon, "steps": self.steps, "step_size": self.step_size,
                "eot_samples": self.eot_samples, "loss": self.loss, "chroma_ratio": self.chroma_ratio,
                "texture_floor": self.texture_floor, "max_dissimilarity": self.max_dissimilarity,
                "structural": self.structural, "smooth": self.smooth, "optimiser": self.optimiser}

    def variable_size(self, height: int, width: int) -> tuple[int, int]:
        """Height and width of the optimisation variable for crops of ``height`` × ``width``."""
        return max(1, round(height / self.smooth)), max(1, round(width / self.smooth))

    def _full(self, variable: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        """The YCbCr perturbation at crop resolution, inside the per-pixel ``budget``."""
        if variable.shape[-2:] != budget.shape[-2:]:
            variable = F.interpolate(variable, size=budget.shape[-2:], mode="bicubic", align_corners=False)
        return torch.maximum(torch.minimum(variable, budget), -budget)

    def _adversarial(self, images: torch.Tensor, delta: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """The crops with their variables' perturbation (``delta`` and ``cap`` per variable) added."""
        return (images + self._groups.expand(ycbcr_to_rgb(delta).clamp(-cap, cap))).clamp(-1, 1)

    @torch.no_grad()
    def _onto_floor(self, images: torch.Tensor, delta: torch.Tensor, budget: torch.Tensor, cap: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        """Scale each crop's variable ``delta`` down until its face dissimilarity is at most
        ``max_dissimilarity``."""
        if self.max_dissimilarity is None:
            return delta
        for _ in range(4):
            measured = structural_dissimilarity(images, self._adversarial(images, self._full(delta, budget), cap),
                                                mask)
            # 0.98: land just inside the floor, so that rounding to uint8 does not push it back out.
            shrink = (0.98 * self.max_dissimilarity / measured.clamp(min=1e-12)).sqrt().clamp(max=1.0)
            shrink = self._groups.min(shrink)   # a shared perturbation: the tightest of its crops
            if bool((shrink >= 1.0).all()):
                break
            delta = delta * shrink.view(-1, 1, 1, 1)
        return delta

    def _rms(self, images, boxes, mask, budget, cap, coarse, delta, clean_landmarks, identity):
        """Normalised-gradient steps, each projected onto the caps and the visibility floor; returns the best
        variable of each crop, its protection loss and the steps taken."""
        batch, groups = images.shape[0], self._groups
        delta = self._onto_floor(images, delta, budget, cap, mask)
        detection = torch.zeros(groups.count, device=self.device)
        best_delta, best_detection = delta.clone(), torch.full((groups.count,), float("inf"), device=self.device)
        taken = 0
        for step in range(self.steps):
            if self.cancelled():
                break
            delta.requires_grad_(True)
            full = self._full(delta, budget)
            adversarial = self._adversarial(images, full, cap)
            journeys = [self.transform(adversarial, boxes) for _ in range(self.eot_samples)]
            per_crop = self.loss.protection(self.model, self.recognizer, journeys, clean_landmarks, identity, batch)
            total = per_crop + self.loss.penalties(images, adversarial, groups.expand(full), groups.expand(budget),
                                                   mask, self.max_dissimilarity, self.structural)
            detection = groups.mean(per_crop)
            gradient, = torch.autograd.grad(total.sum(), delta)
            with torch.no_grad():
                # ``delta`` respected the floor when it was scored: remember the best one of each perturbation.
                better = detection < best_detection
                best_detection = torch.where(better, detection.detach(), best_detection)
                best_delta = torch.where(better.view(-1, 1, 1, 1), delta.detach(), best_delta)
                rms = gradient.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp(min=1e-12)
                progress = step / max(1, self.steps - 1)
                alpha = self.step_size * self.epsilon * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
                delta = torch.maximum(torch.minimum(delta - alpha * gradient / rms, coarse), -coarse)
                delta = self._onto_floor(images, delta, budget, cap, mask)
            taken += 1
        if not taken:
            return delta.detach(), detection, 0
        return best_delta, best_detection, taken

    def _adam(self, images, boxes, mask, budget, cap, coarse, delta, clean_landmarks, identity):
        """Adam on ``w``, the variable being ``coarse`` × tanh(w) (inside its caps without clipping, so no
        gradient is lost at a cap, as in Carlini & Wagner's change of variables); the visibility floor is a
        squared hinge on the face dissimilarity above it, weighted from ``HINGE_WEIGHTS[0]`` to
        ``HINGE_WEIGHTS[1]``. Returns the best variable of each crop among those scored under the floor and
        the last one scaled onto the floor, its protection loss and the steps."""
        batch, floor, groups = images.shape[0], self.max_dissimilarity, self._groups
        allowed = coarse > 1e-6
        ratio = torch.where(allowed, delta / coarse.clamp(min=1e-6), torch.zeros_like(delta))
        w = torch.atanh(ratio.clamp(-0.995, 0.995)).requires_grad_(True)
        # A cold start's zero is no candidate: scored on one random journey, doing nothing can look better
        # than a small change under a tight floor, and would be returned.
        started = delta.flatten(1).abs().amax(dim=1) > 0
        # Adam moves each coordinate of w by about the learning rate per step (w = 1 is 76 % of the cap): half
        # of ``step_size`` (0.3 at 0.6) beat a quarter of it and all of it on dev keyframes (EVALUATION.md).
        optimiser = torch.optim.Adam([w], lr=self.step_size / 2)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, self.steps),
                                                              eta_min=self.step_size / 20)
        best_delta = torch.zeros_like(delta)
        best_detection = torch.full((groups.count,), float("inf"), device=self.device)
        detection = torch.zeros(groups.count, device=self.device)
        taken = 0
        for step in range(self.steps):
            if self.cancelled():
                break
            current = coarse * torch.tanh(w)
            full = self._full(current, budget)
            adversarial = self._adversarial(images, full, cap)
            journeys = [self.transform(adversarial, boxes) for _ in range(self.eot_samples)]
            per_crop = self.loss.protection(self.model, self.recognizer, journeys, clean_landmarks, identity, batch)
            dissimilarity = structural_dissimilarity(images, adversarial, mask)
            progress = step / max(1, self.steps - 1)
            weight = HINGE_WEIGHTS[0] * (HINGE_WEIGHTS[1] / HINGE_WEIGHTS[0]) ** progress
            total = (per_crop + self.loss.penalties(images, adversarial, groups.expand(full), groups.expand(budget),
                                                    mask, floor, self.structural, dissimilarity=dissimilarity)
                     + weight * torch.relu(dissimilarity / floor - 1) ** 2)
            optimiser.zero_grad()
            total.sum().backward()
            with torch.no_grad():
                # 0.98: the same margin as the projection's, for the rounding to uint8.
                detection = groups.mean(per_crop)
                under = groups.max(dissimilarity) <= 0.98 * floor
                better = (detection < best_detection) & under & (started | (step > 0))
                best_detection = torch.where(better, detection.detach(), best_detection)
                best_delta = torch.where(better.view(-1, 1, 1, 1), current.detach(), best_delta)
            optimiser.step()
            schedule.step()
            taken += 1
        if not taken:
            return self._onto_floor(images, delta, budget, cap, mask), detection, 0
        with torch.no_grad():
            # The last iterate scaled onto the floor, scored once more: where the steps overshot the floor all
            # along, it is the only candidate that has moved at all.
            last = self._onto_floor(images, coarse * torch.tanh(w), budget, cap, mask)
            adversarial = self._adversarial(images, self._full(last, budget), cap)
            journeys = [self.transform(adversarial, boxes) for _ in range(self.eot_samples)]
            scored = groups.mean(self.loss.protection(self.model, self.recognizer, journeys, clean_landmarks,
                                                      identity, batch))
            better = scored < best_detection
            best_delta = torch.where(better.view(-1, 1, 1, 1), last, best_delta)
            best_detection = torch.where(better, scored, best_detection)
        return best_delta, best_detection, taken

    def __call__(self, images: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor,
                 init: torch.Tensor | None = None, identity: IdentityTarget | None = None,
                 groups: torch.Tensor | None = None) -> AttackResult:
        images, boxes, mask = images.to(self.device), boxes.to(self.device), mask.to(self.device)
        if identity is not None:
            if self.recognizer is None:
                raise ValueError("an identity target needs the attack's recognizer")
            identity = IdentityTarget(identity.templates.to(self.device), identity.decoys.to(self.device),
                                      None if identity.poses is None else identity.poses.to(self.device))
        # Read by the steps' helpers for this call (an attack serves one task's frames at a time).
        self._groups = groups = Groups(None if groups is None else groups.to(self.device), images.shape[0])
        # The caps per variable: where crops share one, the tightest of theirs.
        budget = groups.min(perceptual_budget(images, mask, self.epsilon, self.chroma_ratio, self.texture_floor))
        cap = groups.min(self.epsilon * mask)
        with torch.no_grad():
            clean_landmarks = self.model.stage_outputs(images, boxes).landmarks
        # The variable's own caps: the budget on its grid (the exact per-pixel caps apply after upsampling).
        coarse = budget if self.smooth == 1 else F.adaptive_avg_pool2d(budget, self.variable_size(*budget.shape[-2:]))
        delta = torch.zeros_like(coarse) if init is None else torch.maximum(torch.minimum(init.to(coarse), coarse),
                                                                            -coarse)
        descend = self._adam if self.optimiser == "adam" else self._rms
        delta, detection, taken = descend(images, boxes, mask, budget, cap, coarse, delta, clean_landmarks, identity)
        with torch.no_grad():
            delta_rgb = ycbcr_to_rgb(self._full(delta, budget)).clamp(-cap, cap)
        return AttackResult(delta_rgb=delta_rgb, delta_ycbcr=delta.detach(), detection_loss=detection.detach(),
                            steps=taken)
