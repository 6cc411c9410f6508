"""Every file name of a task, in one place: where its upload, output and preview live, and how a download is
called. Names start with the task id, so everything of a task can be found (and deleted) by it.
"""
from __future__ import annotations

import re
from pathlib import Path


# Uploads are stored as "<task id><ext>" and written as ".<task id>.part" until complete.
STORED_UPLOAD = re.compile(r"^[0-9a-f]{32}\.[\w]+$")
PARTIAL_OUTPUTS = ".*.partial"   # an output or preview being written (the pipeline renames it when complete)


def upload_name(task_id: str, extension: str) -> str:
    return f"{task_id}{extension}"


def upload_part_name(task_id: str) -> str:
    return f".{task_id}.part"


def is_unfinished_upload(name: str) -> bool:
    return name.startswith(".") and name.endswith(".part")


def output_name(task_id: str, original_filename: str) -> str:
    """``{task_id}_{name}_protected.mp4`` with the user's name reduced to characters safe in any shell."""
    stem = Path(original_filename).stem
    stem = re.sub(r"[^\w.-]+", "_", stem, flags=re.UNICODE).strip("._")[:80] or "video"
    return f"{task_id}_{stem}_protected.mp4"


def preview_name(task_id: str) -> str:
    """The task report's before/after sheet."""
    return f"{task_id}_preview.png"


def upload_key(task_id: str, extension: str) -> str:
    """The storage key of a stored upload (see :mod:`.storage`): its path under the data folder."""
    return f"videos_input/{upload_name(task_id, extension)}"


def output_key(task_id: str, original_filename: str) -> str:
    return f"videos_output/{output_name(task_id, original_filename)}"


def preview_key(task_id: str) -> str:
    return f"videos_output/{preview_name(task_id)}"


def download_name(original_filename: str) -> str:
    """What the person's browser saves the protected video as."""
    return f"{Path(original_filename).stem or 'video'}_protected.mp4"

