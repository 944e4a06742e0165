"""The one way coins-sync reads a file it is given: bounded, and regular files only.

A state, a journal, a saved plan, an import file, a rule file or an audit log may be
anything a path can name: a FIFO (reading it waits forever for a writer), a device such
as ``/dev/zero`` (reading it never ends and fills the memory), a folder, or a regular
file far larger than any real one. :func:`read_input` refuses all of these with an
:class:`InputFileError` (an ``OSError`` whose ``strerror`` says why, so every caller's
"cannot read FILE: ..." message stays as it is) before reading a byte, and never reads
more than its limit. :func:`loads_json` is JSON that is also text: a lone UTF-16
surrogate escape (``"\\ud800"``) parses in Python but can never be printed or written
back as UTF-8, so it is refused as a ``ValueError`` like any other malformed JSON.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import IO, Any

#: A state, journal, rescue file, saved plan or import file larger than this is refused
#: (100,000 rules make a state of about 20 MB).
MAX_DATA_BYTES = 256 * 1024 * 1024
#: A pyproject.toml larger than this is refused.
MAX_SETTINGS_BYTES = 16 * 1024 * 1024
#: A line of an audit log longer than this is not a record (it is counted as unreadable).
MAX_LINE_BYTES = 1024 * 1024

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class InputFileError(OSError):
    """A file coins-sync will not read: not a regular file, or over its size limit."""


def open_input(path: Path) -> IO[bytes]:
    """``path`` open for reading in binary, or an :class:`InputFileError` when it is not a
    regular file. Opening never blocks, not even on a FIFO without a writer."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
            raise InputFileError(
                errno.EINVAL, f"not a regular file ({kind}); refusing to read it", str(path)
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: Path) -> None:
    """Raise :class:`InputFileError` unless ``path`` is a regular file (see
    :func:`open_input`); for a file that is locked before it is read."""
    open_input(path).close()


def read_input(path: Path, limit: int = MAX_DATA_BYTES) -> bytes:
    """Every byte of the regular file ``path``; an :class:`InputFileError` when it is not
    one or holds more than ``limit`` bytes. ``FileNotFoundError`` passes through."""
    with open_input(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise InputFileError(
            errno.EFBIG,
            f"over the {limit:,}-byte limit ({max(size, len(data)):,} bytes); refusing to read it",
            str(path),
        )
    return data


def loads_json(raw: bytes | str) -> Any:
    """``json.loads``, refusing a lone surrogate escape with a ``ValueError``."""
    data = json.loads(raw)
    probe = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if _SURROGATE_ESCAPE.search(probe):  # rare: only then is every string checked
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"a lone surrogate escape (\\u{ord(e.object[e.start]):04x}) is not text"
            ) from None
    return data
