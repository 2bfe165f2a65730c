"""Moving a verified export into place without a moment when the path holds no model, and cleaning up after
an export that was killed.

An export is written into a hidden temporary directory beside the target (``.NAME.export-tmp-XXXX``) whose
sibling ``.lock`` file its process holds (``flock``) until it is done, so a later run can tell a dead
export's leftovers from a live one's. Replacing an existing export swaps the two directories in one
``renameat2(RENAME_EXCHANGE)`` on Linux: at every instant the path is the old export or the new one. Where
that call is missing (other systems, some filesystems) the old export is renamed aside
(``.NAME.old-XXXX``) and the new one renamed in; ``recover_leftovers`` restores the old one if a kill
came between the two.

Before any work, ``check_target`` refuses a target whose replacement could lose data (a symlink, a file, a
non-empty directory without ``overwrite``, one that is not a model directory, the working or home directory).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from ..errors import ExportError
from ..paths import too_little_space, unwritable
from ..pruning_info import PRUNING_INFO_FILE

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


# ====================================================================== target checks and the final move
def check_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse targets whose replacement could lose data; called before any work is done. First restores or
    removes what an interrupted export left beside ``out_dir`` (and says so)."""
    for message in recover_leftovers(out_dir):
        warnings.warn(f"export recovery: {message}", stacklevel=3)
    if out_dir.is_symlink():
        raise ExportError(f"output path {out_dir} is a symlink; pass the real directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output path {out_dir} exists and is not a directory")
    if out_dir.parent == out_dir:
        raise ExportError(f"output path {out_dir} is a filesystem root")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise ExportError(f"output directory {out_dir} exists and is not empty; pass --overwrite "
                          "(overwrite=True) to replace it, or choose another directory")
    if not ((out_dir / "config.json").is_file() or (out_dir / PRUNING_INFO_FILE).is_file()):
        raise ExportError(f"refusing to replace {out_dir}: it does not look like a model directory "
                          "(no config.json or pruning_info.json); remove it yourself if that is intended")
    cwd = Path(os.path.abspath(os.getcwd()))
    home = Path(os.path.abspath(os.path.expanduser("~")))
    if out_dir in (cwd, home) or out_dir in cwd.parents or out_dir in home.parents:
        raise ExportError(f"refusing to replace {out_dir}: it is or contains the working or home directory")


def make_parents(parent: Path) -> list[Path]:
    """Create missing parent directories; return those created (outermost first) so a failure can remove them."""
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    missing.reverse()
    for p in missing:
        try:
            p.mkdir()
        except OSError as exc:
            raise ExportError(f"cannot create the output's parent directory {p}: {exc}") from exc
    return missing


def check_writable(directory: Path) -> None:
    """A file can be created in ``directory`` (or its nearest existing ancestor): a read-only filesystem is
    reported as such, not as a lack of free space."""
    problem = unwritable(directory)
    if problem:
        raise ExportError(problem)


def check_free_space(parent: Path, needed: int) -> None:
    check_writable(parent)
    problem = too_little_space(parent, needed)
    if problem:
        raise ExportError(f"not enough free space in {parent}: {problem}")


def apply_umask(root: Path) -> None:
    """mkdtemp (and safetensors) create private files; give the export the modes a normal write would."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def install(held: TempExportDir, out_dir: Path, overwrite: bool) -> None:
    """Move the verified export into place. An existing export is swapped out in one atomic exchange where the
    system has one; otherwise it is moved aside first and deleted only afterwards (``export.install``)."""
    tmp = held.path
    old: Path | None = None
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:  # something appeared since the first check
            raise ExportError(f"output directory {out_dir} became non-empty during the export; nothing was changed")
        check_target(out_dir, overwrite)
        if swap_into_place(held, out_dir):
            return
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{OLD_MARK}", dir=out_dir.parent))
        os.replace(out_dir, old)  # replaces the empty placeholder directory
    try:
        os.replace(tmp, out_dir)  # replaces out_dir only if it is an empty directory
        held.release(remove=False)
    except OSError as exc:
        if old is not None:
            try:
                os.replace(old, out_dir)
            except OSError as exc2:
                raise ExportError(f"could not move the export into {out_dir} ({exc}) nor move the previous "
                                  f"contents back ({exc2}); they are intact in {old}") from exc
        raise ExportError(f"could not move the export into {out_dir}: {exc}; the previous contents are intact") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        if old.exists():
            warnings.warn(f"the previous export was replaced but {old} could not be fully removed", stacklevel=3)


def check_export_target(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Raise ``ExportError`` now if ``out_dir`` could not be written (e.g. before loading a large checkpoint)."""
    out_dir = Path(os.path.abspath(os.fspath(out_dir)))
    check_target(out_dir, overwrite)
    check_writable(out_dir.parent)
    return out_dir
