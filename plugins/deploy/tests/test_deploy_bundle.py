"""Bundle signing and verification: the happy path and every way a bundle can be bad."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from deploy_testlib import Keys, make_task

from walle_deploy.bundle import (
    FILES_PREFIX,
    MANIFEST,
    SIGNATURE,
    PackedBundle,
    pack_task,
    safe_relpath,
    sha256_file,
    verify_and_extract,
)
from walle_deploy.errors import BundleError, TaskError
from walle_deploy.signing import TrustedKeys


def members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar.getmembers()]


def write_tar(path: Path, items: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in items:
            if info.isreg():
                fresh = tarfile.TarInfo(info.name)
                fresh.size = len(data)
                tar.addfile(fresh, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def test_pack_verify_extract_roundtrip(tmp_path: Path, keys: Keys, bundle: PackedBundle) -> None:
    assert bundle.digest == sha256_file(bundle.path)
    dest = tmp_path / "x"
    manifest = verify_and_extract(bundle.path, keys.trusted, dest, expect_task="demo", expect_version="1.0.0")
    assert [f.path for f in manifest.files] == ["main.py", "models/model.bin", "task.toml"]
    src = tmp_path / "tasks" / "demo-1.0.0"
    for entry in manifest.files:
        assert (dest / entry.path).read_bytes() == (src / entry.path).read_bytes()


def test_identical_content_gives_identical_digest(tmp_path: Path, keys: Keys, bundle: PackedBundle) -> None:
    again = pack_task(tmp_path / "tasks" / "demo-1.0.0", keys.private, tmp_path / "again")
    assert again.digest == bundle.digest


def test_tampered_file_content_is_rejected(tmp_path: Path, keys: Keys, bundle: PackedBundle) -> None:
    items = members(bundle.path)
    items = [(m, b"evil" + d[4:] if m.name == FILES_PREFIX + "main.py" else d) for m, d in items]
    bad = write_tar(tmp_path / "bad.tar", items)
    with pytest.raises(BundleError, match="does not match its signed SHA-256"):
        verify_and_extract(bad, keys.trusted, tmp_path / "x")


def test_tampered_manifest_breaks_the_signature(tmp_path: Path, keys: Keys, bundle: PackedBundle) -> None:
    items = members(bundle.path)
    manifest = json.loads(items[0][1])
    manifest["entry"] = "models/model.bin"
    forged = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    bad = write_tar(tmp_path / "bad.tar", [(items[0][0], forged)] + items[1:])
    with pytest.raises(BundleError, match="signature is invalid"):
        verify_and_extract(bad, keys.trusted, None)


def test_unsigned_bundle_is_rejected(tmp_path: Path, keys: Keys, bundle: PackedBundle) -> None:
    items = [(m, d) for m, d in members(bundle.path) if m.name != SIGNATURE]
    with pytest.raises(BundleError, match="unsigned"):
        verify_and_extract(write_tar(tmp_path / "bad.tar", items), keys.trusted, None)


def test_bundle_signed_by_an_untrusted_key_is_rejected(bundle: PackedBundle, other_keys: Keys) -> None:
    with pytest.raises(BundleError, match="untrusted key"):
        verify_and_extract(bundle.path, other_keys.trusted, None)


def test_no_trusted_keys_means_nothing_is_accepted(bundle: PackedBundle) -> None:
    with pytest.raises(BundleError, match="no trusted keys"):
        verify_and_extract(bundle.path, TrustedKeys(), None)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.999])
def test_truncated_bundle_is_rejected_and_leaves_nothing_valid(tmp_path: Path, keys: Keys, bundle: PackedBundle,
                                                               cut: float) -> None:
    """Cut inside the content (the tail of a tar is zero padding a reader may legitimately
    not need; the digest in the notice catches a cut there before the tar is opened)."""
    with tarfile.open(bundle.path) as tar:
        last = tar.getmembers()[-1]
    content_end = last.offset_data + last.size
    short = tmp_path / "short.tar"
    short.write_bytes(bundle.path.read_bytes()[: int(content_end * cut)])
    with pytest.raises(BundleError):
        verify_and_extract(short, keys.trusted, tmp_path / "x")


def test_extra_member_is_rejected(tmp_path: Path, keys: Keys, bundle: PackedBundle) -> None:
    items = members(bundle.path) + [(tarfile.TarInfo(FILES_PREFIX + "backdoor.py"), b"import os")]
    with pytest.raises(BundleError, match="does not list"):
        verify_and_extract(write_tar(tmp_path / "bad.tar", items), keys.trusted, None)


def test_missing_member_is_rejected(tmp_path: Path, keys: Keys, bundle: PackedBundle) -> None:
    items = members(bundle.path)[:-1]
    with pytest.raises(BundleError, match="missing"):
        verify_and_extract(write_tar(tmp_path / "bad.tar", items), keys.trusted, None)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_link_members_are_rejected(tmp_path: Path, keys: Keys, bundle: PackedBundle, kind: bytes) -> None:
    items = members(bundle.path)
    link = tarfile.TarInfo(FILES_PREFIX + "main.py")
    link.type, link.linkname = kind, "/etc/passwd"
    bad = write_tar(tmp_path / "bad.tar", items[:2] + [(link, b"")] + items[3:])
    with pytest.raises(BundleError, match="only regular files"):
        verify_and_extract(bad, keys.trusted, tmp_path / "x")
    assert not (tmp_path / "x" / "main.py").is_symlink()


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\b", "C:/x", "",
                                  "a/\x00b"])
def test_unsafe_paths_are_rejected(name: str) -> None:
    with pytest.raises(BundleError):
        safe_relpath(name)


@pytest.mark.parametrize("name", ["main.py", "models/model.bin", "a/b.c/d-e_f"])
def test_safe_paths_pass(name: str) -> None:
    assert safe_relpath(name) == name


def test_signed_manifest_with_traversal_path_is_rejected(tmp_path: Path, keys: Keys) -> None:
    """Even a bundle the publisher's key signed must not write outside the task directory."""
    manifest = {"format": "walle-bundle/1", "task": "demo", "version": "1", "entry": "main.py",
                "key_id": keys.trusted.ids()[0],
                "files": [{"path": "../evil.py", "size": 1, "sha256": "0" * 64, "executable": False}]}
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    bad = write_tar(tmp_path / "bad.tar", [(tarfile.TarInfo(MANIFEST), raw),
                                           (tarfile.TarInfo(SIGNATURE), keys.private.sign(raw)),
                                           (tarfile.TarInfo(FILES_PREFIX + "../evil.py"), b"x")])
    with pytest.raises(BundleError, match="'\\.\\.'"):
        verify_and_extract(bad, keys.trusted, tmp_path / "x")
    assert not (tmp_path / "evil.py").exists()


def test_expected_task_and_version_are_enforced(keys: Keys, bundle: PackedBundle) -> None:
    with pytest.raises(BundleError, match="expected 'other'"):
        verify_and_extract(bundle.path, keys.trusted, None, expect_task="other")
    with pytest.raises(BundleError, match="expected '2.0'"):
        verify_and_extract(bundle.path, keys.trusted, None, expect_version="2.0")


def test_pack_refuses_link_escaping_the_task(tmp_path: Path, keys: Keys) -> None:
    task = make_task(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    os.symlink(secret, task / "leak.txt")
    with pytest.raises(TaskError, match="escapes"):
        pack_task(task, keys.private, tmp_path / "out")


def test_pack_follows_link_inside_the_task(tmp_path: Path, keys: Keys) -> None:
    task = make_task(tmp_path)
    os.symlink("main.py", task / "alias.py")
    packed = pack_task(task, keys.private, tmp_path / "out")
    manifest = verify_and_extract(packed.path, keys.trusted, tmp_path / "x")
    assert "alias.py" in [f.path for f in manifest.files]
    assert not (tmp_path / "x" / "alias.py").is_symlink()
    assert (tmp_path / "x" / "alias.py").read_text() == "print('hello')\n"


@pytest.mark.parametrize("toml, message", [
    (None, "no task.toml"),
    ("name = ", "not valid TOML"),
    ('version = "1"\nentry = "main.py"', "'name' is required"),
    ('name = "demo"\nentry = "main.py"', "'version' is required"),
    ('name = "demo"\nversion = "1"', "'entry' is required"),
    ('name = "demo"\nversion = "1"\nentry = "missing.py"', "not a file inside"),
    ('name = "demo"\nversion = "1"\nentry = "../main.py"', "not a file inside"),
    ('name = "../demo"\nversion = "1"\nentry = "main.py"', "invalid task name"),
])
def test_invalid_tasks_are_refused(tmp_path: Path, keys: Keys, toml: str | None, message: str) -> None:
    task = make_task(tmp_path)
    if toml is None:
        (task / "task.toml").unlink()
    else:
        (task / "task.toml").write_text(toml)
    with pytest.raises(TaskError, match=message):
        pack_task(task, keys.private, tmp_path / "out")
