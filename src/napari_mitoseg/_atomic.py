"""Writing without loss: every output is written under a temporary name beside its place and
moved there only when complete, so a crash or Ctrl+C never leaves half a file where a good one
was; outputs that would overwrite an input are refused before any work."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ._paths import WriteError, as_path, same_file


def check_not_input(out: str | os.PathLike, inputs: Iterable, what: str = "output",
                    whole_folder: bool = False) -> None:
    """Raise :class:`WriteError` when ``out`` is one of ``inputs`` or lies inside an input folder
    (such as a zarr store): writing it would destroy the data being read. ``whole_folder``:
    ``out`` is a folder that replaces the old one whole (a zarr store, a meshes folder), so it
    may not hold an input either (``img.zarr`` for ``img.zarr/0``)."""
    out_p = as_path(out, WriteError)
    for item in inputs:
        if item is None or isinstance(item, (np.ndarray, list, tuple)):
            continue
        src = as_path(item)
        inside = src.is_dir() and out_p.resolve().is_relative_to(src.resolve())
        if same_file(out_p, src):
            raise WriteError(f"the {what} {out_p} is the input {src}; writing it would destroy the "
                             "input: choose another name")
        if inside:
            raise WriteError(f"the {what} {out_p} lies inside the input {src}; writing it would "
                             "change the input: choose a path outside it")
        if whole_folder and src.resolve().is_relative_to(out_p.resolve()):
            raise WriteError(f"the {what} {out_p} holds the input {src}; writing it would replace "
                             "the folder and delete the input: choose a path outside it")


def check_writable_dir(folder: Path) -> None:
    """Raise :class:`WriteError` unless ``folder`` (or, when missing, its nearest existing parent,
    where it would be created) is a folder this process may write to."""
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise WriteError(f"cannot write into {folder}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise WriteError(f"cannot write into {folder}: {probe} is read-only (no write permission)")


@contextlib.contextmanager
def write_errors(path: Path):
    """Turn an OS error while writing ``path`` (disk full, permission) into one clear
    :class:`WriteError`."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise WriteError(f"no space left on the device to write {path}; nothing was written "
                             "(free space or choose another disk)") from exc
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise WriteError(f"cannot write {path}: {exc.strerror}") from exc
        raise


def atomic_file(path: Path, write) -> Path:
    """Run ``write(tmp)`` on a new file beside ``path``, then rename it to ``path``: an old
    file there is replaced only once the new one is complete."""
    with write_errors(path):
        return _atomic_file_unchecked(path, write)


def _atomic_file_unchecked(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: it creates the file owner-only (0600). O_EXCL keeps the name unique and the
    # mode 0666 lets the umask decide, as for a plain open().
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{path.suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_dir(final: Path, write) -> Path:
    """Run ``write(tmpdir)`` on a fresh folder beside ``final``, then swap it in whole: an old
    folder at ``final`` is replaced only once the new one is complete."""
    final = Path(final)
    with write_errors(final):
        return _atomic_dir_unchecked(final, write)


def swap_dir(done: Path, final: Path) -> None:
    """Put the complete folder ``done`` at ``final``; an old folder there is replaced only now."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(done, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(done, final)


def _atomic_dir_unchecked(final: Path, write) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        tmp.chmod(0o755)
        write(tmp)
        swap_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
