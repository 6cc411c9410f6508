"""The one module that knows both engines: builds them for a task, and warms them up.

:func:`build_protectors` puts the face cloak (:mod:`.face_cloak`) on the video seam and the voice mask
(:mod:`.voice_mask`) on the audio seam, configured from the task's parameters. The engines are imported
inside the functions: the service starts (and the pass-through runs) without loading torch.
"""
from __future__ import annotations

from media_cleaner.params import ProtectionParams
from media_cleaner.protection.seams import Protectors
from media_cleaner.protection.torch_env import import_model_packages, torch_device


def build_protectors(params: ProtectionParams, *, device: str | None = None, threads: int = 1) -> Protectors:
    """The engines for one task, configured from its parameters.

    ``device`` is where torch work runs (None: :func:`torch_device`), ``threads`` the worker's share of
    the cores.
    """
    import_model_packages()
    audio = None   # "none": the pipeline copies the original sound stream
    if params.audio_level != "none":
        from media_cleaner.protection.voice_mask import VoiceMask  # imported here: torch and the encoder load only for a task
        audio = VoiceMask(params.audio_level, device=device, threads=threads)
    from media_cleaner.protection.face_cloak import FaceCloak  # imported here: torch and MTCNN load only for a task
    video = FaceCloak(params, device=device or torch_device(), threads=threads)
    return Protectors(video=video, audio=audio)


def warm_up_engines() -> None:
    """Load models and compile what is slow to start, so the first task does not pay for it.

    :func:`media_cleaner.service.queue.jobs.warm_up` calls this once at start-up, where the jobs will run.
    """
    import_model_packages()
    from media_cleaner.protection.voice_mask.engine import warm_up as warm_up_voice_mask
    warm_up_voice_mask(torch_device())
    from media_cleaner.protection.face_cloak.engine import warm_up as warm_up_face_cloak
    warm_up_face_cloak(torch_device())
