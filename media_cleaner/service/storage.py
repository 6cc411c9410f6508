"""Where a task's media live, behind one small interface (:class:`MediaStorage`), so that the place can change
without touching the API, the workers or retention.

A file is named by its **key**, the path the task record keeps, relative to the data folder
(``videos_input/<id>.mp4``, ``videos_output/<id>_<name>_protected.mp4``, ``videos_output/<id>_preview.png``;
the names themselves come from :mod:`.files`). The engines and ffmpeg work on local files, so the interface
hands out local paths and is told when a written file is complete:

- :meth:`~MediaStorage.local_path`: a file on this machine for the key, to read, or to write and then
  :meth:`~MediaStorage.publish`;
- :meth:`~MediaStorage.serve`: what a download answers with;
- :meth:`~MediaStorage.delete` and :meth:`~MediaStorage.task_keys`: everything stored for a task, for
  cancel, delete and retention.

Today's implementation is :class:`SharedFolder`: the keys are files under the data folder, on one machine or
on a volume every machine mounts at the same path (NFS and the like); ``local_path`` is the file itself and
``publish`` has nothing to do. An S3-compatible object store is the next implementation of the same five
methods (SERVER_DEPLOYMENT.md, "Shared media"): ``local_path`` downloads into the machine's scratch folder
(and is a scratch path for a file to be written), ``publish`` uploads it, ``serve`` answers a redirect to a
presigned URL, ``delete`` and ``task_keys`` delete and list objects by the task id prefix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from media_cleaner.config import Settings
from media_cleaner.service.tasks import Task


class MediaStorage(Protocol):
    def local_path(self, key: str) -> Path:
        """A file on this machine holding ``key`` (to read), or where to write it before :meth:`publish`."""

    def publish(self, key: str) -> None:
        """The file written at ``local_path(key)`` is complete: make it what ``key`` names, for every machine."""

    def serve(self, key: str) -> Path | None:
        """What a download of ``key`` sends (a local file here); None when it is gone."""

    def delete(self, key: str) -> None:
        """Remove ``key`` if it exists."""

    def task_keys(self, task: Task) -> list[str]:
        """Every key stored for ``task``: its upload and everything named after it among the outputs."""


def configured_media(settings: Settings) -> MediaStorage:
    """The storage of this deployment: the data folder (an object store would be chosen here)."""
    return SharedFolder(settings)


class SharedFolder(MediaStorage):
    """The keys as files under the data folder, local or on a shared volume mounted at the same path."""

    def __init__(self, settings: Settings):
        self.root = settings.data_dir
        self.output_dir = settings.output_dir

    def local_path(self, key: str) -> Path:
        return self.root / key

    def publish(self, key: str) -> None:
        pass   # written in place (the pipeline renames its partial file when complete)

    def serve(self, key: str) -> Path | None:
        path = self.root / key
        return path if key and path.is_file() else None

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def task_keys(self, task: Task) -> list[str]:
        outputs = sorted(self.output_dir.glob(f"{task.task_id}_*"))
        return ([task.input_video] if task.input_video else []) + \
            [path.relative_to(self.root).as_posix() for path in outputs]
