"""Write a file so that, at any instant, it holds either the old content or the new, whole.

A caption file half-written when the disk fills up or the laptop's battery dies is worse than
no file: a training run reads it as a real caption. So every output goes through here:

0. refuse a target that is a symbolic link or not a regular file: a caption is never written
   through a link (``photo0.txt -> photo1.jpg`` would destroy the photo) nor over a folder,
1. write to a hidden temporary file in the same folder (same disk, so the rename is atomic;
   hidden, so folder scans pass over a leftover one after a power cut; short, so a target
   whose own name just fits is never refused for its temporary file's name),
2. flush and fsync it (the bytes are on disk before the name points at them),
3. give it the permission bits of the file it replaces,
4. ``os.replace`` it over the target (atomic on POSIX and Windows),
5. fsync the folder, where the OS allows it, so the rename itself survives a power cut.

Any failure removes the temporary file, leaves the old file untouched, and raises
:class:`OutputError` naming the file and the reason in plain words.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the folder is on a read-only disk",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "the folder does not exist",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EIO: "the disk reported an input/output error",
}


class OutputError(Exception):
    """An output file could not be written; the message names the file and the reason."""

    def __init__(self, path: Path | str | None, reason: str) -> None:
        super().__init__(f"could not write {path}: {reason}" if path is not None else reason)
        self.path = Path(path) if path is not None else None
        self.reason = reason


def describe_os_error(exc: OSError) -> str:
    """Plain words for the OS errors a user can act on (free space, rights, read-only media)."""
    return _REASONS.get(exc.errno or 0, exc.strerror or str(exc))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write text exactly as given (no newline translation on any OS), atomically."""
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError as exc:
        raise OutputError(path, f"the text cannot be encoded as {encoding}: {exc.reason}") from None
    atomic_write_bytes(path, data)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace path with data atomically; on failure the old file is left as it was."""
    target = Path(path)
    mode = existing_file_mode(target)
    temp = _create_temp(target)
    try:
        _write_and_sync(temp, data)
        if mode is not None:
            os.chmod(temp, mode)
        os.replace(temp, target)  # replaces a link that appeared meanwhile, never its target
    except OSError as exc:
        _remove_quietly(temp)
        raise OutputError(target, describe_os_error(exc)) from exc
    except BaseException:
        _remove_quietly(temp)
        raise
    _sync_folder(target.parent)


def existing_file_mode(path: Path) -> int | None:
    """The permission bits of the regular file at path (None when there is none), which the
    new content keeps. A link or anything but a regular file is refused, untouched."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(path, describe_os_error(exc)) from None
    if stat.S_ISLNK(info.st_mode):
        raise OutputError(path, "it is a symbolic link, and captions are never written through "
                                "a link; left unchanged (remove the link to write it)")
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a device, pipe or socket"
        raise OutputError(path, f"it is not a regular file ({kind}); left unchanged")
    return stat.S_IMODE(info.st_mode)


def _create_temp(target: Path) -> Path:
    """A new hidden file beside target, created exclusively (never someone else's file).

    os.open with mode 0o666 lets the umask decide a new file's rights, as for any file the
    user creates (tempfile.mkstemp would make it private to the owner).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp = target.with_name(f".smolvlm-{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(temp, flags, 0o666))
            return temp
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(target, describe_os_error(exc)) from exc
    raise OutputError(target, "could not create a temporary file beside it")


def _write_and_sync(temp: Path, data: bytes) -> None:
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_folder(folder: Path) -> None:
    """Make the rename durable. Best effort: Windows cannot open a folder, and the new file
    is already in place, so a failure here is not worth failing the write for."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(temp: Path) -> None:
    try:
        temp.unlink()
    except OSError:
        pass
