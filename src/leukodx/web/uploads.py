"""Checking uploaded files before anything is analysed or stored: count, size, type, decodability."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np
from fastapi import UploadFile
from fastapi.concurrency import run_in_threadpool

from leukodx.data.images import MAX_PIXELS, open_image
from leukodx.errors import ImageError
from leukodx.web.storage import EXT_FOR_FORMAT

ACCEPTED_TYPES = {
    "image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/tiff", "image/bmp", "image/x-ms-bmp",
    "image/x-bmp", "application/octet-stream", "",
}
READ_CHUNK = 1024 * 1024


@dataclass
class Rejection:
    """One rejected file: the HTTP status it earns, what is wrong, what to do."""

    status: int
    file: str
    problem: str
    hint: str

    def __post_init__(self):
        self.problem = self.problem[:1].upper() + self.problem[1:]

    def as_dict(self) -> dict:
        return {"file": self.file, "status": self.status, "problem": self.problem, "hint": self.hint}


KEEP_DECODED_PIXELS = 40_000_000  # beyond this many pixels per request, fields are decoded again one by one


@dataclass
class GoodImage:
    name: str  # sanitised display name
    data: bytes
    rgb: np.ndarray | None  # None: decode again when its turn comes (bounds memory for big batches)
    ext: str
    width: int
    height: int

    def pixels(self) -> np.ndarray:
        return self.rgb if self.rgb is not None else np.asarray(open_image(self.data, name=self.name))


class UploadRejected(Exception):
    """The whole request is refused (nothing stored); status is the first rejection's."""

    def __init__(self, rejections: list[Rejection]):
        self.rejections = rejections
        self.status = rejections[0].status
        super().__init__("; ".join(f"{r.file}: {r.problem}" for r in rejections))


def display_name(raw: str | None, index: int) -> str:
    """A client file name made safe to show (escaped; files are stored under their content hash): no folders,
    no control characters, at most 120 characters."""
    text = (raw or "").replace("\\", "/").split("/")[-1]
    text = "".join(ch for ch in unicodedata.normalize("NFC", text) if unicodedata.category(ch)[0] != "C")
    text = re.sub(r"\s+", " ", text).strip().lstrip(".")
    return text[:120] or f"field-{index + 1}"


def status_for(error: ImageError) -> int:
    reason = error.reason.lower()
    if "bomb" in reason or "over the" in reason:
        return 413
    if "not an image" in reason or "not accepted" in reason or "empty" in reason:
        return 415
    return 422


async def read_limited(upload: UploadFile, max_bytes: int) -> bytes | None:
    """The file's bytes, or None when it is over `max_bytes`."""
    chunks, total = [], 0
    while True:
        chunk = await upload.read(READ_CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def check_uploads(files: list, max_files: int, max_bytes: int) -> list[GoodImage]:
    """Every file checked; raises UploadRejected listing each bad one (then nothing may be stored)."""
    files = [f for f in (files or []) if f is not None]
    if not files:
        raise UploadRejected([Rejection(422, "", "No files were sent.", "Choose one or more field images.")])
    if len(files) > max_files:
        raise UploadRejected([Rejection(
            413, "", f"{len(files)} files were sent; at most {max_files} are accepted at once.",
            f"Send them in batches of {max_files} or fewer.",
        )])
    good, bad = [], []
    for i, f in enumerate(files):
        if isinstance(f, str) or not hasattr(f, "read"):
            bad.append(Rejection(415, f"#{i + 1}", "this part is text, not a file.", "Send image files."))
            continue
        name = display_name(getattr(f, "filename", None), i)
        ctype = (getattr(f, "content_type", None) or "").split(";")[0].strip().lower()
        if ctype not in ACCEPTED_TYPES:
            bad.append(Rejection(415, name, f"the type {ctype!r} is not an image type.",
                                 "Upload JPEG, PNG, TIFF or BMP field images."))
            continue
        data = await read_limited(f, max_bytes)
        if data is None:
            bad.append(Rejection(413, name, f"the file is over the {max_bytes / 2**20:.3g} MB limit.",
                                 "Export the field at a lower resolution or as JPEG."))
            continue
        try:  # decoding (a big TIFF takes a while) runs on a worker thread, never on the event loop
            rgb, fmt = await run_in_threadpool(_decode, data, name)
        except ImageError as exc:
            hint = (f"Images over {MAX_PIXELS / 1e6:.0f} megapixels are refused; downscale it first."
                    if "bomb" in exc.reason else exc.hint)  # a bomb is a 413 (status_for)
            bad.append(Rejection(status_for(exc), name, exc.reason + ".", hint))  # capitalised by Rejection
            continue
        good.append(GoodImage(name=name, data=data, rgb=rgb, ext=EXT_FOR_FORMAT.get(fmt, "png"),
                              width=rgb.shape[1], height=rgb.shape[0]))
        if sum(g.width * g.height for g in good) > KEEP_DECODED_PIXELS:
            good[-1].rgb = None
    if bad:
        raise UploadRejected(bad)
    return good


def _decode(data: bytes, name: str) -> tuple[np.ndarray, str]:
    """The checked RGB pixels of an upload and its file format (ImageError when it is no usable image)."""
    return np.asarray(open_image(data, name=name)), _format_of(data)


_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"BM": "BMP", b"II*\x00": "TIFF",
          b"MM\x00*": "TIFF"}  # the file's first bytes -> its format


def _format_of(data: bytes) -> str:
    return next((fmt for magic, fmt in _MAGIC.items() if data.startswith(magic)), "PNG")
