"""Speaker similarity with the Resemblyzer encoder (the voice mask's surrogate, so a white-box figure).

Two voices match when the cosine similarity of their utterance embeddings (Resemblyzer's full
``preprocess_wav`` + ``embed_utterance``) is at or above :data:`MATCH_THRESHOLD`, the equal-error
threshold on clean development speech. It was measured with::

    .venv/bin/python -m media_cleaner voice-threshold ../shared/media/dev/speech

on 2026-11-27: threshold 0.7235, EER 0.36 % (64 utterances of 10 speakers; 270 same-speaker pairs,
mean 0.872; 1746 different-speaker pairs, mean 0.527; about 4 minutes on 2 busy cores). A first probe
found 0.7232 on 16 clips of the same speakers. Re-measure when the encoder or the preprocessing changes,
and update this constant.
"""
from __future__ import annotations

import functools
import importlib.util
import itertools
import threading
from pathlib import Path

import numpy as np

from . import EvaluationError
from .judges import INSTALL_HINT
from .media import read_audio

MATCH_THRESHOLD = 0.7235
RATE = 16000   # Resemblyzer's sampling rate
SPEECH_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac"}


class SpeakerEncoder:
    """Resemblyzer's GE2E speaker encoder on the CPU (its weights ship inside the package)."""

    def __init__(self, device: str = "cpu") -> None:
        if importlib.util.find_spec("resemblyzer") is None:
            raise EvaluationError(f"the resemblyzer package is missing; {INSTALL_HINT}")
        import resemblyzer
        self._resemblyzer = resemblyzer
        self._encoder = resemblyzer.VoiceEncoder(device, verbose=False)
        self._lock = threading.Lock()

    def embed(self, samples: np.ndarray, rate: int = RATE) -> np.ndarray | None:
        """The unit-length embedding of an utterance; None when it holds too little speech to embed."""
        wav = self._resemblyzer.preprocess_wav(samples.astype(np.float32), source_sr=rate)
        # embed_utterance needs at least one 1.6 s partial window of voiced audio.
        if len(wav) < int(1.6 * RATE):
            return None
        with self._lock:
            return self._encoder.embed_utterance(wav)


@functools.cache
def encoder() -> SpeakerEncoder:
    return SpeakerEncoder()


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (Resemblyzer's are unit length already; normalised anyway)."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def speech_files(folder: str | Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in SPEECH_SUFFIXES)


def embed_file(path: Path, ffmpeg: str | None = None) -> np.ndarray | None:
    samples = read_audio(path, RATE, ffmpeg)
    return None if samples is None else encoder().embed(samples)


def enrollment_embeddings(folder: str | Path, ffmpeg: str | None = None) -> list[np.ndarray]:
    """Embeddings of the clean reference utterances of one speaker (files in ``folder``, recursively)."""
    files = speech_files(folder)
    if not files:
        raise EvaluationError(f"{folder} holds no speech files ({', '.join(sorted(SPEECH_SUFFIXES))}).")
    embeddings = [e for e in (embed_file(f, ffmpeg) for f in files) if e is not None]
    if not embeddings:
        raise EvaluationError(f"no file in {folder} has enough speech to embed (1.6 s at least).")
    return embeddings


def equal_error_threshold(same: list[float], different: list[float]) -> tuple[float, float]:
    """(threshold, EER): the similarity at which false rejections of same-speaker pairs equal false
    acceptances of different-speaker pairs; the threshold is midway between the two scores that bracket it."""
    same_scores, diff_scores = np.sort(same), np.sort(different)
    candidates = np.unique(np.concatenate([same_scores, diff_scores]))
    best = None
    for low, high in zip(candidates[:-1], candidates[1:]):
        threshold = (low + high) / 2
        false_reject = np.mean(same_scores < threshold)
        false_accept = np.mean(diff_scores >= threshold)
        gap = abs(false_reject - false_accept)
        if best is None or gap < best[0]:
            best = (gap, threshold, (false_reject + false_accept) / 2)
    if best is None:
        raise EvaluationError("the equal-error threshold needs at least two different scores")
    return float(best[1]), float(best[2])


def measure_threshold(folder: str | Path, ffmpeg: str | None = None) -> dict:
    """The equal-error threshold on ``folder``/<speaker>/<utterances>: every pair of utterances is scored,
    pairs in the same sub-folder are same-speaker pairs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder} is not a folder of speaker sub-folders.")
    embedded = []
    for path in speech_files(folder):
        embedding = embed_file(path, ffmpeg)
        if embedding is not None:
            embedded.append((path.parent, embedding))
    same, different = [], []
    for (speaker_a, a), (speaker_b, b) in itertools.combinations(embedded, 2):
        (same if speaker_a == speaker_b else different).append(similarity(a, b))
    if not same or not different:
        raise EvaluationError(f"{folder} needs several speakers and at least one with two utterances.")
    threshold, eer = equal_error_threshold(same, different)
    return {"threshold": round(threshold, 4), "eer": eer, "utterances": len(embedded),
            "speakers": len({speaker for speaker, _ in embedded}), "same_pairs": len(same),
            "different_pairs": len(different), "same_mean": float(np.mean(same)),
            "different_mean": float(np.mean(different))}
