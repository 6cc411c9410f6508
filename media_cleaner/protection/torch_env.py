"""Torch for the engines: where it runs, and importing it (and the model packages) safely from many threads."""
from __future__ import annotations

import threading

_import_lock = threading.Lock()


def import_model_packages() -> None:
    """Import torch and the model packages once, under one lock.

    The engines, the task report and the start-up warm-up import them lazily from different threads, and two
    threads importing torchvision at once can see it half-initialised ("cannot import name … from partially
    initialized module 'torchvision.ops'"). After the first call this is a cheap no-op.
    """
    with _import_lock:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
        import facenet_pytorch  # noqa: F401
        import resemblyzer  # noqa: F401
        from media_cleaner.protection import face_cloak, voice_mask  # noqa: F401


def torch_device() -> str:
    """Where the engines run: "cuda" when a GPU is usable, else "cpu"."""
    import torch   # imported here: the service starts (and the pass-through runs) without loading torch
    return "cuda" if torch.cuda.is_available() else "cpu"
