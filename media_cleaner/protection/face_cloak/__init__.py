"""The face cloak: an adversarial frame perturbation against face recognition (the face embeds as a decoy
identity, at the lighter budgets) and face detection (the face is hidden, at the strongest).

Pieces, one job each:

- :mod:`.surrogate` — the detector it attacks and tracks with: the MTCNN cascade of ``facenet-pytorch``
  (P-Net, R-Net, O-Net), differentiable end to end on face crops;
- :mod:`.recognizer` — the recognizer it attacks: FaceNet (128-D), converted at install time from a PyPI
  distribution; :mod:`.dlib_recognizer` — dlib's ResNet ported to torch, the second surrogate of the
  ``facenet+dlib`` ensemble; :mod:`.embedding` — either of them, or both, with the chip each one embeds;
- :mod:`.losses` — what the attack minimises: the identity term (away from the clean template, toward the
  decoy), face scores of every stage, landmark displacement and a perceptual penalty;
- :mod:`.transforms` — the differentiable model of what happens to a frame after us (H.264-like
  quantisation, resampling, blur) and input diversity, sampled for expectation over transformations;
- :mod:`.masks` — where and how much the perturbation may change: feathered face masks and a luminance-
  and texture-weighted budget;
- :mod:`.attack` — the projected-gradient optimiser under the L∞ cap ``epsilon × video_strength``;
- :mod:`.tracker` — keyframes, scene cuts and the box motion that carries a perturbation between keyframes;
- :mod:`.engine` — :class:`FaceCloak`, the :class:`~media_cleaner.protection.VideoProtector` the pipeline calls.
"""
from media_cleaner.protection.face_cloak.engine import CloakConfig, FaceCloak
from media_cleaner.protection.face_cloak.surrogate import MTCNNSurrogate, load_surrogate

__all__ = ["CloakConfig", "FaceCloak", "MTCNNSurrogate", "load_surrogate"]
