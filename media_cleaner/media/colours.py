"""How the pipeline keeps a video's colours: which matrix, range and transfer to decode with and to tag the
output with."""
from __future__ import annotations

from dataclasses import dataclass

from media_cleaner.media.probe import MediaInfo


# --- colours -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ColourPlan:
    """How YUV↔RGB is converted (the same matrix both ways) and how the output is tagged."""

    scale_matrix: str     # the name the scale filter uses
    colorspace: str       # the output's tags
    primaries: str
    trc: str


def plan_colours(info: MediaInfo) -> ColourPlan:
    """Use the input's matrix when tagged. An untagged input is converted with what players assume
    (BT.709 when the shorter side is ≥ 720, portrait too; BT.601 below) and stays untagged, so every player
    shows the output exactly as it showed the input, whatever its own guess."""
    matrix = info.color_matrix
    if matrix == "bt709":
        return ColourPlan("bt709", "bt709", info.color_primaries or "bt709", info.color_trc or "bt709")
    if matrix in ("smpte170m", "bt470bg"):
        return ColourPlan("bt601", matrix, info.color_primaries or matrix, info.color_trc or "smpte170m")
    if matrix in ("bt2020nc", "bt2020c"):
        return ColourPlan("bt2020", "bt2020nc", info.color_primaries or "bt2020", info.color_trc or "bt2020-10")
    return ColourPlan("bt709" if min(info.width, info.height) >= 720 else "bt601",
                      "unknown", "unknown", "unknown")
