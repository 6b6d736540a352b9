"""Where live findings go: an append-only JSONL alerts file that survives log rotation and kill -9."""
from __future__ import annotations

import os
import threading
from pathlib import Path

from egressguard.errors import CaptureError
from egressguard.report.jsonl import dumps


class AlertsFile:
    """Appends one JSON line per record with a single write(2) on an O_APPEND descriptor.

    Each line reaches the kernel before `write` returns, so a kill -9 can lose no complete line and cannot leave a
    half line behind except on power loss; at open, a file whose last line lacks its newline (a crash mid-write of an
    older writer) gets one, so the next record starts on its own line. When logrotate moves or deletes the file, the
    next write notices (the path names another inode, or none) and reopens the path.
    """

    def __init__(self, path: str | Path, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd = -1
        self._ino: tuple[int, int] | None = None
        self._open()

    def _open(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise CaptureError(str(self.path), f"cannot open the alerts file for appending: "
                                               f"{exc.strerror or exc}") from None
        st = os.fstat(fd)
        if st.st_size:
            with open(self.path, "rb") as f:
                f.seek(st.st_size - 1)
                if f.read(1) != b"\n":
                    os.write(fd, b"\n")
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)

    def _rotated(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._ino

    def write(self, record: dict) -> None:
        """Append one record as one line (raises CaptureError when the file can no longer be written)."""
        line = (dumps(record) + "\n").encode("utf-8")
        with self._lock:
            if self._rotated():
                os.close(self._fd)
                self._open()
            try:
                view = memoryview(line)
                while view:  # a regular file takes it whole; loop only for the pathological short write
                    view = view[os.write(self._fd, view):]
                if self.fsync:
                    os.fsync(self._fd)
            except OSError as exc:
                raise CaptureError(str(self.path), f"cannot write an alert: {exc.strerror or exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
