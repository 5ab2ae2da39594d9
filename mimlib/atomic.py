"""Safe file handling: one atomic writer, a clear error on a full disk, locks, write checks, orphans.

* :func:`write_atomic` writes to a temporary name in the same folder, then renames over the target:
  a reader (or a process killed mid-write) sees the old file or the new one, never half of one. The
  file gets the usual permissions of a new file (0666 less the process umask), not ``mkstemp``'s 0600,
  so a shared results or runs folder stays readable to others.
* A write that fails because the disk is full raises :class:`DiskFullError` naming the file (the
  target keeps its previous content; the temporary file is removed).
* :func:`file_lock` holds an exclusive ``fcntl.flock`` on a lock file for a block, writing the
  holder's process id into it; a second process waits, saying which process it waits for. The kernel
  releases the lock when its holder ends, even by ``kill -9``, so a lock is never stale.
* :func:`check_writable` tells, before any work, whether a folder can be written (naming it).
* :func:`remove_orphans` deletes the temporary files that a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["write_atomic", "replace_atomic", "DiskFullError", "is_disk_full", "disk_full_error", "file_lock", "check_writable",
           "remove_orphans"]

#: errno values of a full disk (or a full quota).
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(OSError):
    """A write failed because the disk is full; the message names the file and what to do."""

    def __str__(self) -> str:
        return str(self.strerror)


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or an exception it was raised from) reports a full disk: ``OSError`` ENOSPC /
    EDQUOT, or torch's ``RuntimeError`` of a short write ("unexpected pos", "file write failed")."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return True
        if isinstance(e, RuntimeError) and any(s in str(e) for s in ("unexpected pos", "file write failed")):
            return True
        e = e.__cause__ or e.__context__
    return False


def _free(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2 ** 20:.1f} MiB free there now"
    except OSError:
        return "free space unknown"


def disk_full_error(path: str | os.PathLike, cause: BaseException, then: str = "") -> DiskFullError:
    """The :class:`DiskFullError` of a failed write of ``path``; ``then`` says what happens on a re-run."""
    path = Path(path)
    then = then or ("run the same command again once space is freed (finished work is kept: it is loaded "
                    "or resumed, not redone)")
    msg = (f"cannot write {path}: the disk is full (no space left on the device of {path.parent}; "
           f"{_free(path.parent)}). {path.name} keeps its previous content, if it had one. Free some space, "
           f"then {then}. ({type(cause).__name__}: {cause})")
    return DiskFullError(errno.ENOSPC, msg, str(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_atomic(path: str | os.PathLike, write: Callable[[str], object], prefix: str | None = None,
                   then: str = "") -> Path:
    """Atomically replace ``path`` by what ``write(tmp)`` writes to a temporary file beside it (named
    ``prefix``..."tmp", default ``.<name>.``), creating the folder; the file gets 0666 less the umask.
    A full disk raises :class:`DiskFullError` (``path`` unchanged; ``then`` says what a re-run does)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}." if prefix is None else prefix,
                                   suffix=".tmp")
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(path, e, then) from e
        raise
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full_error(path, e, then) from e
        raise
    return path


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically (:func:`replace_atomic`); returns the path."""
    return replace_atomic(path, lambda tmp: Path(tmp).write_bytes(data.encode() if isinstance(data, str) else data))


# ----------------------------------------------------------------------------- locks

_held: dict[tuple[str, int], list] = {}   # (lock file, thread) -> [fd, depth]: re-entrant within a thread
_held_guard = threading.Lock()


def _holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        text = ""
    return f"process {text}" if text else "another process"


@contextlib.contextmanager
def file_lock(lock_path: str | os.PathLike, what: str = "", wait: bool = True) -> Iterator[bool]:
    """An exclusive advisory lock (``fcntl.flock``) on ``lock_path`` for the block; yields True.

    The holder writes its process id (and host) into the file. If another process holds it, a line
    naming that process and ``what`` is printed and the call waits; with ``wait=False`` it yields
    False at once instead (the block then runs without the lock). Re-entrant within one thread.
    The folder of ``lock_path`` must exist. Where ``fcntl`` or ``flock`` is unavailable (Windows,
    some network file systems) the block runs unlocked, with a warning.
    """
    lock_path = Path(lock_path)
    key = (str(lock_path.resolve()), threading.get_ident())
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
            entered = True
        else:
            entered = False
    if entered:
        try:
            yield True
        finally:
            with _held_guard:
                _held[key][1] -= 1
        return
    try:
        import fcntl
    except ImportError:
        yield True
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            print(f"{what or lock_path.parent} is in use by {_holder(lock_path)} (lock file {lock_path}); "
                  f"waiting for it to finish", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
            print(f"{what or lock_path.parent}: the other process finished; going on", file=sys.stderr, flush=True)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
                raise
            import warnings
            warnings.warn(f"cannot lock {lock_path} ({e}); going on without a lock", stacklevel=3)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        except OSError:
            pass   # the pid is only for the waiting message
        with _held_guard:
            _held[key] = [fd, 1]
        try:
            yield True
        finally:
            with _held_guard:
                del _held[key]
    finally:
        os.close(fd)   # releases the flock


# ----------------------------------------------------------------------------- folders


def check_writable(folder: str | os.PathLike, what: str = "folder") -> Path:
    """Raise ``OSError`` (``PermissionError``, ``NotADirectoryError``, ...) naming ``folder`` unless a
    file can be created in it, or, if it does not exist yet, in its nearest existing parent (then
    nothing is created). The check creates and removes one empty temporary file. Returns the folder."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{probe} is a file, not a folder")
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".mimlib-write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        where = "" if probe == folder else f" (it does not exist and cannot be created in {probe})"
        raise OSError(e.errno, f"the {what} {folder} is not writable{where}: {e.strerror or e}. Make it "
                               f"writable or choose another folder; nothing was trained or written",
                      str(folder)) from e
    return folder


def remove_orphans(folder: str | os.PathLike, patterns: tuple[str, ...] = ("*.tmp",),
                   older_than: float | None = None) -> list[Path]:
    """Delete the files of ``folder`` matching ``patterns`` (temporary files of writers that were
    killed). Call it while no other writer can be at work in ``folder`` (under its lock), or pass
    ``older_than`` (seconds since the file was last modified): a live writer's temporary file is
    younger than that. Returns what was removed; a file that cannot be removed is left."""
    import time

    removed = []
    folder = Path(folder)
    for pattern in patterns:
        for p in folder.glob(pattern):
            try:
                if p.is_file() and (older_than is None or time.time() - p.stat().st_mtime > older_than):
                    p.unlink()
                    removed.append(p)
            except OSError:
                pass
    return removed
