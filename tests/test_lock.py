"""The environment the tests run in is the one requirements.lock describes.

`make install` installs the lock; these tests catch an environment that drifted from it (a package
upgraded by hand, a lock edited without reinstalling, a lock that no longer satisfies pyproject.toml).
"""

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)\s*(?:;\s*(.+))?$")


def lock_pins(text: str) -> dict[str, str]:
    """Pinned version per package, for the entries whose environment marker holds here."""
    pins: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"{LOCK.name}:{lineno}: not a `name==version [; marker]` pin: {line!r}"
        name, version, marker = m.groups()
        if marker and not Requirement(f"{name}; {marker}").marker.evaluate():
            continue
        key = canonicalize_name(name)
        assert key not in pins, f"{LOCK.name}:{lineno}: {name} is pinned twice for this environment"
        pins[key] = version
    return pins


def direct_requirements() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    own = canonicalize_name(project["name"])
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != own and (r.marker is None or r.marker.evaluate())]


def test_lock_pin_parser_applies_markers():
    text = "a==1.0\nb==2.0 ; python_version < '3'\nb==3.0 ; python_version >= '3'\n    # via a\n"
    assert lock_pins(text) == {"a": "1.0", "b": "3.0"}


def test_lock_satisfies_pyproject():
    pins = lock_pins(LOCK.read_text())
    for req in direct_requirements():
        key = canonicalize_name(req.name)
        assert key in pins, (f"{req.name} is a direct requirement in pyproject.toml but not in {LOCK.name}: "
                             "run `make lock`")
        assert req.specifier.contains(pins[key], prereleases=True), (
            f"{LOCK.name} pins {req.name}=={pins[key]}, outside pyproject.toml's {req}: run `make lock`"
        )


def test_direct_dependencies_installed_at_locked_versions():
    pins = lock_pins(LOCK.read_text())
    drift = []
    for req in direct_requirements():
        key = canonicalize_name(req.name)
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != pins[key]:
            drift.append(f"{req.name}: installed {installed}, {LOCK.name} pins {pins[key]}")
    assert not drift, "environment differs from the lock (run `make install`): " + "; ".join(drift)


def test_whole_lock_installed():
    """Transitive pins too: torch's CUDA wheels, huggingface-hub, pyarrow, ..."""
    drift = []
    for key, version in lock_pins(LOCK.read_text()).items():
        try:
            installed = importlib.metadata.version(key)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != version:
            drift.append(f"{key}: installed {installed}, {LOCK.name} pins {version}")
    assert not drift, "environment differs from the lock (run `make install`): " + "; ".join(drift)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_install_is_up_to_date_and_lock_edits_reinstall():
    """`make install` is a no-op now, and would reinstall after the lock or pyproject.toml changes."""
    if not (ROOT / ".venv" / ".installed").exists():
        pytest.skip("not running in the .venv that `make install` builds")

    def question(*args: str) -> int:
        return subprocess.run(["make", "-q", *args, "install"], cwd=ROOT, capture_output=True).returncode

    assert question() == 0
    assert question("-W", "requirements.lock") == 1
    assert question("-W", "pyproject.toml") == 1
