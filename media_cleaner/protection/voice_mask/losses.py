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
class TimbreShift:
    """Move the voice's average spectral envelope: an architecture-agnostic term beside the encoder's own.

    Every speaker model pools statistics of a spectral-envelope feature over time (mel bands, MFCCs), so a
    consistent shift of the mean log-mel spectrum of the speech moves them all a little, whatever their
    network. The term costs ``weight · max(0, target_db − rms(mean log-mel difference))``: the shift, in dB
    averaged over the bands, is pushed up to ``target_db`` and no further.

    Arguments:
        target_db (float): rms shift of the speech's mean log-mel spectrum to reach. Default: 1.5.
        weight (float): relative to the embedding loss (a cosine), per dB. Default: 0.2.

    Shape:
        mel, clean_mel: mel power (frames, bands); speech: (frames,) 0/1. Returns a scalar.
    """

    target_db: float = 1.5
    weight: float = 0.2

    def shift_db(self, mel: torch.Tensor, clean_mel: torch.Tensor, speech: torch.Tensor) -> torch.Tensor:
        frames = min(mel.shape[0], clean_mel.shape[0], speech.shape[0])
        weights = speech[:frames] / speech[:frames].sum().clamp_min(1.0)
        log_mel = 10 * torch.log10(mel[:frames] + 1e-10)
        clean_log = 10 * torch.log10(clean_mel[:frames] + 1e-10)
        difference = (weights[:, None] * (log_mel - clean_log)).sum(0)
        return torch.sqrt((difference ** 2).mean() + 1e-12)

    def __call__(self, mel: torch.Tensor, clean_mel: torch.Tensor, speech: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.relu(self.target_db - self.shift_db(mel, clean_mel, speech))


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


class EnvelopeGuard(torch.nn.Module):
    """Keep speech intelligible: a differentiable stand-in for STOI (Taal et al., "An Algorithm for
    Intelligibility Prediction of Time–Frequency Weighted Noisy Speech", IEEE TASLP 2011), hinged.

    STOI correlates the clean and processed *envelopes* of 15 one-third-octave bands (150 Hz up, centres
    150·2^(k/3) Hz) over 384 ms windows; a perturbation that is small per bin can still reshape those
    envelopes where the band is weak. This guard computes the same correlation on the front end's STFT grid
    (10 ms hop: 38-frame windows, every ``stride`` frames, without STOI's clipping) and costs
    ``weight · max(0, target − mean correlation)``, so it only acts once intelligibility is at stake.

    Arguments:
        target (float): mean envelope correlation to keep (STOI proper reads about 0.01 lower). Default 0.98.
        weight (float): relative to the embedding loss (a cosine). Default: 10.
        stride (int): frames between windows. Default: 8.

    Shape:
        clean, protected: complex STFTs (201, frames) from :func:`~.frontend.stft`; speech: (frames,) 0/1,
        the frames that count (STOI drops frames 40 dB under the loudest). Returns a scalar.
    """

    WINDOW = 38   # frames of 10 ms: STOI's 30 frames of 12.8 ms

    def __init__(self, target: float = 0.98, weight: float = 10.0, stride: int = 8):
        super().__init__()
        from media_cleaner.protection.voice_mask.frontend import N_FFT, SAMPLE_RATE
        self.target, self.weight, self.stride = target, weight, stride
        freqs = torch.arange(N_FFT // 2 + 1) * SAMPLE_RATE / N_FFT
        centres = 150.0 * 2 ** (torch.arange(15) / 3)
        bands = ((freqs[None, :] >= centres[:, None] * 2 ** (-1 / 6))
                 & (freqs[None, :] < centres[:, None] * 2 ** (1 / 6))).float()
        # The lowest bands are narrower than one 40 Hz bin: give each at least its nearest bin.
        nearest = (freqs[None, :] - centres[:, None]).abs().argmin(dim=1)
        bands[torch.arange(15), nearest] = 1.0
        self.register_buffer("bands", bands)

    def correlation(self, clean: torch.Tensor, protected: torch.Tensor, speech: torch.Tensor) -> torch.Tensor:
        """Mean band-envelope correlation over windows that are mostly speech (1.0 when there are none)."""
        bands = self.bands.to(clean.device)
        envelopes = [torch.sqrt(bands @ (spectrum.abs() ** 2) + 1e-12) for spectrum in (clean, protected)]
        if clean.shape[-1] < self.WINDOW:
            return torch.ones((), device=clean.device)
        windows = [env.unfold(-1, self.WINDOW, self.stride) for env in envelopes]   # (15, windows, 38)
        keep = speech.unfold(0, self.WINDOW, self.stride).mean(-1) > 0.5
        if not torch.any(keep):
            return torch.ones((), device=clean.device)
        a, b = (w[:, keep] - w[:, keep].mean(-1, keepdim=True) for w in windows)
        corr = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)
        return corr.mean()

    def forward(self, clean: torch.Tensor, protected: torch.Tensor, speech: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.relu(self.target - self.correlation(clean, protected, speech))
