"""Moving a verified export into place without a moment when the path holds no model, and cleaning up after
an export that was killed.

An export is written into a hidden temporary directory beside the target (``.NAME.export-tmp-XXXX``) whose
sibling ``.lock`` file its process holds (``flock``) until it is done, so a later run can tell a dead
export's leftovers from a live one's. Replacing an existing export swaps the two directories in one
``renameat2(RENAME_EXCHANGE)`` on Linux: at every instant the path is the old export or the new one. Where
that call is missing (other systems, some filesystems) the old export is renamed aside
(``.NAME.old-XXXX``) and the new one renamed in; ``recover_leftovers`` restores the old one if a kill
came between the two.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from pathlib import Path

TMP_MARK = ".export-tmp-"
OLD_MARK = ".old-"
LOCK_SUFFIX = ".lock"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _lock_file(tmp: Path) -> Path:
    return tmp.with_name(tmp.name + LOCK_SUFFIX)


class TempExportDir:
    """``.NAME.export-tmp-XXXX`` beside ``out_dir``, held (flock on its ``.lock`` sibling) while it lives."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{TMP_MARK}", dir=out_dir.parent))
        self._fd: int | None = None
        try:
            import fcntl

            self._fd = os.open(_lock_file(self.path), os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): leftovers are then recognised by age only
            self._fd = None

    def release(self, remove: bool) -> None:
        """Remove the directory (when ``remove``, e.g. after a failure) and the lock."""
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        _lock_file(self.path).unlink(missing_ok=True)


def _is_held(tmp: Path) -> bool:
    """True while the export that owns ``tmp`` is alive (its lock cannot be taken)."""
    lock = _lock_file(tmp)
    if not lock.exists():
        return False
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_into_place(tmp: TempExportDir, out_dir: Path) -> bool:
    """Exchange the new export with the existing ``out_dir``; the old one is then deleted. False if the
    system cannot exchange (the caller falls back to two renames)."""
    if not exchange(tmp.path, out_dir):
        return False
    tmp.release(remove=True)  # tmp.path now holds the previous export
    return True


def _size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def recover_leftovers(out_dir: Path) -> list[str]:
    """Restore or remove what killed exports to ``out_dir`` left beside it; returns one line per action."""
    parent = out_dir.parent
    if not parent.is_dir():
        return []
    done: list[str] = []
    olds = sorted((p for p in parent.glob(f".{out_dir.name}{OLD_MARK}*") if p.is_dir()),
                  key=lambda p: p.stat().st_mtime)
    for old in olds:
        present = out_dir.is_dir() and any(out_dir.iterdir())
        if not present and (old / "config.json").is_file():
            os.replace(old, out_dir)  # onto a missing or empty directory
            done.append(f"restored the previous export {out_dir} from {old}, where an interrupted replacement "
                        "left it")
        else:
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old}: a previous export that an interrupted replacement left beside {out_dir}")
    for tmp in parent.glob(f".{out_dir.name}{TMP_MARK}*"):
        if tmp.name.endswith(LOCK_SUFFIX) or not tmp.is_dir() or _is_held(tmp):
            continue
        size = _size_mib(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        _lock_file(tmp).unlink(missing_ok=True)
        done.append(f"removed {tmp}: the temporary files of an interrupted export ({size:.0f} MiB)")
    for lock in parent.glob(f".{out_dir.name}{TMP_MARK}*{LOCK_SUFFIX}"):
        if not lock.with_name(lock.name[: -len(LOCK_SUFFIX)]).exists():
            lock.unlink(missing_ok=True)
    return done
