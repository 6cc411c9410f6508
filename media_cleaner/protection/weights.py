"""Where the model weights converted at install time live (``python -m media_cleaner fetch-models``).

Torch-free on purpose: the server process checks for them at start-up without loading any model.
"""
from __future__ import annotations

import os
from pathlib import Path

WEIGHTS_ENV = "MEDIA_CLEANER_MODELS_DIR"
FACE_RECOGNIZER_FILE = "facenet_keras_128.pt"


def models_dir() -> Path:
    """``$MEDIA_CLEANER_MODELS_DIR``, else ``models/`` beside the package."""
    return Path(os.environ.get(WEIGHTS_ENV) or Path(__file__).resolve().parents[2] / "models")


def face_recognizer_weights() -> Path:
    return models_dir() / FACE_RECOGNIZER_FILE
