"""Receive a multipart upload straight to disk, enforcing the size limit while the bytes arrive.

FastAPI's ``UploadFile`` would spool the whole body to a temporary file before the handler runs, so a
50 GB upload would fill the disk before anyone could say 413. Here the body is parsed as it streams
(python-multipart's push parser), the single ``file`` part goes to ``<dest>.part``, and the upload is cut off
the moment it passes the limit. Disk writes run in a worker thread so the event loop never waits on them.
"""
from __future__ import annotations

import os
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from fastapi import HTTPException, Request
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect

MAX_FIELD_BYTES = 64 * 1024      # form fields are short strings; refuse anything bigger
MAX_FIELDS = 32                   # the upload knows 7 fields; more parts than this are an attack, not a form
MULTIPART_OVERHEAD = 1024 * 1024  # headers and fields allowed on top of the file itself, all fields together
FLUSH_BYTES = 1024 * 1024         # hand the parser about this much at a time (one thread hop per MB)
DISK_CHECK_BYTES = 16 * 1024 ** 2  # free space is checked again after every this many bytes of the file
DISK_FULL_RETRY_S = 600


class UploadTooLarge(Exception):
    pass


@dataclass
class ReceivedUpload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None
    size: int = 0


def clean_filename(raw: str) -> str:
    """The user's file name without folders, control characters or NULs, at most 200 characters."""
    name = raw.replace("\\", "/").split("/")[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    if len(name) > 200:
        stem, dot, ext = name.rpartition(".")
        name = (stem[:190] + dot + ext[:9]) if dot and len(ext) <= 9 else name[:200]
    return name or "video"


def disk_full_error() -> HTTPException:
    return HTTPException(507, "The server is low on disk space and cannot take new videos right now. Try again "
                              "later, or tell the operator.", headers={"Retry-After": str(DISK_FULL_RETRY_S)})


async def receive_multipart(request: Request, part_path: Path, max_file_bytes: int,
                            allowed_extensions: list[str], min_free_bytes: int = 0) -> ReceivedUpload:
    """Parse the request body; the ``file`` part is written to ``part_path``. Raises HTTPException.

    A file whose name has none of ``allowed_extensions`` is refused (415) as soon as its part header
    arrives, before its bytes are streamed. The whole body counts toward the limit: the file, and at most
    MAX_FIELDS other parts of MULTIPART_OVERHEAD bytes together (413, 422). While the file streams, the disk
    must keep ``min_free_bytes`` free (507): a chunked upload declares no length to check up front.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise HTTPException(415, "Send the video as multipart/form-data with the file in the field 'file' "
                                 "(curl -F file=@video.mp4 …).")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_file_bytes + MULTIPART_OVERHEAD:
        raise HTTPException(413, _too_large_message(max_file_bytes))

    result = ReceivedUpload()
    state: dict = {"headers": {}, "header_field": b"", "header_value": b"", "name": None,
                   "file": None, "value": bytearray(), "is_file": False, "parts": 0, "field_bytes": 0,
                   "next_disk_check": 0}
    errors: list[HTTPException] = []

    def on_part_begin():
        state.update(headers={}, name=None, is_file=False, value=bytearray())
        state["parts"] += 1
        if state["parts"] > MAX_FIELDS + 1:
            raise _Refuse(HTTPException(422, f"Too many parts in the form (at most {MAX_FIELDS} fields and the "
                                             f"file); the upload accepts the file and 8 known fields."))

    def on_header_field(data, start, end):
        state["header_field"] += data[start:end]

    def on_header_value(data, start, end):
        state["header_value"] += data[start:end]

    def on_header_end():
        state["headers"][state["header_field"].decode("latin-1").lower()] = state["header_value"]
        state["header_field"], state["header_value"] = b"", b""

    def on_headers_finished():
        _, disposition = parse_options_header(state["headers"].get("content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if b"filename" not in disposition:
            return
        if name != "file":
            raise _Refuse(HTTPException(422, f"Unexpected file in field {name!r}: send the video in the "
                                             f"field 'file' and nothing else."))
        if result.path is not None:
            raise _Refuse(HTTPException(422, "Send exactly one file per upload."))
        state["is_file"] = True
        result.filename = clean_filename(disposition[b"filename"].decode("utf-8", "replace"))
        if Path(result.filename).suffix.lower() not in allowed_extensions:
            raise _Refuse(HTTPException(415, f"{result.filename!r} is not a supported video type; send one of "
                                             f"{', '.join(allowed_extensions)}."))
        result.path = part_path
        state["file"] = open(part_path, "wb")

    def on_part_data(data, start, end):
        if state["is_file"]:
            result.size += end - start
            if result.size > max_file_bytes:
                raise UploadTooLarge()
            if min_free_bytes and result.size >= state["next_disk_check"]:
                state["next_disk_check"] = result.size + DISK_CHECK_BYTES
                if shutil.disk_usage(part_path.parent).free < min_free_bytes:
                    raise _Refuse(disk_full_error())
            state["file"].write(data[start:end])
        else:
            state["value"] += data[start:end]
            state["field_bytes"] += end - start
            if len(state["value"]) > MAX_FIELD_BYTES:
                raise _Refuse(HTTPException(422, f"Form field {state['name']!r} is too long "
                                                 f"(at most {MAX_FIELD_BYTES // 1024} KB)."))
            if state["field_bytes"] > MULTIPART_OVERHEAD:   # the fields count toward the body's limit
                raise UploadTooLarge()

    def on_part_end():
        if state["is_file"]:
            state["file"].close()
            state["file"] = None
        elif state["name"]:
            if state["name"] in result.fields:
                raise _Refuse(HTTPException(422, f"Field {state['name']!r} was sent twice."))
            result.fields[state["name"]] = state["value"].decode("utf-8", "replace")

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data, "on_part_end": on_part_end,
    })

    def feed(chunk: bytes) -> None:
        try:
            parser.write(chunk)
        except (UploadTooLarge, _Refuse):
            raise
        except Exception as exc:   # the parser's own complaint about a malformed body
            raise _Refuse(HTTPException(400, f"The multipart body is malformed ({exc}). "
                                             f"Send the file with curl -F or a standard HTTP client."))

    try:
        buffer = bytearray()
        async for chunk in request.stream():
            buffer += chunk
            if len(buffer) >= FLUSH_BYTES:
                await anyio.to_thread.run_sync(feed, bytes(buffer))
                buffer.clear()
        if buffer:
            await anyio.to_thread.run_sync(feed, bytes(buffer))
        await anyio.to_thread.run_sync(parser.finalize)
        if state["file"] is not None:   # the body ended inside the file part
            raise HTTPException(400, "The upload ended before the file was complete; send it again.")
    except UploadTooLarge:
        errors.append(HTTPException(413, _too_large_message(max_file_bytes)))
    except _Refuse as refusal:
        errors.append(refusal.error)
    except HTTPException as exc:
        errors.append(exc)
    except ClientDisconnect:
        errors.append(HTTPException(400, "The upload was interrupted before it finished."))
    finally:
        if state["file"] is not None:
            state["file"].close()
        if errors:
            discard(part_path)
    if errors:
        raise errors[0]
    return result


def discard(path: Path | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class _Refuse(Exception):
    def __init__(self, error: HTTPException):
        super().__init__(error.detail)
        self.error = error


def _too_large_message(max_bytes: int) -> str:
    return (f"The file is larger than this server's limit of {max_bytes / 1024 ** 3:g} GB. "
            f"Trim or compress the video, or ask the operator to raise max_video_size_gb.")
