"""The evaluation harness: how we know whether protection works, against models the engines never
see (the method in plain words is EVALUATION.md, "Method").

One module per job:

- :mod:`.media`: reading sampled frames and the soundtrack of any video with ffmpeg;
- :mod:`.reencode`: the social-platform style re-encode a scraper would download;
- :mod:`.judges`: the face detectors and the face embedding that score protection (black-box judges
  plus the white-box MTCNN surrogate);
- :mod:`.metrics`: picture and sound quality (PSNR, SSIM, face SSIM, VMAF; SNR, PESQ, STOI);
- :mod:`.voice`: speaker similarity with the Resemblyzer encoder and its equal-error threshold;
- :mod:`.evaluate`: one original/protected pair → the figures (``python -m media_cleaner evaluate``);
- :mod:`.dataset`: protect and evaluate a whole folder (``evaluate-set``);
- :mod:`.bench`: protect time against a plain re-encode (``bench``);
- :mod:`.report`: the cheap per-task report and before/after sheet the service stores.

The judges are never used to compute a perturbation: that is what makes their numbers a fair measure of
protection against models the protection did not see.
"""


class EvaluationError(Exception):
    """The evaluation cannot run (bad input, a missing optional package); the message says what to do."""


def json_safe(value):
    """``value`` with infinities written as the strings "inf"/"-inf" and NaN as None, so it is valid JSON
    (PSNR and SNR are infinite for identical inputs) and survives pydantic's serialisation unchanged."""
    import math
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
