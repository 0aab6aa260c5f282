"""Do the carried wheels and the GPU image together meet every requirement of this project?

    python experiments/gpu/check_wheels.py            # here, after fetch_wheels.sh: exit 1 if not
    python experiments/gpu/check_wheels.py --needed   # there: the .whl/ files this python needs

The first form resolves the project's dependencies (pyproject.toml) and each carried wheel's own
requirements (its METADATA, with the extras the project asks for) against the image's package
list (`image_packages.txt`) overlaid with the wheels (`wheels.txt`), for python 3.12 on Linux, and
checks one file per pinned wheel and their total size. A package the list names without a version
counts as present at an unknown version (said in the table). `--needed` prints the wheel files
whose package this interpreter lacks, or has at a version the project does not accept: what the
first GPU run installs.
"""
from __future__ import annotations

import argparse
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WHEELS = ROOT / ".whl"
BUDGET_MIB = 40  # the carried wheels' share of the 64 MiB that may travel with the working tree
TARGET = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
          "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
          "implementation_name": "cpython"}
# Project requirements the run does not need and the kit does not carry (with why).
NOT_CARRIED = {"imageio-ffmpeg": "68 MB; only `vreason synth` writes clips with it: fetch_wheels.sh writes them here"}


def pins(path: Path) -> dict[str, Version | None]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = Version(version) if version else None
    return out


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def wheel_files() -> dict[str, Path]:
    return {canonicalize_name(p.name.split("-")[0]): p for p in sorted(WHEELS.glob("*.whl"))}


def wheel_requirements(wheel: Path, extras: set[str]) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    keep = []
    for req in reqs:
        if req.marker is None or any(req.marker.evaluate({**TARGET, "extra": e}) for e in extras | {""}):
            keep.append(req)
    return keep


def check() -> int:
    image, carried = pins(HERE / "image_packages.txt"), pins(HERE / "wheels.txt")
    files = wheel_files()
    problems = [f"no .whl file for {name}=={v} (run experiments/gpu/fetch_wheels.sh)" for name, v in carried.items()
                if name not in files]
    problems += [f"{p.name} is not listed in wheels.txt" for name, p in files.items() if name not in carried]
    size = sum(p.stat().st_size for p in files.values()) / 2**20
    if size > BUDGET_MIB:
        problems.append(f"the wheels take {size:.1f} MiB, over their {BUDGET_MIB} MiB share")
    env = {**image, **carried}
    extras_of = {canonicalize_name(r.name): set(r.extras) for r in project_requirements()}
    queue = [("pyproject.toml", r) for r in project_requirements()
             if r.marker is None or r.marker.evaluate({**TARGET, "extra": ""})]
    queue += [(p.name, r) for name, p in files.items() for r in wheel_requirements(p, extras_of.get(name, set()))
              if canonicalize_name(r.name) != name]  # an extra naming its own package
    rows = []
    for source, req in queue:
        name = canonicalize_name(req.name)
        where = "wheel" if name in carried else "image"
        if name in NOT_CARRIED and name not in env:
            rows.append((source, str(req), f"not carried: {NOT_CARRIED[name]}"))
        elif name not in env:
            rows.append((source, str(req), "MISSING"))
            problems.append(f"{req} ({source}) is neither in the image nor carried")
        elif env[name] is None:
            rows.append((source, str(req), f"{where}, version unknown"))
        elif req.specifier.contains(env[name], prereleases=True):
            rows.append((source, str(req), f"{where} {env[name]}"))
        else:
            rows.append((source, str(req), f"{where} {env[name]}: UNMET"))
            problems.append(f"{req} ({source}): the {where} has {env[name]}")
    print("| required by | requirement | met by |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n{len(files)} wheels, {size:.1f} MiB: " + ("; ".join(problems) if problems else "every requirement resolves"))
    return 1 if problems else 0


def needed() -> int:
    """The wheel files whose package this interpreter lacks or has at a version outside the
    project's requirement for it (a carried package the project does not name: when missing)."""
    specs = {canonicalize_name(r.name): r.specifier for r in project_requirements()}
    for name, path in wheel_files().items():
        try:
            have = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            print(path)
            continue
        if name in specs and not specs[name].contains(have, prereleases=True):
            print(path)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--needed", action="store_true", help="print the wheel files this interpreter needs")
    sys.exit(needed() if parser.parse_args().needed else check())
