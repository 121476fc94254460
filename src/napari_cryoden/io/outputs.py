"""Every file a job writes goes through here: the input guard, atomic replacement and disk faults as messages.

The rules (docs/conventions.md "Outputs"):

* **No input is ever changed.** :func:`input_files` lists everything a job reads — the files named on the
  command line, and for a STAR or Xmipp table also every stack it points at — and :func:`check_outputs`
  refuses, before any work starts, an output that is one of them: the same path, a symlink to it, a hard
  link to it (same device and inode), or a name that differs from it only in letter case (the same file on
  the case-insensitive file systems of macOS and Windows).
* **An existing output is kept** unless the caller passes ``overwrite``.
* **Writes are atomic.** :class:`AtomicOutput` writes a temporary ``.NAME.cryoden-HOST-PID-XXXX.part`` beside
  the target and renames it into place on success; on an error, Ctrl-C or SIGTERM it is removed. A process
  killed with SIGKILL cannot clean up, so the next job writing the same name removes the temporaries that a
  dead process of this host left behind.
* **Disk faults become messages.** ENOSPC, EDQUOT, EROFS, EACCES, EPERM and EFBIG while writing raise
  :class:`~napari_cryoden.errors.CryodenOutputError` naming the path; a memory-mapped output reserves its
  blocks first (``posix_fallocate``), so a full file system is an error up front instead of a SIGBUS
  mid-write.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..errors import CryodenInputError, CryodenOutputError

log = logging.getLogger(__name__)

#: errno values that mean "this location cannot take the file" rather than a bug; reported as messages.
DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for the file system",
}

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname() or "host")[:40]


def disk_error(path: str | os.PathLike, exc: OSError) -> CryodenOutputError | None:
    """The message for a write fault on ``path``, or None when ``exc`` is not a disk fault."""
    reason = DISK_ERRNOS.get(getattr(exc, "errno", None))
    if reason is None:
        return None
    return CryodenOutputError(path, f"cannot be written: {reason}")


# ----------------------------------------------------------------------------------------- what a job reads
def input_files(paths: Iterable[str | os.PathLike | None]) -> dict[Path, str]:
    """Every file a job reads, with a few words saying why it is protected.

    A ``.star`` or ``.xmd`` particle table contributes the stacks its image names point at (resolved as the
    readers resolve them); a table that cannot be parsed contributes only itself (the reader reports it).
    """
    found: dict[Path, str] = {}
    for p in paths:
        if not p:
            continue
        path = Path(p)
        found.setdefault(path, "an input")
        if path.suffix.lower() in (".star", ".xmd") and path.is_file():
            for stack in _stacks_of_table(path):
                found.setdefault(stack, f"a stack that {path} points to")
    return found


def _stacks_of_table(path: Path) -> list[Path]:
    from .star import parse_image_names, resolve_stack_path

    try:
        if path.suffix.lower() == ".xmd":
            from .xmd import read_xmd

            table = read_xmd(path)
        else:
            from .star import read_star

            table = read_star(path)
        if "rlnImageName" not in table.particles:
            return []
        names = table.particles["rlnImageName"].astype(str).unique()
        stacks, _ = parse_image_names(names, star_path=path)
    except (CryodenInputError, OSError, ValueError):
        return []
    return [resolve_stack_path(s, path) for s in dict.fromkeys(stacks)]


def _same_file(a: Path, b: Path) -> bool:
    """True when both exist and are one file (symlinks followed; hard links have one inode)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _key(path: Path) -> str:
    return os.path.normcase(str(path.resolve()))


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_output_path(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] | dict = (),
                      overwrite: bool = True) -> Path:
    """Validate one output path before any work starts.

    Raises :class:`CryodenOutputError` if the path is (or links to, or differs only in letter case from)
    one of ``inputs``, if it exists and ``overwrite`` is False, or if its folder does not exist or is not
    writable. ``inputs`` may be the mapping :func:`input_files` returns (file -> why it is protected).
    """
    out = Path(path)
    why = inputs if isinstance(inputs, dict) else {Path(p): "an input" for p in inputs if p}
    out_key = _key(out)
    for inp, reason in why.items():
        inp = Path(inp)
        if out_key == _key(inp) or _same_file(out, inp):
            raise CryodenOutputError(out, f"is {reason} ({inp}); refusing to overwrite an input - choose "
                                          "another output name")
        if out_key.casefold() == _key(inp).casefold():
            raise CryodenOutputError(out, f"differs from {reason} ({inp}) only in letter case, which is the same "
                                          "file on case-insensitive file systems; choose another output name")
    if out.is_dir():
        raise CryodenOutputError(out, "is a folder; give a file name")
    if out.exists() and not overwrite:
        raise CryodenOutputError(out, "exists already; pass --overwrite to replace it")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise CryodenOutputError(out, f"folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        if _read_only(folder):
            raise CryodenOutputError(out, f"cannot be written: folder {folder} is on a read-only file system")
        raise CryodenOutputError(out, f"folder {folder} is not writable (permission denied)")
    return out


def check_outputs(outputs: Iterable[str | os.PathLike | None], *, inputs=(), overwrite: bool = False) -> dict:
    """Validate every output of a job before it starts: not an input (see :func:`input_files`), not an
    existing file unless ``overwrite``, writable, and all distinct (letter case included).

    Returns the protected files (file -> why, as :func:`input_files` gives them), for the writers to check
    against again."""
    protected = inputs if isinstance(inputs, dict) else input_files(inputs)
    seen: dict[str, str] = {}
    for p in outputs:
        if not p:
            continue
        path = check_output_path(p, inputs=protected, overwrite=overwrite)
        key = _key(path).casefold()
        if key in seen:
            raise CryodenOutputError(path, f"is given for two outputs ({seen[key]} and this one); give distinct "
                                           "names (names that differ only in letter case count as one)")
        seen[key] = str(p)
    return protected


# ------------------------------------------------------------------------------------------ atomic writes
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` that a killed process of this host left; returns what was removed."""
    folder = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(re.escape(f".{path.name}.cryoden-{_HOST}-") + r"(\d+)-.*\.part$")
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    if removed:
        log.warning("removed %d stale partial file(s) of %s left by a killed run", len(removed), path)
    return removed


def reserve_space(fd: int, nbytes: int, *, path: str | os.PathLike) -> None:
    """Allocate ``nbytes`` for the open file ``fd`` now, so writing through a memory map can never hit a full
    file system (which kills the process with SIGBUS instead of raising)."""
    folder = Path(path).parent
    try:
        free = shutil.disk_usage(folder if str(folder) else ".").free
    except OSError:
        free = None
    if free is not None and nbytes > free:
        raise CryodenOutputError(path, f"cannot be written: it needs {nbytes / 2**20:.1f} MiB and the file system "
                                       f"has {free / 2**20:.1f} MiB free")
    try:
        os.posix_fallocate(fd, 0, int(nbytes))
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
            return  # the file system cannot preallocate; the free-space check above is all we can do
        raise (disk_error(path, exc) or exc) from exc


class AtomicOutput:
    """Context manager yielding a temporary path next to ``path`` that is renamed onto it on success.

    On an exception (Ctrl-C and SIGTERM included) the temporary file is removed, so no partial output is ever
    left behind; a disk fault becomes a :class:`CryodenOutputError` naming ``path``. Stale temporaries of
    ``path`` from killed processes are removed on entry.
    """

    def __init__(self, path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] | dict = (),
                 overwrite: bool = True):
        self.path = check_output_path(path, inputs=inputs, overwrite=overwrite)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        folder = self.path.parent if str(self.path.parent) else Path(".")
        remove_stale_temporaries(self.path)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.cryoden-{_HOST}-{os.getpid()}-", suffix=".part",
                                       dir=folder)
        except OSError as exc:
            raise (disk_error(self.path, exc) or
                   CryodenOutputError(self.path, f"cannot create a file in {folder} ({exc.strerror})")) from exc
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.tmp is not None
        if exc_type is None:
            try:
                os.chmod(self.tmp, 0o644)
                os.replace(self.tmp, self.path)
                return False
            except OSError as err:
                self.tmp.unlink(missing_ok=True)
                raise (disk_error(self.path, err) or err) from err
        self.tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, CryodenOutputError):
            converted = disk_error(self.path, exc)
            if converted is not None:
                raise converted from exc
        return False
