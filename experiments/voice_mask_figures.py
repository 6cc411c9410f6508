"""Measure the voice mask per level on development speech: EVALUATION.md's "Against its own surrogate" table.

For each clip and level: protect it with :class:`~media_cleaner.protection.voice_mask.VoiceMask` at the clip's own rate and
channels (10 s chunks, as the pipeline feeds them), take the result through an AAC 128 kbit/s round trip with
the service's ffmpeg, and score it the way a voice cloner would see it: Resemblyzer's full ``preprocess_wav``
+ ``embed_utterance``, cosine similarity to the clean same utterance and (LibriSpeech speakers) to an
enrollment made of other clean utterances of the same speaker; a clip is protected when the similarity is
under the match threshold (0.7232, the equal-error point on clean dev speech, see media_cleaner/evaluation/voice.py). Quality: PESQ-WB and
STOI at 16 kHz after AAC, SNR of the perturbation (before AAC), and the signal-to-perturbation ratio inside
the clean signal's quiet stretches (20 ms frames more than 40 dB under the loudest frame). Speed: seconds of
compute per second of audio, and the same time in units of one clean encoder pass over the same audio
measured right before it (a ratio that cancels the machine's load, which other jobs share).

    .venv/bin/python -m experiments.voice_mask_figures --levels weak medium strong [--png spectrograms.png]

For tuning, ``--subset K`` keeps K clips spread over the list, and ``--define NAME:margin_db=10,floor=0.6``
measures a custom :class:`~media_cleaner.protection.voice_mask.MaskLevel` (fields default to those of ``NAME`` when
it is a shipped level).

The media are read from ``--media`` (default ``../shared/media/dev``, the development media: talking-head
clips, face photos, speech of 10 speakers) and never copied. That folder is outside this repository, beside
the checkout, and never committed: its rights stay with its owners, so a fresh clone has none. Any folder laid out the same way
works: ``speech/<speaker>/<utterances>`` and ``videos/*.mp4``.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

from media_cleaner.media.ffmpeg import find_ffmpeg  # noqa: E402
from media_cleaner.protection.seams import AudioStreamInfo  # noqa: E402
from media_cleaner.protection.voice_mask import LEVELS, MaskLevel, VoiceMask  # noqa: E402

MATCH_THRESHOLD = 0.7232
CHUNK_SECONDS = 10   # as media_cleaner.media.pipeline.AUDIO_CHUNK_SECONDS


def ffmpeg_pcm(args: list[str], pcm: np.ndarray | None, channels: int) -> np.ndarray:
    result = subprocess.run([find_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", *args],
                            input=None if pcm is None else np.ascontiguousarray(pcm, np.float32).tobytes(),
                            capture_output=True, check=True)
    return np.frombuffer(result.stdout, dtype=np.float32).reshape(-1, channels).copy()


def load(path: Path) -> tuple[np.ndarray, int]:
    """Float32 samples × channels at the file's own rate (video soundtracks through ffmpeg)."""
    if path.suffix in (".wav", ".flac"):
        import soundfile
        pcm, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return pcm, rate
    from media_cleaner.media.probe import probe_media
    info = probe_media(path)
    return ffmpeg_pcm(["-i", str(path), "-map", "0:a:0", "-f", "f32le", "-"], None, info.channels), info.sample_rate


def aac_round_trip(pcm: np.ndarray, rate: int, scratch: Path) -> np.ndarray:
    encoded = scratch / "round_trip.m4a"
    raw = ["-f", "f32le", "-ar", str(rate), "-ac", str(pcm.shape[1])]
    ffmpeg_pcm(["-y", *raw, "-i", "-", "-c:a", "aac", "-b:a", "128k", str(encoded)], pcm, pcm.shape[1])
    decoded = ffmpeg_pcm(["-i", str(encoded), "-f", "f32le", "-"], None, pcm.shape[1])
    out = np.zeros_like(pcm)
    out[:min(len(out), len(decoded))] = decoded[:len(out)]
    return out


def clips(media: Path, per_speaker: int, enroll: int, max_seconds: float) -> list[dict]:
    """Development clips: LibriSpeech utterances (with an enrollment of other utterances), the radio
    speakers' clips and the videos' soundtracks, each cut to ``max_seconds``."""
    found = []
    for speaker in sorted((media / "speech").iterdir()):
        files = sorted(p for p in speaker.iterdir() if p.suffix in (".wav", ".flac"))
        for index, path in enumerate(files[:per_speaker]):
            others = [p for p in files if p != path][:enroll]
            found.append({"name": path.name, "path": path, "enrollment": others})
    for path in sorted((media / "videos").glob("*.mp4")):
        found.append({"name": path.name, "path": path, "enrollment": []})
    for clip in found:
        pcm, rate = load(clip["path"])
        clip["pcm"], clip["rate"] = pcm[:int(max_seconds * rate)], rate
    return found


def define_level(spec: str) -> tuple[str, MaskLevel]:
    """``NAME:field=value,...`` → (NAME, MaskLevel), starting from the shipped level NAME if there is one."""
    import dataclasses
    name, _, fields = spec.partition(":")
    base = dataclasses.asdict(LEVELS.get(name, MaskLevel(margin_db=10.0, steps=14, floor=0.5)))
    for item in filter(None, fields.split(",")):
        key, value = item.split("=")
        base[key] = float(value) if base[key] is None or isinstance(base[key], float) else int(float(value))
    return name, MaskLevel(**base)


def protect(pcm: np.ndarray, rate: int, level) -> tuple[np.ndarray, float, list[int]]:
    mask = VoiceMask(level, device="cpu", threads=1)
    mask.begin(AudioStreamInfo(rate, pcm.shape[1], len(pcm) / rate))
    started, pieces = time.perf_counter(), []
    for start in range(0, len(pcm), CHUNK_SECONDS * rate):
        pieces.append(mask.protect_chunk(pcm[start:start + CHUNK_SECONDS * rate], start))
    elapsed = time.perf_counter() - started
    mask.end()
    return np.concatenate(pieces), elapsed, mask.steps_taken


def quiet_spr(clean: np.ndarray, protected: np.ndarray, rate: int) -> float | None:
    """Signal-to-perturbation ratio (dB) over the 20 ms frames more than 40 dB under the loudest frame."""
    frame = int(0.02 * rate)
    count = len(clean) // frame
    signal = (clean[:count * frame] ** 2).reshape(count, -1).sum(1)
    noise = ((protected - clean)[:count * frame] ** 2).reshape(count, -1).sum(1)
    quiet = signal < signal.max() * 1e-4
    if not quiet.any() or noise[quiet].sum() == 0:
        return None
    return 10 * np.log10(signal[quiet].sum() / noise[quiet].sum() + 1e-30)


def spectrogram_png(clean: np.ndarray, protected: np.ndarray, rate: int, path: Path) -> None:
    """Clean | protected | perturbation, log-magnitude (dB, shared scale), low frequencies at the bottom."""
    import cv2
    import librosa

    def panel(signal):
        magnitude = np.abs(librosa.stft(signal, n_fft=1024, hop_length=256))
        db = librosa.amplitude_to_db(magnitude, ref=1.0, top_db=None)
        image = np.clip((db + 100) / 120, 0, 1)[::-1]
        return cv2.applyColorMap((image * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)

    panels = [panel(s) for s in (clean, protected, protected - clean)]
    gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
    image = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    image = cv2.resize(image, (image.shape[1], 400), interpolation=cv2.INTER_AREA)
    width = panels[0].shape[1]
    for x, label in ((10, "clean"), (width + 18, "protected"), (2 * width + 26, "perturbation")):
        cv2.putText(image, label, (x, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    cv2.imwrite(str(path), image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Outside this repository, beside the checkout: the development media's rights stay with their owners, so a
    # fresh clone has none; --media takes any folder laid out the same way.
    parser.add_argument("--media", type=Path, default=Path(__file__).resolve().parents[2] / "shared/media/dev")
    parser.add_argument("--levels", nargs="+", default=["weak", "medium", "strong"])
    parser.add_argument("--per-speaker", type=int, default=1, help="utterances per speech speaker")
    parser.add_argument("--enroll", type=int, default=4, help="other utterances in a speaker's enrollment")
    parser.add_argument("--max-seconds", type=float, default=12.0)
    parser.add_argument("--png", type=Path, help="write before/after spectrograms of the first clip here")
    parser.add_argument("--subset", type=int, help="keep this many clips, spread evenly over the list")
    parser.add_argument("--only", nargs="+", metavar="TEXT", help="keep the clips whose name contains one of these")
    parser.add_argument("--define", action="append", default=[], metavar="NAME:field=value,...",
                        help="measure a custom level under NAME (repeatable)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/voice_mask_figures"))
    args = parser.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)

    import librosa
    import torch
    from pesq import pesq
    from pystoi import stoi
    from resemblyzer import VoiceEncoder, preprocess_wav
    torch.set_num_threads(1)
    encoder = VoiceEncoder("cpu", verbose=False)
    to16 = lambda pcm, rate: librosa.resample(pcm.mean(axis=1), orig_sr=rate, target_sr=16000)  # noqa: E731

    def embed(pcm, rate):
        return encoder.embed_utterance(preprocess_wav(pcm.mean(axis=1), source_sr=rate))

    custom = dict(define_level(spec) for spec in args.define)
    data = clips(args.media, args.per_speaker, args.enroll, args.max_seconds)
    if args.only:
        data = [clip for clip in data if any(text in clip["name"] for text in args.only)]
    if args.subset and args.subset < len(data):
        data = [data[i] for i in np.linspace(0, len(data) - 1, args.subset).round().astype(int)]
    for clip in data:
        clip["clean_embed"] = embed(clip["pcm"], clip["rate"])
        if clip["enrollment"]:
            clip["enroll_embed"] = encoder.embed_speaker([preprocess_wav(p) for p in clip["enrollment"]])
    print(f"{len(data)} clips, {sum(len(c['pcm']) / c['rate'] for c in data):.0f} s of audio", flush=True)

    rows = []
    for level in args.levels + [name for name in custom if name not in args.levels]:
        results = []
        for clip in data:
            pcm, rate = clip["pcm"], clip["rate"]
            started = time.perf_counter()
            embed(pcm, rate)   # one clean encoder pass over the same audio: the speed unit of this moment
            unit = time.perf_counter() - started
            protected, elapsed, steps = protect(pcm, rate, custom.get(level, level))
            heard = aac_round_trip(protected, rate, args.scratch)
            emb = embed(heard, rate)
            clean16, heard16 = to16(pcm, rate), to16(heard, rate)
            seconds = len(pcm) / rate
            results.append({
                "same": float(emb @ clip["clean_embed"]),
                "enroll": float(emb @ clip["enroll_embed"]) if "enroll_embed" in clip else None,
                "pesq": pesq(16000, clean16, heard16, "wb"),
                "stoi": stoi(clean16, heard16, 16000, extended=False),
                "snr": 10 * np.log10(np.sum(pcm.astype(np.float64) ** 2)
                                     / np.sum((protected - pcm).astype(np.float64) ** 2)),
                "spr": quiet_spr(pcm.mean(axis=1), protected.mean(axis=1), rate),
                "rate": elapsed / seconds, "units": elapsed / unit,
            })
            print(f"  {level:6s} {clip['name'][:40]:40s} same {results[-1]['same']:.3f} "
                  f"enroll {results[-1]['enroll'] if results[-1]['enroll'] is None else round(results[-1]['enroll'], 3)} "
                  f"PESQ {results[-1]['pesq']:.2f} STOI {results[-1]['stoi']:.3f} SNR {results[-1]['snr']:.1f} "
                  f"{results[-1]['rate']:.2f} s/s {results[-1]['units']:.1f} units steps {steps}", flush=True)
            if args.png and level == "medium" and clip is data[0]:
                spectrogram_png(clean16, to16(protected, rate), 16000, args.png)
        rows.append((level, results))

    print(f"\nmatch threshold {MATCH_THRESHOLD}; after AAC 128k; {len(data)} clips")
    print("| level | below (same utt.) | below (enrollment) | mean sim same / enroll | PESQ-WB median (min) "
          "| STOI median (min) | SNR dB | quiet-stretch SPR dB median (min) | s per s of audio, median | clean-pass units |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for level, results in rows:
        enrolled = [r for r in results if r["enroll"] is not None]
        sprs = [r["spr"] for r in results if r["spr"] is not None]
        print(f"| {level} | {sum(r['same'] < MATCH_THRESHOLD for r in results)}/{len(results)} "
              f"({100 * np.mean([r['same'] < MATCH_THRESHOLD for r in results]):.0f} %) "
              f"| {sum(r['enroll'] < MATCH_THRESHOLD for r in enrolled)}/{len(enrolled)} "
              f"| {np.mean([r['same'] for r in results]):.3f} / {np.mean([r['enroll'] for r in enrolled] or [np.nan]):.3f} "
              f"| {statistics.median(r['pesq'] for r in results):.2f} ({min(r['pesq'] for r in results):.2f}) "
              f"| {statistics.median(r['stoi'] for r in results):.3f} ({min(r['stoi'] for r in results):.3f}) "
              f"| {statistics.median(r['snr'] for r in results):.1f} "
              f"| {statistics.median(sprs) if sprs else float('nan'):.1f} ({min(sprs) if sprs else float('nan'):.1f}) "
              f"| {statistics.median(r['rate'] for r in results):.2f} "
              f"| {statistics.median(r['units'] for r in results):.1f} |")


if __name__ == "__main__":
    main()
