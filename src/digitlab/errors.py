"""The one exception type whose message a user sees as a single line, and that line for a file
operation that failed."""

from __future__ import annotations

import errno
import os
from pathlib import Path

# Reasons worth more words than strerror gives: what the user can do about them.
REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large: the file-size limit of this process (ulimit -f) is reached",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.ENOTDIR: "a file is where a folder is needed",
}


class DigitlabError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def os_reason(exc: OSError) -> str:
    """Why a file operation failed, in words ('no space left on the device')."""
    if exc.errno == errno.EEXIST and exc.filename and os.path.isfile(exc.filename):
        return REASONS[errno.ENOTDIR]  # mkdir of a folder a file stands in for
    return REASONS.get(exc.errno or 0) or exc.strerror or type(exc).__name__


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the file(s) it names and the reason."""
    names = [str(name) for name in (exc.filename, exc.filename2) if name is not None]
    where = " → ".join(os.path.relpath(n) if os.path.isabs(n) else n for n in names)
    return f"{where or 'a file operation'}: {os_reason(exc)}"


def write_error(path: str | Path, exc: OSError) -> DigitlabError:
    """A failed write of `path` (the output, not its temporary file), with the reason."""
    return DigitlabError(f"{path}: cannot be written ({os_reason(exc)})")
