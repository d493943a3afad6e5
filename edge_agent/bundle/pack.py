"""Write a bundle: a directory with manifest.json, and the same content as one archive file.

Why an archive too: an OTA update or a copy to a vehicle moves one file, not a folder.
Archives are reproducible (sorted entries, fixed times and owners) so the same bundle
always packs to the same bytes, and they hold only the files the manifest vouches for.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from edge_agent.bundle.manifest import (
    CHECKSUM_NAME,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    ArtifactEntry,
    FileEntry,
    Manifest,
)
from edge_agent.bundle.signing import encode_signature
from edge_agent.errors import UserError
from edge_agent.util.files import sha256_file

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class PackError(UserError, ValueError):
    """The bundle cannot be written as asked (bad output name, missing file)."""


def file_entry(root: str | Path, rel: str) -> FileEntry:
    """Size and sha256 of ``root/rel``."""
    p = Path(root) / rel
    if not p.is_file():
        raise PackError(f"{p}: file to list in the manifest does not exist")
    return FileEntry(file=rel, size_bytes=p.stat().st_size, sha256=sha256_file(p))


def artifact_entry(root: str | Path, rel: str, format: str, precision: str, input_size: tuple[int, int],
                   layout: str) -> ArtifactEntry:
    fe = file_entry(root, rel)
    return ArtifactEntry(**fe.model_dump(), format=format, precision=precision, input_size=input_size,
                         layout=layout)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_manifest(root: str | Path, manifest: Manifest, signer: Callable[[bytes], bytes] | None = None) -> Path:
    """Write manifest.json, its checksum and (with ``signer``) manifest.sig into ``root``.

    ``signer`` maps the manifest bytes to a 64-byte Ed25519 signature (see
    ``converters.keys``); the private key never has to be importable on a device.
    """
    root = Path(root)
    for entry in manifest.files():
        actual = file_entry(root, entry.file)
        if (actual.size_bytes, actual.sha256) != (entry.size_bytes, entry.sha256):
            raise PackError(f"{root / entry.file}: changed after it was listed in the manifest; rebuild the bundle")
    data = manifest.to_bytes()
    _atomic_write(root / MANIFEST_NAME, data)
    _atomic_write(root / CHECKSUM_NAME, (hashlib.sha256(data).hexdigest() + f"  {MANIFEST_NAME}\n").encode())
    sig = root / SIGNATURE_NAME
    if signer is not None:
        _atomic_write(sig, encode_signature(signer(data)))
    elif sig.exists():
        sig.unlink()  # a stale signature of an older manifest would only cause confusing failures
    return root / MANIFEST_NAME


def bundle_files(root: str | Path, manifest: Manifest) -> list[str]:
    """Relative names of every file that belongs in an archive of this bundle."""
    root = Path(root)
    names = [MANIFEST_NAME, CHECKSUM_NAME] + [e.file for e in manifest.files()]
    if (root / SIGNATURE_NAME).exists():
        names.append(SIGNATURE_NAME)
    return sorted(set(names))


def archive_kind(path: str | Path) -> str | None:
    name = Path(path).name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return {".tgz": "tar.gz", ".tar.gz": "tar.gz", ".tar": "tar", ".zip": "zip"}[suffix]
    return None


def pack_archive(bundle_dir: str | Path, out_path: str | Path, manifest: Manifest | None = None) -> Path:
    """Pack a bundle directory into ``out_path`` (.tar.gz, .tgz, .tar or .zip).

    Entries sit under one top folder ``<name>-<version>/`` so unpacking by hand never
    scatters files; ``load_bundle`` accepts that layout and a flat one.
    """
    bundle_dir, out_path = Path(bundle_dir), Path(out_path)
    kind = archive_kind(out_path)
    if kind is None:
        raise PackError(f"{out_path}: unknown archive type; name it .tar.gz, .tgz, .tar or .zip")
    if manifest is None:
        manifest = Manifest.model_validate_json((bundle_dir / MANIFEST_NAME).read_bytes())
    top = f"{manifest.name}-{manifest.version}"
    mtime = int(manifest.created.timestamp())
    names = bundle_files(bundle_dir, manifest)
    for n in names:
        if not (bundle_dir / n).is_file():
            raise PackError(f"{bundle_dir / n}: missing; rebuild the bundle")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    if kind == "zip":
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for n in names:
                info = zipfile.ZipInfo(f"{top}/{n}", date_time=manifest.created.timetuple()[:6])
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, (bundle_dir / n).read_bytes())
    else:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
            dir_info = tarfile.TarInfo(top)
            dir_info.type, dir_info.mode, dir_info.mtime = tarfile.DIRTYPE, 0o755, mtime
            tf.addfile(dir_info)
            for n in names:
                data = (bundle_dir / n).read_bytes()
                member = tarfile.TarInfo(f"{top}/{n}")
                member.size, member.mode, member.mtime = len(data), 0o644, mtime
                member.uid = member.gid = 0
                member.uname = member.gname = ""
                tf.addfile(member, io.BytesIO(data))
        payload = raw.getvalue()
        if kind == "tar.gz":
            buf = io.BytesIO()
            with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
                gz.write(payload)
            payload = buf.getvalue()
        tmp.write_bytes(payload)
    os.replace(tmp, out_path)
    return out_path
