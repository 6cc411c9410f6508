"""A second white-box surrogate: MediaPipe's BlazeFace short-range face detector, ported to torch.

BlazeFace (Bazarevsky et al., "BlazeFace: Sub-millisecond Neural Face Detection on Mobile GPUs", 2019) is the
detector behind MediaPipe's face detection. Attacking it besides MTCNN (:mod:`.surrogate`) keeps the cloak
from overfitting one architecture: a single-shot SSD on 128×128 input has nothing in common with a cascade.

The weights are MediaPipe's own: ``mediapipe/modules/face_detection/face_detection_short_range.tflite`` inside
the ``mediapipe`` PyPI wheel (Apache-2.0). We never import mediapipe; we read that file with the ``tflite``
flatbuffer package and run its graph with a small generic TFLite→torch executor (:class:`TFLiteGraph`), so
gradients flow from the detector's outputs back to the pixels.

:class:`TFLiteGraph` runs the float graphs that TFLite converters emit for small CNNs: CONV_2D,
DEPTHWISE_CONV_2D, ADD, MUL, RELU, RELU6, LOGISTIC, MAX_POOL_2D, AVERAGE_POOL_2D, PAD, RESHAPE,
CONCATENATION and DEQUANTIZE, with float32, float16 or int8/uint8-with-scale constants. Activations are
kept in torch's NCHW; 4-D constants and axis arguments, which the file gives in NHWC, are converted.

Images are float tensors (B, 3, 128, 128), RGB, in [-1, 1] — the range MediaPipe's ImageToTensorCalculator
feeds this model (``output_tensor_float_range { min: -1 max: 1 }``), and the range of DESIGN §2.
"""
from __future__ import annotations

import importlib.util
import math
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODEL_RELATIVE_PATH = Path("modules/face_detection/face_detection_short_range.tflite")
INPUT_SIZE = 128
NUM_ANCHORS = 896
# MediaPipe's TensorsToDetectionsCalculator options for the short-range model.
BOX_SCALE = 128.0            # x_scale = y_scale = w_scale = h_scale
SCORE_CLIPPING = 100.0       # logits are clipped to ±100 before the sigmoid
MIN_SCORE = 0.5
NMS_IOU = 0.3                # MediaPipe's min_suppression_threshold (it blends overlaps; we keep the best)


def find_model_file() -> Path | None:
    """The .tflite file inside the installed ``mediapipe`` package, found without importing mediapipe
    (its import pulls in protobuf, OpenCV contrib and more, none of which we need)."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / MODEL_RELATIVE_PATH
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------------------------
# The generic executor
# ---------------------------------------------------------------------------------------------------------

_NHWC_TO_NCHW = (0, 3, 1, 2)
_NCHW_TO_NHWC = (0, 2, 3, 1)
_NHWC_AXIS_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}


def _same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TFLite's SAME padding for one spatial axis, as (before, after): the odd pixel goes after, which
    torch's symmetric ``padding=`` cannot express (e.g. a 5×5 stride-2 conv on 128 px pads 1 before, 2 after)."""
    effective_kernel = (kernel - 1) * dilation + 1
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + effective_kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel_hw, stride_hw, dilation_hw=(1, 1), value: float = 0.0) -> torch.Tensor:
    top, bottom = _same_padding(x.shape[2], kernel_hw[0], stride_hw[0], dilation_hw[0])
    left, right = _same_padding(x.shape[3], kernel_hw[1], stride_hw[1], dilation_hw[1])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


def _activation(x: torch.Tensor, code: int) -> torch.Tensor:
    """TFLite's fused activations (ActivationFunctionType)."""
    if code == 0:
        return x
    if code == 1:
        return F.relu(x)
    if code == 2:
        return x.clamp(-1.0, 1.0)
    if code == 3:
        return F.relu6(x)
    if code == 4:
        return torch.tanh(x)
    raise NotImplementedError(f"fused activation {code}")


class TFLiteGraph(nn.Module):
    """Subgraph 0 of a float .tflite model, executed operator by operator with torch ops.

    Constant subexpressions (the DEQUANTIZE of float16 weights) are folded once at load time, and conv
    kernels are converted to torch's layout then, so :meth:`forward` only runs the network.
    """

    def __init__(self, path: str | Path):
        super().__init__()
        import tflite  # only needed to read the file, so imported here

        model = tflite.Model.GetRootAsModel(Path(path).read_bytes(), 0)
        if model.SubgraphsLength() != 1:
            raise ValueError("only single-subgraph models are supported")
        graph = model.Subgraphs(0)
        opcode_names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}

        self.input_indices = [int(i) for i in graph.InputsAsNumpy()]
        self.output_indices = [int(i) for i in graph.OutputsAsNumpy()]
        self.tensor_names = [graph.Tensors(i).Name().decode() for i in range(graph.TensorsLength())]
        self.tensor_shapes = [tuple(int(d) for d in graph.Tensors(i).ShapeAsNumpy())
                              if graph.Tensors(i).ShapeLength() else () for i in range(graph.TensorsLength())]

        constants: dict[int, torch.Tensor] = {}
        for index in range(graph.TensorsLength()):
            value = self._read_constant(model, graph.Tensors(index))
            if value is not None:
                constants[index] = value

        # Operators as (name, input indices, output indices, options); constant ones are folded now.
        self.operators: list[tuple[str, list[int], list[int], dict]] = []
        for op_index in range(graph.OperatorsLength()):
            op = graph.Operators(op_index)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = opcode_names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
            inputs = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
            outputs = [int(i) for i in op.OutputsAsNumpy()]
            options = self._read_options(name, op, inputs, constants)
            if name == "DEQUANTIZE" and inputs[0] in constants:
                constants[outputs[0]] = self._dequantize_constant(graph.Tensors(inputs[0]), constants[inputs[0]])
                continue
            self.operators.append((name, inputs, outputs, options))
        self.op_names = [name for name, *_ in self.operators]

        # Constants become buffers (they move with .to(device), and are never trained); conv kernels are
        # stored in torch layout under the op that uses them.
        self._constant_keys: dict[int, str] = {}
        for index, value in constants.items():
            self._register_constant(index, value)
        for op_index, (name, inputs, _, options) in enumerate(self.operators):
            if name == "CONV_2D":
                kernel = constants[inputs[1]].permute(0, 3, 1, 2).contiguous()         # OHWI → OIHW
                options["weight_key"] = self._register(f"op{op_index}_weight", kernel)
            elif name == "DEPTHWISE_CONV_2D":
                kernel = constants[inputs[1]].permute(3, 0, 1, 2).contiguous()         # 1HW(C·M) → (C·M)1HW
                options["weight_key"] = self._register(f"op{op_index}_weight", kernel)

    # -- loading ------------------------------------------------------------------------------------------

    def _register(self, key: str, value: torch.Tensor) -> str:
        self.register_buffer(key, value, persistent=False)
        return key

    def _register_constant(self, index: int, value: torch.Tensor) -> None:
        self._constant_keys[index] = self._register(f"const{index}", value)

    def _read_constant(self, model, tensor) -> torch.Tensor | None:
        import tflite as tfl
        buffer = model.Buffers(tensor.Buffer())
        raw = buffer.DataAsNumpy() if buffer is not None and buffer.DataLength() else None
        if raw is None or isinstance(raw, int):
            return None
        numpy_dtype = {tfl.TensorType.FLOAT32: np.float32, tfl.TensorType.FLOAT16: np.float16,
                       tfl.TensorType.INT32: np.int32, tfl.TensorType.INT64: np.int64,
                       tfl.TensorType.INT8: np.int8, tfl.TensorType.UINT8: np.uint8}.get(tensor.Type())
        if numpy_dtype is None:
            raise NotImplementedError(f"constant of TFLite type {tensor.Type()}")
        shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
        array = np.frombuffer(raw.tobytes(), dtype=numpy_dtype).reshape(shape)
        if numpy_dtype in (np.int8, np.uint8):
            return self._dequantize_constant(tensor, torch.from_numpy(array.astype(np.int32)))
        if numpy_dtype == np.float16:
            return torch.from_numpy(array.astype(np.float32))   # float16 constants are DEQUANTIZE inputs
        return torch.from_numpy(array.copy())

    @staticmethod
    def _dequantize_constant(tensor, value: torch.Tensor) -> torch.Tensor:
        """float16 → float32, or int8/uint8 → (q − zero_point) · scale, per tensor or per channel."""
        quantization = tensor.Quantization()
        if quantization is None or quantization.ScaleLength() == 0:
            return value.float()
        scale = torch.from_numpy(quantization.ScaleAsNumpy().astype(np.float32))
        zero_point = torch.from_numpy(quantization.ZeroPointAsNumpy().astype(np.float32)) \
            if quantization.ZeroPointLength() else torch.zeros_like(scale)
        if scale.numel() > 1:   # per-channel: broadcast along the quantised dimension
            view = [1] * value.dim()
            view[quantization.QuantizedDimension()] = -1
            scale, zero_point = scale.view(view), zero_point.view(view)
        return (value.float() - zero_point) * scale

    def _read_options(self, name: str, op, inputs: list[int], constants: dict[int, torch.Tensor]) -> dict:
        import tflite as tfl
        table = op.BuiltinOptions()

        def parse(options_class):
            options = options_class()
            options.Init(table.Bytes, table.Pos)
            return options

        if name == "CONV_2D":
            o = parse(tfl.Conv2DOptions)
            return {"same": o.Padding() == tfl.Padding.SAME, "stride": (o.StrideH(), o.StrideW()),
                    "dilation": (o.DilationHFactor(), o.DilationWFactor()), "act": o.FusedActivationFunction()}
        if name == "DEPTHWISE_CONV_2D":
            o = parse(tfl.DepthwiseConv2DOptions)
            return {"same": o.Padding() == tfl.Padding.SAME, "stride": (o.StrideH(), o.StrideW()),
                    "dilation": (o.DilationHFactor(), o.DilationWFactor()), "act": o.FusedActivationFunction()}
        if name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            o = parse(tfl.Pool2DOptions)
            return {"same": o.Padding() == tfl.Padding.SAME, "stride": (o.StrideH(), o.StrideW()),
                    "kernel": (o.FilterHeight(), o.FilterWidth()), "act": o.FusedActivationFunction()}
        if name in ("ADD", "MUL"):
            options_class = tfl.AddOptions if name == "ADD" else tfl.MulOptions
            return {"act": parse(options_class).FusedActivationFunction() if table is not None else 0}
        if name == "CONCATENATION":
            o = parse(tfl.ConcatenationOptions)
            return {"axis": o.Axis(), "act": o.FusedActivationFunction()}
        if name == "RESHAPE":
            if len(inputs) > 1 and inputs[1] >= 0 and inputs[1] in constants:
                return {"shape": [int(d) for d in constants[inputs[1]].tolist()]}
            return {"shape": [int(d) for d in parse(tfl.ReshapeOptions).NewShapeAsNumpy()]}
        if name == "PAD":
            return {"paddings": constants[inputs[1]].tolist()}
        if name in ("RELU", "RELU6", "LOGISTIC", "DEQUANTIZE"):
            return {}
        raise NotImplementedError(f"TFLite operator {name}")

    # -- running ------------------------------------------------------------------------------------------

    def _constant(self, index: int) -> torch.Tensor:
        return getattr(self, self._constant_keys[index])

    def _operand(self, values: dict[int, torch.Tensor], index: int, like: torch.Tensor | None = None):
        """An op input: a computed activation, or a constant (a 4-D constant next to a 4-D activation is
        NHWC in the file, so it is permuted to NCHW to broadcast the same way)."""
        if index in values:
            return values[index]
        value = self._constant(index)
        if like is not None and like.dim() == 4 and value.dim() == 4:
            value = value.permute(*_NHWC_TO_NCHW)
        return value

    def forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run the graph on NCHW inputs; returns the graph's outputs (4-D ones NCHW, others as in TFLite,
        with the batch dimension taken from the input rather than the file's batch of 1)."""
        values: dict[int, torch.Tensor] = dict(zip(self.input_indices, inputs))
        batch = inputs[0].shape[0]
        for name, in_idx, out_idx, o in self.operators:
            x = self._operand(values, in_idx[0])
            if name == "CONV_2D" or name == "DEPTHWISE_CONV_2D":
                weight = getattr(self, o["weight_key"])
                bias = self._constant(in_idx[2]) if len(in_idx) > 2 and in_idx[2] >= 0 else None
                if o["same"]:
                    x = _pad_same(x, weight.shape[2:], o["stride"], o["dilation"])
                groups = x.shape[1] if name == "DEPTHWISE_CONV_2D" else 1
                y = F.conv2d(x, weight, bias, stride=o["stride"], dilation=o["dilation"], groups=groups)
                y = _activation(y, o["act"])
            elif name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
                if name == "MAX_POOL_2D":
                    # TFLite's SAME max-pool ignores padded cells: pad with −inf so they never win.
                    if o["same"]:
                        x = _pad_same(x, o["kernel"], o["stride"], value=-math.inf)
                    y = F.max_pool2d(x, o["kernel"], o["stride"])
                else:
                    if o["same"] and any(_same_padding(s, k, st) != (0, 0)
                                         for s, k, st in zip(x.shape[2:], o["kernel"], o["stride"])):
                        raise NotImplementedError("SAME average pooling with padding")
                    y = F.avg_pool2d(x, o["kernel"], o["stride"])
                y = _activation(y, o["act"])
            elif name == "ADD":
                y = _activation(x + self._operand(values, in_idx[1], like=x), o["act"])
            elif name == "MUL":
                y = _activation(x * self._operand(values, in_idx[1], like=x), o["act"])
            elif name == "RELU":
                y = F.relu(x)
            elif name == "RELU6":
                y = F.relu6(x)
            elif name == "LOGISTIC":
                y = torch.sigmoid(x)
            elif name == "DEQUANTIZE":
                y = x.float()
            elif name == "PAD":
                pads = o["paddings"]
                if x.dim() == 4:   # paddings are listed per NHWC axis; F.pad wants last axis first (NCHW)
                    pads = [pads[a] for a in _NHWC_TO_NCHW]
                y = F.pad(x, [p for axis_pads in reversed(pads) for p in axis_pads])
            elif name == "RESHAPE":
                if x.dim() == 4:   # the file's reshape flattens NHWC order
                    x = x.permute(*_NCHW_TO_NHWC)
                shape = list(o["shape"])
                shape[0] = batch if shape[0] in (1, -1) and x.shape[0] == batch else shape[0]
                y = x.reshape(shape)
                if y.dim() == 4:
                    y = y.permute(*_NHWC_TO_NCHW)
            elif name == "CONCATENATION":
                parts = [self._operand(values, i) for i in in_idx]
                axis = o["axis"] % parts[0].dim()
                if parts[0].dim() == 4:
                    axis = _NHWC_AXIS_TO_NCHW[axis]
                y = _activation(torch.cat(parts, dim=axis), o["act"])
            else:  # pragma: no cover — _read_options already refused it
                raise NotImplementedError(name)
            values[out_idx[0]] = y
        return [values[i] for i in self.output_indices]


# ---------------------------------------------------------------------------------------------------------
# BlazeFace
# ---------------------------------------------------------------------------------------------------------

def anchors() -> torch.Tensor:
    """The 896 SSD anchor centres (x, y), normalised to [0, 1], in the model's output order.

    MediaPipe's SsdAnchorsCalculator for face_detection_short_range: 4 layers with strides 8, 16, 16, 16 on
    a 128 px input, aspect ratio 1 plus one interpolated scale per layer, anchor offset 0.5 and
    ``fixed_anchor_size: true`` (so every anchor is 1 × 1 and only its centre matters). Layers that share a
    stride share a grid: 2 anchors per cell on the 16×16 grid, 6 per cell on the 8×8 grid, row-major.
    """
    centres = []
    for stride, per_cell in ((8, 2), (16, 6)):
        cells = INPUT_SIZE // stride
        ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
        grid = torch.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], dim=-1).reshape(-1, 1, 2)
        centres.append(grid.expand(-1, per_cell, -1).reshape(-1, 2))
    return torch.cat(centres).float()


class BlazeFace(nn.Module):
    """MediaPipe BlazeFace (short range), differentiable: (B, 3, 128, 128) RGB in [-1, 1] → per-anchor
    face logits (B, 896) and raw regressors (B, 896, 16): box centre offset, width, height, then six
    keypoints (eyes, nose tip, mouth, ear tragions), all in 128-px units relative to the anchor."""

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        path = path or find_model_file()
        if path is None:
            raise FileNotFoundError(f"{MODEL_RELATIVE_PATH} not found: install the mediapipe wheel")
        self.graph = TFLiteGraph(path)
        self.register_buffer("anchor_centres", anchors(), persistent=False)
        names = [self.graph.tensor_names[i] for i in self.graph.output_indices]
        self._regressor_output = names.index("regressors")
        self._score_output = names.index("classificators")
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"BlazeFace expects (B, 3, {INPUT_SIZE}, {INPUT_SIZE}), got {tuple(images.shape)}")
        outputs = self.graph(images)
        return outputs[self._score_output].squeeze(-1), outputs[self._regressor_output]

    def decode_boxes(self, regressors: torch.Tensor) -> torch.Tensor:
        """Regressors (…, 896, 16) → boxes (…, 896, 4) as x0, y0, x1, y1 in input pixels."""
        centre = regressors[..., :2] / BOX_SCALE + self.anchor_centres
        size = regressors[..., 2:4] / BOX_SCALE
        return torch.cat([centre - size / 2, centre + size / 2], dim=-1) * INPUT_SIZE

    @torch.no_grad()
    def detect(self, image_rgb: np.ndarray, min_score: float = MIN_SCORE,
               iou_threshold: float = NMS_IOU) -> list[tuple[float, tuple[float, float, float, float]]]:
        """Faces in one 128×128 uint8 RGB image as (score, (x0, y0, x1, y1) px), best first — for checking
        the port against known images, not used by the attack."""
        if image_rgb.shape != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"detect expects a {INPUT_SIZE}×{INPUT_SIZE} RGB image, got {image_rgb.shape}")
        device = self.anchor_centres.device
        x = torch.from_numpy(np.ascontiguousarray(image_rgb)).to(device).permute(2, 0, 1)[None].float()
        logits, regressors = self(x / 127.5 - 1.0)
        scores = torch.sigmoid(logits[0].clamp(-SCORE_CLIPPING, SCORE_CLIPPING))
        boxes = self.decode_boxes(regressors[0])
        keep = scores >= min_score
        scores, boxes = scores[keep], boxes[keep]
        order = scores.argsort(descending=True)
        detections = []
        # Hard NMS, greedy by score (MediaPipe's weighted NMS clusters the same way but averages each cluster's box).
        while order.numel():
            best = order[0]
            detections.append((float(scores[best]), tuple(float(v) for v in boxes[best])))
            order = order[1:][_iou(boxes[best], boxes[order[1:]]) < iou_threshold]
        return detections


def _iou(box: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    top_left = torch.maximum(box[:2], others[:, :2])
    bottom_right = torch.minimum(box[2:], others[:, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    area = (box[2:] - box[:2]).prod()
    other_areas = (others[:, 2:] - others[:, :2]).prod(dim=1)
    return intersection / (area + other_areas - intersection).clamp(min=1e-9)


_cache: dict[str, BlazeFace] = {}
_cache_lock = threading.Lock()


def load_blazeface(device: str = "cpu") -> BlazeFace:
    """The process-wide BlazeFace for ``device``, loaded once (its weights are frozen, so tasks share it)."""
    with _cache_lock:
        if device not in _cache:
            _cache[device] = BlazeFace().to(device)
        return _cache[device]
