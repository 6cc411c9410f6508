"""What the cloak minimises: small named loss terms over :class:`~.surrogate.StageOutputs`.

Each term returns a (B,) tensor, one value per crop, so the attack can weigh, average and stop per face.

- :func:`pnet_loss` — P-Net's face logits at every pyramid scale that sees the face: with no P-Net
  candidate, the later stages never run (the attack of Kaziakhmedov et al., "Real-world attack on MTCNN
  face detection system", SIBIRCON 2019, and of Zhang et al.'s Adversarial-Face work, targets this stage);
- :func:`acceptance_loss` — R-Net / O-Net logits on the face box and jittered boxes;
- :func:`landmark_loss` — O-Net's landmarks pushed away from the clean ones (a harvester aligns faces by
  them, and moving them disturbs the feature that all detectors share: where eyes, nose and mouth are);
- :func:`perceptual_penalty` — the perturbation's energy relative to its perceptual budget, so the
  optimiser spends only as much of the cap as it needs;
- :func:`structural_dissimilarity` — 1 − SSIM of the luma inside the face mask (Wang et al., "Image Quality
  Assessment: From Error Visibility to Structural Similarity", IEEE TIP 2004). SSIM divides a change by the
  local contrast already there, so it is a contrast-masking model of visibility, and it is the figure the
  face-region target is stated in; the attack both penalises it and projects onto a floor of it.

Logits are hinged at ``-margin`` (Carlini & Wagner's confidence κ): a score already far below the
decision threshold stops pulling, and pushing each score well past the threshold is what transfers to
detectors we never see.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dataclasses import dataclass

from media_cleaner.protection.face_cloak.masks import box_mean, rgb_to_ycbcr
from media_cleaner.protection.face_cloak.surrogate import StageOutputs

# How far the identity term's chip box moves and grows at random, as a share of the face's side.
ALIGNMENT_JITTER = 0.05


def _soft_max(values: torch.Tensor, temperature: float) -> torch.Tensor:
    """Smooth maximum over the last dimension: τ·log mean exp(x/τ) (≥ the mean, → the max as τ → 0)."""
    count = torch.tensor(float(values.shape[-1]), device=values.device)
    return temperature * (torch.logsumexp(values / temperature, dim=-1) - torch.log(count))


def pnet_loss(outputs: StageOutputs, margin: float = 3.0, temperature: float = 1.0) -> torch.Tensor:
    """Mean over scales of the smooth maximum of hinged P-Net face logits over the crop; (B,)."""
    terms = [_soft_max(torch.relu(logits + margin).flatten(1), temperature) for logits in outputs.pnet_logits]
    return torch.stack(terms, dim=0).mean(dim=0)


def acceptance_loss(outputs: StageOutputs, margin: float = 3.0) -> torch.Tensor:
    """Mean hinged R-Net and O-Net face logits over the jittered boxes; (B,)."""
    return (torch.relu(outputs.rnet_logits + margin).mean(dim=1)
            + torch.relu(outputs.onet_logits + margin).mean(dim=1)) / 2


def landmark_loss(outputs: StageOutputs, clean_landmarks: torch.Tensor, reach: float = 0.15) -> torch.Tensor:
    """Negative landmark displacement from ``clean_landmarks`` (B, K, 10), saturating at ``reach`` (box
    fractions) per coordinate so that one landmark thrown far cannot dominate; (B,)."""
    displacement = (outputs.landmarks - clean_landmarks).abs().clamp(max=reach)
    return -displacement.mean(dim=(1, 2)) / reach


def perceptual_penalty(delta: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Mean of (δ / budget)² over the pixels the budget allows (YCbCr δ and budget (B, 3, H, W)); (B,).

    0 for no change, 1 when every allowed pixel sits on its cap — a sign-gradient attack's 1.
    """
    allowed = budget > 1e-6
    ratio = torch.where(allowed, delta / budget.clamp(min=1e-6), torch.zeros_like(delta))
    return (ratio ** 2).sum(dim=(1, 2, 3)) / allowed.sum(dim=(1, 2, 3)).clamp(min=1)


# SSIM's stabilising constants (K1, K2 of Wang et al. 2004) and scikit-image's default 7 × 7 uniform window,
# the window the evaluation's face SSIM uses, so that the optimiser and the judge measure the same thing.
_SSIM_K1, _SSIM_K2, SSIM_WINDOW = 0.01, 0.03, 7


def ssim_map(reference: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM (B, C, H, W) of two (B, C, H, W) images in the [-1, 1] range, with a 7 × 7 uniform
    window (reflect-padded, sample covariance, as scikit-image's ``structural_similarity`` on 8-bit planes).

    SSIM's luminance term is not shift-invariant, so the planes are first mapped to [0, 1] (what 0–255
    levels are to the judge; for Cb/Cr the 128 offset of 8-bit video)."""
    reference, changed = (reference + 1) / 2, (changed + 1) / 2
    data_range = 1.0
    pad = SSIM_WINDOW // 2
    count = SSIM_WINDOW * SSIM_WINDOW

    # The five local means in one pass over stacked planes: SSIM runs several times per attack step.
    channels = reference.shape[1]
    stacked = torch.cat([reference, changed, reference * reference, changed * changed, reference * changed], dim=1)
    means = box_mean(F.pad(stacked, (pad, pad, pad, pad), mode="reflect"), SSIM_WINDOW)
    mu_x, mu_y, mean_xx, mean_yy, mean_xy = means.split(channels, dim=1)
    unbias = count / (count - 1)
    var_x = (mean_xx - mu_x * mu_x) * unbias
    var_y = (mean_yy - mu_y * mu_y) * unbias
    cov = (mean_xy - mu_x * mu_y) * unbias
    c1, c2 = (_SSIM_K1 * data_range) ** 2, (_SSIM_K2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))


def structural_dissimilarity(images: torch.Tensor, adversarial: torch.Tensor, mask: torch.Tensor,
                             chroma: float = 1.0) -> torch.Tensor:
    """1 − SSIM averaged over the face (the pixels where ``mask`` (B, 1, H, W) > 0.5), summed over Y, Cb and
    Cr with ``chroma`` weighting the two chroma planes; RGB images (B, 3, H, W) in [-1, 1]; returns (B,).

    0 for no change; about 0.1 in luma is where a close-up face starts to look mottled. Chroma counts
    because a luma-only measure lets the optimiser move its effort into colour, where skin is flat and a
    smooth pink or green patch is the first thing the eye sees (the evaluation's SSIM and VMAF are luma-only
    and would not notice).
    """
    reference, changed = rgb_to_ycbcr(images), rgb_to_ycbcr(adversarial)
    weights = (mask > 0.5).to(images.dtype)     # the face box the judge scores, not the feathered fringe
    per_plane = ((1 - ssim_map(reference, changed)) * weights).sum(dim=(2, 3)) \
        / weights.sum(dim=(1, 2, 3)).clamp(min=1)[:, None]
    return per_plane[:, 0] + chroma * per_plane[:, 1:].sum(dim=1)


def identity_loss(embeddings: torch.Tensor, templates: torch.Tensor, decoys: torch.Tensor) -> torch.Tensor:
    """Away from the person's own clean identity, toward their decoy: cos(e, template) − cos(e, decoy), (B,).
    A decoy that is the same in every frame survives averaging over frames and best-frame selection, where
    pushes in random directions would cancel (TIP-IM, Fawkes)."""
    return (embeddings * templates).sum(dim=1) - (embeddings * decoys).sum(dim=1)


@dataclass
class IdentityTarget:
    """Where each crop's identity should go: (B, D) unit embeddings of the person's clean template and of
    their decoy (the same decoy for a person in every frame), and (B, 4) chip poses for recognizers that
    align faces by their landmarks (:func:`.embedding.posed_chips`; None: box chips)."""

    templates: torch.Tensor
    decoys: torch.Tensor
    poses: torch.Tensor | None = None


class CloakLoss:
    """The objective: every term the attack minimises, weighted, per crop. A new term is a new function
    above and one line here; the attack only asks for :meth:`protection` and :meth:`penalties`.

    Arguments:
        detect (float): weight of the detection terms together. Default: 1.0.
        identity (float): weight of :func:`identity_loss` (needs a recognizer in the attack). Default: 0.0.
        pnet (float): weight of :func:`pnet_loss`. Default: 1.0.
        acceptance (float): weight of :func:`acceptance_loss`. Default: 1.0.
        landmarks (float): weight of :func:`landmark_loss`. Default: 0.5.
        perceptual (float): weight of :func:`perceptual_penalty`. Default: 0.3.
        margin (float): logit hinge κ for the detection terms. Default: 3.0 (p(face) ≈ 0.05).
    """

    def __init__(self, pnet: float = 1.0, acceptance: float = 1.0, landmarks: float = 0.5,
                 perceptual: float = 0.3, margin: float = 3.0, detect: float = 1.0, identity: float = 0.0):
        self.pnet, self.acceptance, self.landmarks, self.perceptual = pnet, acceptance, landmarks, perceptual
        self.margin, self.detect, self.identity = margin, detect, identity

    def detection(self, outputs: StageOutputs, clean_landmarks: torch.Tensor) -> torch.Tensor:
        """The terms that make the face undetectable (without the perceptual penalty); (B,)."""
        return (self.pnet * pnet_loss(outputs, self.margin)
                + self.acceptance * acceptance_loss(outputs, self.margin)
                + self.landmarks * landmark_loss(outputs, clean_landmarks))

    def protection(self, detector, recognizer, journeys, clean_landmarks: torch.Tensor,
                   identity: IdentityTarget | None, batch: int) -> torch.Tensor:
        """What protects the face, averaged over the journeys (``[(images, boxes), …]``, the adversarial
        crops through random transformations): the detection terms on ``detector``'s stages and the identity
        term on ``recognizer``'s embedding; (B,). The attack keeps each crop's best perturbation by it."""
        images = torch.cat([image for image, _ in journeys])
        boxes = torch.cat([box for _, box in journeys])
        samples = len(journeys)
        total = torch.zeros(batch, device=images.device)
        if self.detect > 0:
            outputs = detector.stage_outputs(images, boxes)
            per_sample = self.detection(outputs, clean_landmarks.repeat(samples, 1, 1))
            total = total + self.detect * per_sample.view(samples, batch).mean(dim=0)
        if identity is not None and self.identity > 0:
            # Alignment jitter: a scraper's detector puts the box a little elsewhere than ours.
            side = (boxes[:, 2:] - boxes[:, :2]).max(dim=1, keepdim=True).values
            shift = (torch.rand_like(boxes[:, :2]) * 2 - 1) * ALIGNMENT_JITTER * side
            grow = (torch.rand_like(side) * 2 - 1) * ALIGNMENT_JITTER * side
            jittered = torch.cat([boxes[:, :2] + shift - grow, boxes[:, 2:] + shift + grow], dim=1)
            poses = None if identity.poses is None else identity.poses.repeat(samples, 1)
            embeddings = recognizer(images, jittered, poses)
            per_sample = identity_loss(embeddings, identity.templates.repeat(samples, 1),
                                       identity.decoys.repeat(samples, 1))
            total = total + self.identity * per_sample.view(samples, batch).mean(dim=0)
        return total

    def penalties(self, images: torch.Tensor, adversarial: torch.Tensor, delta: torch.Tensor,
                  budget: torch.Tensor, mask: torch.Tensor, max_dissimilarity: float | None,
                  structural: float, dissimilarity: torch.Tensor | None = None) -> torch.Tensor:
        """What the perturbation costs the viewer: its energy against the perceptual budget and, with a
        visibility floor, the face's dissimilarity as a share of it (weight ``structural``; ``dissimilarity``:
        already measured, :func:`structural_dissimilarity`); (B,)."""
        total = self.perceptual * perceptual_penalty(delta, budget)
        if max_dissimilarity is not None and structural > 0:
            if dissimilarity is None:
                dissimilarity = structural_dissimilarity(images, adversarial, mask)
            total = total + structural * dissimilarity / max_dissimilarity
        return total

    def __repr__(self) -> str:
        return (f"CloakLoss(detect={self.detect}, identity={self.identity}, pnet={self.pnet}, "
                f"acceptance={self.acceptance}, landmarks={self.landmarks}, perceptual={self.perceptual}, "
                f"margin={self.margin})")
