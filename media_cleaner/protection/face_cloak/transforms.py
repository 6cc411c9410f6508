"""Differentiable models of what happens to a frame after the cloak, sampled for expectation over
transformations (EOT; Athalye et al., "Synthesizing Robust Adversarial Examples", ICML 2018) and input
diversity (Xie et al., "Improving Transferability of Adversarial Examples with Input Diversity", CVPR 2019).

What a perturbation meets on its way to a face harvester: our own H.264 encode (CRF 17, 4:2:0), a platform's
re-encode after downscaling to 720 or 480 lines (CRF 28), players' and scrapers' resampling, and every
detector's own pyramid. Each piece here is a small module mapping ``(images, boxes)`` to ``(images, boxes)``:
images (B, 3, H, W) RGB in [-1, 1], boxes (B, 4) in their pixels (moved when the geometry changes). Every
call draws fresh random parameters.
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from media_cleaner.protection.face_cloak.masks import rgb_to_ycbcr, ycbcr_to_rgb

# JPEG's (ITU-T T.81 Annex K) quantisation tables: a good stand-in for how a block codec spends bits
# over spatial frequencies, the property that matters here (H.264's 4×4/8×8 integer transforms with
# CRF quantisers discard high frequencies the same way).
_LUMA_TABLE = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)
_CHROMA_TABLE = torch.full((8, 8), 99.0)
_CHROMA_TABLE[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]])


def _dct_matrix(n: int = 8) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float32)[:, None]
    i = torch.arange(n, dtype=torch.float32)[None, :]
    matrix = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    matrix[0] /= math.sqrt(2)
    return matrix


_DCT = _dct_matrix()


def soft_round(x: torch.Tensor) -> torch.Tensor:
    """Rounding with a useful gradient: round(x) + (x − round(x))³ (Shin & Song, "JPEG-resistant
    Adversarial Images", NIPS 2017 workshop)."""
    rounded = torch.round(x)
    return rounded + (x - rounded) ** 3


class BlockCodec(nn.Module):
    """H.264/JPEG-like lossy coding: 4:2:0 chroma, 8×8 block DCT, quantisation at a random quality.

    Arguments:
        quality (tuple[float, float]): JPEG-style quality range drawn from (100 = nearly lossless).
            Default: (55, 95) — about CRF 28 at the low end and CRF 17 at the high end for talking heads.

    Height and width must be multiples of 16.
    """

    def __init__(self, quality: tuple[float, float] = (55.0, 95.0)):
        super().__init__()
        self.quality = quality

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quality = random.uniform(*self.quality)
        scale = (5000 / quality if quality < 50 else 200 - 2 * quality) / 100
        ycc = rgb_to_ycbcr(images) * 127.5                       # in levels of 255, like the codec
        luma, chroma = ycc[:, :1], ycc[:, 1:]
        chroma = F.interpolate(F.avg_pool2d(chroma, 2), scale_factor=2, mode="bilinear", align_corners=False)
        luma = self._quantise(luma, (_LUMA_TABLE * scale).clamp(min=1))
        chroma = self._quantise(chroma, (_CHROMA_TABLE * scale).clamp(min=1))
        return ycbcr_to_rgb(torch.cat([luma, chroma], dim=1) / 127.5), boxes

    @staticmethod
    def _quantise(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        dct, table = _DCT.to(x), table.to(x)
        blocks = x.reshape(batch, channels, height // 8, 8, width // 8, 8).permute(0, 1, 2, 4, 3, 5)
        coefficients = dct @ blocks @ dct.T
        coefficients = soft_round(coefficients / table) * table
        blocks = dct.T @ coefficients @ dct
        return blocks.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, height, width)


class Resample(nn.Module):
    """Downscale by a random factor and back (what a 720p/480p re-encode or a detector's pyramid loses).

    Arguments:
        factors (tuple[float, float]): range of the downscale factor. Default: (0.75, 1.0) — the attack crop
            already shows the face at about the size detectors see it (``CloakConfig.crop_face_px``), and a
            platform's 720p/480p downscale of a larger frame rarely takes it below that; harsher ranges only
            push the perturbation to low frequencies, the ones the eye sees as blotches.
    """

    def __init__(self, factors: tuple[float, float] = (0.75, 1.0)):
        super().__init__()
        self.factors = factors

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor = random.uniform(*self.factors)
        height, width = images.shape[-2:]
        small = F.interpolate(images, size=(max(12, round(height * factor)), max(12, round(width * factor))),
                              mode="bilinear", antialias=True, align_corners=False)
        return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False), boxes


class GaussianBlur(nn.Module):
    """Slight blur with a random standard deviation (deblocking filters, scalers, soft players).

    Arguments:
        sigmas (tuple[float, float]): range of the standard deviation in pixels. Default: (0.3, 0.7) (deblocking
            and scalers blur less than a pixel; more would again favour visible low frequencies).
    """

    def __init__(self, sigmas: tuple[float, float] = (0.3, 0.7)):
        super().__init__()
        self.sigmas = sigmas

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = random.uniform(*self.sigmas)
        radius = max(1, math.ceil(2 * sigma))
        taps = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
        kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
        kernel = kernel / kernel.sum()
        channels = images.shape[1]
        x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
        x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
        x = F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
        return x, boxes


class InputDiversity(nn.Module):
    """Random shrink and placement inside the same canvas (Xie et al. 2019), boxes moved along.

    Arguments:
        shrink (tuple[float, float]): range of the scale factor. Default: (0.85, 1.0).
    """

    def __init__(self, shrink: tuple[float, float] = (0.85, 1.0)):
        super().__init__()
        self.shrink = shrink

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor = random.uniform(*self.shrink)
        height, width = images.shape[-2:]
        new_h, new_w = max(12, round(height * factor)), max(12, round(width * factor))
        top, left = random.randint(0, height - new_h), random.randint(0, width - new_w)
        small = F.interpolate(images, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        # Replicate padding: a grey border would be a strong, unnatural edge for the detectors.
        canvas = F.pad(small, (left, width - new_w - left, top, height - new_h - top), mode="replicate")
        scale = torch.tensor([new_w / width, new_h / height, new_w / width, new_h / height]).to(boxes)
        shift = torch.tensor([left, top, left, top]).to(boxes)
        return canvas, boxes * scale + shift


class RandomPipeline(nn.Module):
    """One random journey of a frame: optional diversity, resampling and blur, then the block codec.

    Arguments:
        p_diversity, p_resample, p_blur (float): probability of each optional step. Defaults: 0.5, 0.5, 0.3.
        codec (BlockCodec | bool): the final lossy coding; True: ``BlockCodec()``, False: none. Default: True.
    """

    def __init__(self, p_diversity: float = 0.5, p_resample: float = 0.5, p_blur: float = 0.3,
                 codec: BlockCodec | bool = True):
        super().__init__()
        self.steps = [(p_diversity, InputDiversity()), (p_resample, Resample()), (p_blur, GaussianBlur())]
        self.codec = BlockCodec() if codec is True else codec or None

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for probability, step in self.steps:
            if random.random() < probability:
                images, boxes = step(images, boxes)
        if self.codec is not None:
            images, boxes = self.codec(images, boxes)
        return images.clamp(-1, 1), boxes
