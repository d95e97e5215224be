"""Task bundles: a deterministic tar of a task directory with a signed manifest.

Layout (members in this order, all regular files)::

    manifest.json   canonical JSON: format, task, version, entry, key_id, files[path, size, sha256, executable]
    manifest.sig    64-byte Ed25519 signature of the exact manifest.json bytes
    files/<path>    one member per manifest entry, in manifest order

A bundle is named by the SHA-256 of the whole tar (its *digest*); the notice a device gets
carries that digest, so a truncated or swapped download is caught before the tar is even
opened. Inside, the signature proves the manifest came from the publisher and the manifest
hashes prove every file is the one that was signed. The tar is deterministic (sorted,
zeroed mtimes and owners) so republishing identical content gives an identical digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from walle_deploy.errors import BundleError, TaskError
from walle_deploy.signing import TrustedKeys, key_id
from walle_deploy.task import TASK_FILE, check_name, check_version, load_task_info

FORMAT = "walle-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
FILES_PREFIX = "files/"
#: generous bounds that still stop a hostile bundle from filling a device's disk
MAX_FILES = 10_000
MAX_TOTAL_BYTES = 4 << 30
MAX_MANIFEST_BYTES = 4 << 20
MAX_PATH_CHARS = 1024
SKIPPED_NAMES = {"__pycache__", ".git", ".DS_Store"}
CHUNK = 1 << 20
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    executable: bool


@dataclass(frozen=True)
class Manifest:
    task: str
    version: str
    entry: str
    key_id: str
    files: tuple[FileEntry, ...]

    def to_bytes(self) -> bytes:
        data = {
            "format": FORMAT, "task": self.task, "version": self.version, "entry": self.entry,
            "key_id": self.key_id,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256, "executable": f.executable}
                      for f in self.files],
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class PackedBundle:
    path: Path
    digest: str
    size: int
    manifest: Manifest


def safe_relpath(name: str) -> str:
    """Return ``name`` if it is a clean relative POSIX path that stays inside its root,
    else raise :class:`BundleError`. Applied to every path in a manifest and a tar."""
    if not isinstance(name, str) or not name or len(name) > MAX_PATH_CHARS:
        raise BundleError(f"[deploy] bundle path {name!r} is empty or too long")
    if name.startswith("/") or "\\" in name or any(ord(c) < 32 for c in name) or ":" in name.split("/")[0]:
        raise BundleError(f"[deploy] bundle path {name!r} is absolute or contains forbidden characters")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BundleError(f"[deploy] bundle path {name!r} has an empty, '.' or '..' component")
    return name


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- packing


def _walk_task(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, real file) for every file to ship, sorted. Symlinks are followed only
    when they resolve to a regular file inside the task directory."""
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_NAMES)
        for d in dirnames:
            if Path(dirpath, d).is_symlink():
                raise TaskError(f"[deploy] {Path(dirpath, d)}: symlinked directories are not allowed in a task")
        for fname in sorted(filenames):
            if fname in SKIPPED_NAMES or fname.endswith(".pyc"):
                continue
            path = Path(dirpath, fname)
            real = path.resolve()
            if not real.is_relative_to(real_root):
                raise TaskError(f"[deploy] {path}: link escapes the task directory")
            if not stat.S_ISREG(os.stat(real).st_mode):
                raise TaskError(f"[deploy] {path}: only regular files can be bundled")
            yield safe_relpath(path.relative_to(root).as_posix()), real


def _tarinfo(name: str, size: int, executable: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o755 if executable else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack_task(task_dir: str | Path, signing_key: Ed25519PrivateKey, out_dir: str | Path) -> PackedBundle:
    """Validate ``task_dir``, write its signed bundle into ``out_dir`` as ``<digest>.tar``."""
    root = Path(task_dir)
    info = load_task_info(root)
    files = []
    for rel, real in sorted(_walk_task(root)):
        mode = os.stat(real).st_mode
        files.append((rel, real, FileEntry(rel, os.stat(real).st_size, sha256_file(real), bool(mode & 0o111))))
    if len(files) > MAX_FILES:
        raise TaskError(f"[deploy] {root}: {len(files)} files, more than the {MAX_FILES} a bundle may hold")
    manifest = Manifest(info.name, info.version, info.entry, key_id(signing_key.public_key()),
                        tuple(entry for _, _, entry in files))
    manifest_bytes = manifest.to_bytes()
    signature = signing_key.sign(manifest_bytes)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tarinfo(MANIFEST, len(manifest_bytes)), io.BytesIO(manifest_bytes))
            tar.addfile(_tarinfo(SIGNATURE, len(signature)), io.BytesIO(signature))
            for rel, real, entry in files:
                with open(real, "rb") as f:
                    tar.addfile(_tarinfo(FILES_PREFIX + rel, entry.size, entry.executable), f)
        digest = sha256_file(tmp_name)
        final = out / f"{digest}.tar"
        os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return PackedBundle(final, digest, final.stat().st_size, manifest)


# ---------------------------------------------------------------- verification


def parse_manifest(data: bytes) -> Manifest:
    """Parse and structurally check a manifest (the signature is checked separately)."""
    try:
        raw: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"[deploy] bundle manifest is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BundleError(f"[deploy] bundle manifest format is not {FORMAT!r}")
    for key in ("task", "version", "entry", "key_id"):
        if not isinstance(raw.get(key), str):
            raise BundleError(f"[deploy] bundle manifest field '{key}' missing or not a string")
    try:
        check_name(raw["task"])
        check_version(raw["version"])
    except TaskError as exc:
        raise BundleError(str(exc)) from exc
    entries = raw.get("files")
    if not isinstance(entries, list) or len(entries) > MAX_FILES:
        raise BundleError(f"[deploy] bundle manifest 'files' must be a list of at most {MAX_FILES}")
    files, seen = [], set()
    for i, e in enumerate(entries):
        ok = (isinstance(e, dict) and isinstance(e.get("path"), str) and type(e.get("size")) is int
              and e["size"] >= 0 and isinstance(e.get("sha256"), str) and len(e["sha256"]) == 64
              and isinstance(e.get("executable"), bool))
        if not ok:
            raise BundleError(f"[deploy] bundle manifest files[{i}] is malformed")
        path = safe_relpath(e["path"])
        if path.casefold() in seen:
            raise BundleError(f"[deploy] bundle manifest lists {path!r} twice")
        seen.add(path.casefold())
        files.append(FileEntry(path, e["size"], e["sha256"].lower(), e["executable"]))
    manifest = Manifest(raw["task"], raw["version"], raw["entry"], raw["key_id"], tuple(files))
    if manifest.total_size > MAX_TOTAL_BYTES:
        raise BundleError(f"[deploy] bundle declares {manifest.total_size} bytes, over the {MAX_TOTAL_BYTES} limit")
    names = {f.path for f in files}
    if TASK_FILE not in names or safe_relpath(manifest.entry) not in names:
        raise BundleError(f"[deploy] bundle must contain {TASK_FILE} and its entry {manifest.entry!r}")
    return manifest


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if member.size > limit:
        raise BundleError(f"[deploy] bundle member {member.name!r} is larger than {limit} bytes")
    f = tar.extractfile(member)
    data = f.read() if f is not None else b""
    if len(data) != member.size:
        raise BundleError(f"[deploy] bundle is truncated inside {member.name!r}")
    return data


def _next_member(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    member = tar.next()
    if member is None:
        return None
    if not member.isreg():
        raise BundleError(f"[deploy] bundle member {member.name!r} is a link, directory or device; "
                          "only regular files are allowed")
    return member


def verify_and_extract(bundle: str | Path | IO[bytes], keys: TrustedKeys, dest: str | Path | None,
                       expect_task: str | None = None, expect_version: str | None = None) -> Manifest:
    """Check a bundle and, when ``dest`` is given, write its files under ``dest`` (which must
    not exist yet). Raises :class:`BundleError` on any defect; the caller discards ``dest`` then.

    Order matters: the signature is checked before any file byte is trusted, and each file
    is hashed while it is written, so a file on disk never differs from the signed one.
    """
    if not keys:
        raise BundleError("[deploy] no trusted keys configured; refusing to accept an unverifiable bundle")
    with contextlib.ExitStack() as stack:
        opened = bundle if hasattr(bundle, "read") else stack.enter_context(open(bundle, "rb"))  # type: ignore[arg-type]
        try:
            tar = stack.enter_context(tarfile.open(fileobj=opened, mode="r:"))  # type: ignore[arg-type]
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise BundleError(f"[deploy] bundle is not a readable tar (truncated?): {exc}") from exc
        try:
            return _verify_members(tar, keys, None if dest is None else Path(dest), expect_task, expect_version)
        except (tarfile.TarError, EOFError) as exc:
            raise BundleError(f"[deploy] bundle is truncated or corrupt: {exc}") from exc


def _verify_members(tar: tarfile.TarFile, keys: TrustedKeys, dest: Path | None,
                    expect_task: str | None, expect_version: str | None) -> Manifest:
    first, second = _next_member(tar), _next_member(tar)
    if first is None or first.name != MANIFEST:
        raise BundleError(f"[deploy] bundle does not start with {MANIFEST}")
    manifest_bytes = _read_member(tar, first, MAX_MANIFEST_BYTES)
    if second is None or second.name != SIGNATURE:
        raise BundleError("[deploy] bundle is unsigned (no manifest.sig after manifest.json)")
    signature = _read_member(tar, second, 64)
    manifest = parse_manifest(manifest_bytes)
    keys.verify(manifest.key_id, signature, manifest_bytes)
    if expect_task is not None and manifest.task != expect_task:
        raise BundleError(f"[deploy] bundle is for task {manifest.task!r}, expected {expect_task!r}")
    if expect_version is not None and manifest.version != expect_version:
        raise BundleError(f"[deploy] bundle is version {manifest.version!r}, expected {expect_version!r}")
    if dest is not None:
        dest.mkdir(parents=False, exist_ok=False)
    for entry in manifest.files:
        member = _next_member(tar)
        if member is None:
            raise BundleError(f"[deploy] bundle is truncated: {entry.path!r} is missing")
        if member.name != FILES_PREFIX + entry.path:
            raise BundleError(f"[deploy] bundle member {member.name!r} is not the signed {entry.path!r}")
        if member.size != entry.size:
            raise BundleError(f"[deploy] bundle file {entry.path!r} has {member.size} bytes, signed {entry.size}")
        _copy_checked(tar, member, entry, dest)
    extra = _next_member(tar)
    if extra is not None:
        raise BundleError(f"[deploy] bundle has a member the manifest does not list: {extra.name!r}")
    return manifest


def _copy_checked(tar: tarfile.TarFile, member: tarfile.TarInfo, entry: FileEntry, dest: Path | None) -> None:
    source = tar.extractfile(member)
    assert source is not None  # regular files always have a data stream
    digest, written = hashlib.sha256(), 0
    fd = -1
    if dest is not None:
        target = os.path.join(dest, *entry.path.split("/"))
        if "/" in entry.path:  # files at the top level go straight into the fresh ``dest``
            os.makedirs(os.path.dirname(target), exist_ok=True)
        # O_EXCL | O_NOFOLLOW: never write through a pre-existing file or link
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                     0o755 if entry.executable else 0o644)
    try:
        for block in iter(lambda: source.read(CHUNK), b""):
            digest.update(block)
            written += len(block)
            view = memoryview(block)
            while fd >= 0 and view:
                view = view[os.write(fd, view):]
    finally:
        if fd >= 0:
            os.close(fd)
    if written != entry.size:
        raise BundleError(f"[deploy] bundle is truncated inside {entry.path!r}")
    if digest.hexdigest() != entry.sha256:
        raise BundleError(f"[deploy] bundle file {entry.path!r} does not match its signed SHA-256")
