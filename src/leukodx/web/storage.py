"""Upload storage: every file is kept under the SHA-256 of its content, never under the client's name.

Writes go to a temporary file in the same folder, are fsynced and renamed into place, so a crash leaves
either the whole file or a `.tmp-*` leftover that `sweep` removes at the next start.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

NAME_RE = re.compile(r"^[0-9a-f]{64}\.(jpg|png|tif|bmp)$")
EXT_FOR_FORMAT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "TIFF": "tif", "BMP": "bmp"}
MEDIA_TYPES = {"jpg": "image/jpeg", "png": "image/png", "tif": "image/tiff", "bmp": "image/bmp"}


@cache
def _fsync_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="fsync")


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    # `sweep` leaves files younger than this alone: 0 for one server on SQLite (nothing else writes while it
    # starts); `leukodx serve` on PostgreSQL sets it, since other processes or PCs may be storing files then
    sweep_min_age_s: float = 0.0

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put_all(self, items: list[tuple[bytes, str]]) -> list[str]:
        """Store several files (an upload's image and overlay): all are written, then fsynced at once (the
        file system commits them together: about the latency of one fsync instead of one per file), renamed
        into place, and their names made durable with one fsync of the folder."""
        names: list[str] = []
        pending: list[tuple] = []  # (file object, temporary path, target)
        try:
            for data, ext in items:
                name = f"{hashlib.sha256(data).hexdigest()}.{ext}"
                names.append(name)
                target = self.root / name
                if self._already_there(target, len(data)):
                    continue
                fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.root)
                fh = os.fdopen(fd, "wb")
                pending.append((fh, tmp, target))
                fh.write(data)
                fh.flush()
            if len(pending) > 1:
                list(_fsync_pool().map(os.fsync, [fh.fileno() for fh, _, _ in pending]))
            elif pending:
                os.fsync(pending[0][0].fileno())
            for fh, tmp, target in pending:
                fh.close()
                os.replace(tmp, target)
        except BaseException:
            for fh, tmp, _ in pending:
                fh.close()
                Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(self.root)
        return names

    @staticmethod
    def _already_there(target: Path, size: int) -> bool:
        """The same content is stored already (content-hash name and size): refresh its time, so that another
        process's start-up sweep does not take it for a leftover, and store nothing."""
        try:
            if target.stat().st_size != size:
                return False
            os.utime(target)
            return True
        except OSError:
            return False

    def put(self, data: bytes, ext: str) -> str:
        """Store `data`; returns its name `<sha256>.<ext>`. Storing the same bytes twice is a no-op."""
        return self.put_all([(data, ext)])[0]

    def path(self, name: str) -> Path | None:
        """The path of a stored file, or None for a name that is not a stored file's name."""
        if not NAME_RE.match(name):
            return None
        p = self.root / name
        return p if p.is_file() else None

    def delete(self, name: str) -> None:
        if NAME_RE.match(name):
            (self.root / name).unlink(missing_ok=True)

    def sweep(self, referenced: set[str]) -> list[str]:
        """Remove leftovers of interrupted writes and files no database row refers to (older than
        `sweep_min_age_s`: a file another process is storing right now is not a leftover)."""
        removed = []
        cutoff = time.time() - self.sweep_min_age_s
        for p in self.root.iterdir():
            if p.is_file() and (p.name.startswith(".tmp-") or (NAME_RE.match(p.name) and p.name not in referenced)):
                try:
                    if self.sweep_min_age_s and p.stat().st_mtime > cutoff:
                        continue
                except FileNotFoundError:
                    continue
                p.unlink(missing_ok=True)
                removed.append(p.name)
        return removed
