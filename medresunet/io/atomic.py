"""Atomic file output: write to a temporary file beside the target, fsync, rename.

A reader never sees a half-written file under its final name, and an interrupted
write (SIGKILL, full disk) leaves the previous version intact.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


def temporary_path_for(target: Path) -> Path:
    """A fresh, unique temporary path in ``target``'s folder keeping its suffixes.

    Keeping the suffixes (``.nii.gz``) lets format libraries that choose the encoding
    from the name write the temporary file correctly. The name starts with ``.tmp-``
    so that scan discovery and case pairing ignore leftovers of a killed process.
    """
    target = Path(target)
    suffix = "".join(target.suffixes[-2:]) if target.suffixes else ""
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=target.parent)
    os.close(fd)
    return Path(name)


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: the only portable read is set-and-restore
    os.umask(mask)
    return mask


def final_mode_for(target: Path) -> int:
    """The permission bits a plain ``open(target, "w")`` would leave on ``target``.

    An existing file keeps its mode; a new one gets ``0o666`` less the umask. ``mkstemp``
    creates 0600 files whatever the umask, which would make every output private to its
    writer (on a shared cluster, colleagues could not read predictions or checkpoints).
    """
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return 0o666 & ~_current_umask()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success fsync it and rename it onto ``target``.

    The caller writes the whole file to the yielded path (with any library). If the
    block raises, the temporary file is removed and ``target`` is left untouched; an
    ``OSError`` (e.g. ENOSPC, EROFS) is re-raised with ``target`` as its file name.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path_for(target)
    except OSError as err:
        if err.errno is None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(target)) from err
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fchmod(fh.fileno(), final_mode_for(target))
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as err:  # full disk, read-only folder...: name the target, not the temporary
        with contextlib.suppress(OSError):
            tmp.unlink()
        if err.errno is None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(target)) from err
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and return the target path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``target`` atomically and return the target path."""
    return write_bytes_atomic(target, text.encode("utf-8"))
