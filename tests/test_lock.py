"""requirements.lock: exact versions of every dependency, the ones `make install` (and so CI) installs."""

import tomllib
from importlib.metadata import PackageNotFoundError, distribution

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .helpers import ROOT


def pins() -> dict[str, tuple[str, Marker | None]]:
    """Package -> (version, marker) for the lines whose marker holds here (the lock is for every platform)."""
    found = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        assert len(requirement.specifier) == 1 and next(iter(requirement.specifier)).operator == "==", line
        if requirement.marker is None or requirement.marker.evaluate():
            found[canonicalize_name(requirement.name)] = next(iter(requirement.specifier)).version
    return found


def test_every_direct_requirement_is_pinned_within_what_pyproject_allows():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = pins()
    for line in project["dependencies"] + project["optional-dependencies"]["dev"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), (line, locked[name])


def test_the_environment_is_the_lock_and_the_lock_is_closed():
    """What is installed is what the lock says, and every installed package's own requirements are in the
    lock: nothing came from outside it."""
    locked = pins()
    for name, version in locked.items():
        try:
            installed = distribution(name)
        except PackageNotFoundError:
            raise AssertionError(f"{name}=={version} is locked but not installed: run `make install`") from None
        assert installed.version == version, f"{name}: installed {installed.version}, locked {version}"
        for line in installed.requires or []:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue  # another platform's, or an extra nobody asked for
            assert canonicalize_name(requirement.name) in locked, f"{name} needs {line}, which the lock lacks"
