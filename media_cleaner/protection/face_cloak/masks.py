"""Where the perturbation may go and how large it may be there: face masks and a perceptual budget.

The budget follows what the eye misses (a protection people can see is one they will not publish):

- **luminance over chroma**: the perturbation lives in YCbCr (BT.601, full range); chroma gets a fraction
  of the luma budget, because coloured blotches are what made the sign-gradient probe visible and 4:2:0
  encoding halves the chroma resolution anyway;
- **texture masking**: flat skin shows every change, hair, eyebrows and edges hide them, so the luma budget
  grows with the local standard deviation of the clean luma (contrast masking, as in JPEG's perceptual
  tuning and Watson's DCT model);
- **feathered face masks**: a super-ellipse around the face box with a margin, faded out over a band so the
  perturbation has no visible border; a whole-frame mode switches the mask off.

All tensors are (B, C, H, W) floats; pixel values and budgets are in the [-1, 1] range that ``epsilon`` is measured in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# BT.601 full-range RGB → YCbCr (rows: Y, Cb, Cr), applied to differences, so no offsets.
RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114],
                             [-0.168736, -0.331264, 0.5],
                             [0.5, -0.418688, -0.081312]])
YCBCR_TO_RGB = torch.linalg.inv(RGB_TO_YCBCR)


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB → YCbCr with the same value scale (a linear map; offsets cancel for differences)."""
    return torch.einsum("ij,bjhw->bihw", RGB_TO_YCBCR.to(x), x)


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr`."""
    return torch.einsum("ij,bjhw->bihw", YCBCR_TO_RGB.to(x), x)


def box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over every ``window`` × ``window`` neighbourhood ("valid" positions only) of (B, C, H, W) ``x``,
    from running sums: several times faster on a CPU than ``avg_pool2d`` with stride 1, the same to 1e-6."""
    rows = F.pad(x.cumsum(dim=-1), (1, 0))
    x = rows[..., window:] - rows[..., :-window]
    columns = F.pad(x.cumsum(dim=-2), (0, 0, 1, 0))
    return (columns[..., window:, :] - columns[..., :-window, :]) / (window * window)


def face_mask(height: int, width: int, boxes: torch.Tensor, margin: float = 1.25, feather: float = 0.2,
              power: float = 4.0) -> torch.Tensor:
    """Feathered masks (B, 1, H, W) in [0, 1], one per box (B, 4) given in the image's pixels.

    The mask is 1 inside a super-ellipse ``|u|^power + |v|^power ≤ 1`` whose half-axes are ``margin`` × the
    box's half-size (power 4 is a rounded square: it covers forehead and jaw, which an ellipse cuts), and
    falls smoothly (a cosine ramp) to 0 over ``feather`` of the radius outside it.
    """
    ys = torch.arange(height, dtype=torch.float32, device=boxes.device)[None, :, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32, device=boxes.device)[None, None, :] + 0.5
    cx = ((boxes[:, 0] + boxes[:, 2]) / 2)[:, None, None]
    cy = ((boxes[:, 1] + boxes[:, 3]) / 2)[:, None, None]
    ax = ((boxes[:, 2] - boxes[:, 0]) / 2 * margin).clamp(min=1)[:, None, None]
    ay = ((boxes[:, 3] - boxes[:, 1]) / 2 * margin).clamp(min=1)[:, None, None]
    radius = ((xs - cx).abs() / ax) ** power + ((ys - cy).abs() / ay) ** power
    radius = radius ** (1 / power)                           # 1 on the super-ellipse's outline
    ramp = ((radius - 1) / feather).clamp(0, 1)
    return (0.5 + 0.5 * torch.cos(torch.pi * ramp))[:, None]


def texture_weight(images: torch.Tensor, window: int = 9, floor: float = 0.35,
                   reference_std: float = 0.08) -> torch.Tensor:
    """Contrast-masking weight (B, 1, H, W) in [floor, 1] from the local luma standard deviation.

    ``reference_std`` (in the [-1, 1] range; 0.08 ≈ 5 of 255 levels) is the local deviation at which the
    full budget is allowed; flat regions keep ``floor`` of it. ``window`` is the odd side of the square
    neighbourhood in pixels.
    """
    luma = rgb_to_ycbcr(images)[:, :1]
    pad = window // 2
    padded = F.pad(luma, (pad, pad, pad, pad), mode="replicate")
    mean, mean_sq = box_mean(torch.cat([padded, padded * padded], dim=1), window).split(1, dim=1)
    std = (mean_sq - mean * mean).clamp(min=0).sqrt()
    return floor + (1 - floor) * (std / reference_std).clamp(0, 1)


def perceptual_budget(images: torch.Tensor, mask: torch.Tensor, epsilon: float, chroma_ratio: float = 0.3,
                      texture_floor: float = 0.35) -> torch.Tensor:
    """Per-pixel caps (B, 3, H, W) for the Y, Cb, Cr parts of the perturbation, all ≤ ``epsilon``.

    ``images`` (B, 3, H, W) are the clean crops in [-1, 1]; ``mask`` (B, 1, H, W) the face masks (ones in
    whole-frame mode); ``epsilon`` the L∞ cap in the [-1, 1] range; ``chroma_ratio`` the share of the cap
    Cb and Cr may use. The RGB perturbation is clamped to ``epsilon`` × mask afterwards as well, so the
    user's cap holds exactly whatever these caps add up to.
    """
    luma = epsilon * mask * texture_weight(images, floor=texture_floor)
    chroma = epsilon * chroma_ratio * mask
    return torch.cat([luma, chroma, chroma], dim=1)
