"""The voice mask: an adversarial, spectrally shaped perturbation of the soundtrack that moves speaker
embeddings (Resemblyzer / SV2TTS encoder) off the speaker's real voice while the listener hears the same
voice.

One job per module: :mod:`.frontend` (the encoder's mel front end in torch, the encoder itself),
:mod:`.masking` (where the perturbation may go and how large it may be), :mod:`.losses` (what the attack
optimises), :mod:`.transforms` (what happens to the audio after us: AAC, resampling, gain), and
:mod:`.engine` (:class:`VoiceMask`, the :class:`~media_cleaner.protection.AudioProtector` that composes
them over a chunked stream).
"""
from media_cleaner.protection.voice_mask.engine import LEVELS, MaskLevel, VoiceMask

__all__ = ["LEVELS", "MaskLevel", "VoiceMask"]
