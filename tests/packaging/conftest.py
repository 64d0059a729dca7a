"""`make dist` once per test session, from a clean clone of the checkout's HEAD.

The artifacts are cached under `.cache/dist/<hash of the sources they are built from>/`
(gitignored), so a second session on the same commit reuses them. Uncommitted changes
are not in a clone: commit before trusting these tests.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["truckllm", "packaging", "pyproject.toml", "Makefile", "README.md"]


@dataclass(frozen=True)
class Built:
    executable: Path
    wheel: Path
    contents: list[str]         # what the executable carries (pyi-archive_viewer)


def _source_hash() -> str | None:
    listing = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "HEAD", "--", *SOURCES],
                             capture_output=True, text=True, check=False)
    if listing.returncode != 0 or not listing.stdout:
        return None
    return hashlib.sha256(f"{sys.version}\n{listing.stdout}".encode()).hexdigest()[:20]


def _build(cache: Path, scratch: Path) -> None:
    clone = scratch / "clone"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    result = subprocess.run(["make", "-C", str(clone), "dist"], capture_output=True, text=True,
                            check=False, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    built = clone / "dist"
    viewer = clone / ".venv" / "bin" / "pyi-archive_viewer"
    contents = subprocess.run([str(viewer), "-r", "-b", str(built / "truckllm")],
                              capture_output=True, text=True, check=True).stdout
    staging = cache.parent.with_name(cache.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(built / "truckllm", staging / "truckllm")
    for wheel in built.glob("*.whl"):
        shutil.copy2(wheel, staging / wheel.name)
    (staging / "contents.txt").write_text(contents)
    cache.parent.mkdir(parents=True, exist_ok=True)
    for stale in cache.parent.iterdir():     # builds of older sources
        shutil.rmtree(stale, ignore_errors=True)
    staging.rename(cache)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    key = _source_hash()
    if key is None:
        pytest.skip("not a git checkout: the build test clones HEAD")
    cache = ROOT / ".cache" / "dist" / key
    cache.parent.mkdir(parents=True, exist_ok=True)
    # Each test worker (pytest-xdist) runs this session fixture, and so may a second test
    # run in this checkout: one builds while the others wait on the lock, then reuse it.
    with (cache.parent.parent / "dist.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cache / "contents.txt").is_file():
            _build(cache, tmp_path_factory.mktemp("dist-build"))
    wheels = sorted(cache.glob("truckllm-*.whl"))
    assert len(wheels) == 1, wheels
    contents = [line.strip() for line in (cache / "contents.txt").read_text().splitlines()]
    return Built(cache / "truckllm", wheels[0], contents)
