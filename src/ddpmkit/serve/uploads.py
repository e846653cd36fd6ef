"""Pictures sent by the page (faces, painted masks): size-limited, checked as the CLI checks its
image files, kept under the output folder's uploads/ by a name the server gives.

An upload is refused, in one line naming the file as the person chose it, when it is larger
than the limit, its picture has more than MAX_PIXELS pixels (checked from the header, before
decoding), or it does not decode (`images.check_image`: missing, truncated, not an image).
Later requests name an upload by the 16 hex digits it was given, never by a path.
"""

from __future__ import annotations

import re
import secrets
import threading
from pathlib import Path

from PIL import Image

from ddpmkit.errors import DdpmkitError
from ddpmkit.human import fmt_bytes
from ddpmkit.images import DECODE_ERRORS, check_image
from ddpmkit.io_utils import write_atomic

MAX_PIXELS = 4096 * 4096  # a small file can hold a huge picture; decoding one would fill memory
KEEP = 256  # uploads kept; the oldest go first
UPLOAD_ID = re.compile(r"[0-9a-f]{16}")


class TooBig(DdpmkitError):
    """An upload over the size limit (the page gets 413)."""


def safe_name(name: str) -> str:
    """A file name as the person gave it, shortened and without path or control characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    return re.sub(r"[^\w .()+-]", "_", base)[:60] or "upload"


class Uploads:
    """The uploads folder: `store` checks and keeps one, `path` finds it again by its id."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = Path(folder), int(max_bytes)
        self._lock = threading.Lock()

    def too_big(self, size: int, name: str) -> TooBig:
        return TooBig(f"{safe_name(name)} is {fmt_bytes(size)}: uploads are limited to "
                            f"{fmt_bytes(self.max_bytes)} (ddpmkit serve --max-upload-mb)")

    def store(self, data: bytes, name: str) -> dict[str, object]:
        """Check and keep an upload. Returns {"id", "name", "width", "height"}; one line if refused."""
        shown = safe_name(name)
        if len(data) > self.max_bytes:
            raise self.too_big(len(data), name)
        if not data:
            raise DdpmkitError(f"{shown} is empty: choose an image file")
        upload_id = secrets.token_hex(8)
        path = self.folder / upload_id
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: tmp.write_bytes(data))
        try:
            width, height = _checked_size(path, shown)
        except DdpmkitError:
            path.unlink(missing_ok=True)
            raise
        self._prune()
        return {"id": upload_id, "name": shown, "width": width, "height": height}

    def path(self, upload_id: object) -> Path:
        """The file of an upload id; a path or an unknown id is refused in one line."""
        if not isinstance(upload_id, str) or not UPLOAD_ID.fullmatch(upload_id):
            raise DdpmkitError(f"{str(upload_id)[:40]!r} is not an upload id (uploads are named by the server)")
        path = self.folder / upload_id
        if not path.is_file():
            raise DdpmkitError(f"no upload {upload_id} (uploads are kept while fewer than {KEEP} are newer)")
        return path

    def _prune(self) -> None:
        with self._lock:
            files = sorted((p for p in self.folder.iterdir() if UPLOAD_ID.fullmatch(p.name)),
                           key=lambda p: p.stat().st_mtime)
            for old in files[:-KEEP]:
                old.unlink(missing_ok=True)


def _checked_size(path: Path, shown: str) -> tuple[int, int]:
    """(width, height) of an upload that decodes, checked as `images.check_image` checks a file;
    errors name the file as the person chose it."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except DECODE_ERRORS:
        width = height = 0  # check_image below says why, in the CLI's words
    if width * height > MAX_PIXELS:
        raise DdpmkitError(f"{shown} is {width}x{height} pixels: uploads are limited to {MAX_PIXELS:,} pixels")
    try:
        check_image(path)
    except DdpmkitError as e:
        raise DdpmkitError(str(e).replace(str(path), shown)) from None
    return width, height
