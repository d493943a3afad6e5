"""Open a model bundle (directory or archive) only after proving every byte of it.

What is checked, in this order, before any model file is handed to a runtime:
1. archives are unpacked member by member: only plain files and folders, no absolute
   paths, no '..', no links, bounded total size (a crafted archive cannot write outside
   its folder or fill the disk); a truncated or corrupt archive is refused;
2. ``manifest.sig`` against the given Ed25519 public key (and refusal of an unsigned
   bundle when a signature is required);
3. ``manifest.json`` against ``manifest.sha256`` (catches corruption of an unsigned bundle);
4. the schema version (a newer bundle format is refused with an upgrade hint);
5. size and sha256 of every file the manifest lists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from pydantic import ValidationError

from edge_agent.bundle.manifest import (
    CHECKSUM_NAME,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    SUPPORTED_SCHEMA_VERSIONS,
    ArtifactEntry,
    Manifest,
)
from edge_agent.bundle.pack import archive_kind
from edge_agent.bundle.signing import PublicKeyLike, SignatureError, verify_manifest
from edge_agent.contract import InferenceContract
from edge_agent.errors import UserError
from edge_agent.util.files import sha256_file

log = logging.getLogger(__name__)

MAX_EXTRACTED_BYTES = 2 << 30
CACHE_ENV = "CRACKSEG_BUNDLE_CACHE"


class BundleError(UserError):
    """The bundle cannot be trusted or used; the message names the file and what to do."""


@dataclass
class Bundle:
    """A verified bundle on disk. ``signed`` is True only when a signature was verified."""

    root: Path
    manifest: Manifest
    signed: bool = False

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def contract(self) -> InferenceContract:
        return self.manifest.contract

    def entry_for(self, backend: str, precision: str | None = None,
                  input_size: tuple[int, int] | None = None) -> ArtifactEntry:
        """The artifact for a backend; without ``precision`` int8 is preferred (the deployment one)."""
        if backend not in ("onnx", "tflite"):
            raise BundleError(f"unknown backend '{backend}': use onnx or tflite")
        if precision is not None and precision not in ("fp32", "int8"):
            raise BundleError(f"unknown precision '{precision}': use fp32 or int8")
        candidates = [a for a in self.manifest.artifacts if a.format == backend
                      and (precision is None or a.precision == precision)
                      and (input_size is None or tuple(a.input_size) == tuple(input_size))]
        if not candidates:
            have = ", ".join(f"{a.format}/{a.precision}/{a.input_size[0]}x{a.input_size[1]}"
                             for a in self.manifest.artifacts)
            want = "/".join(x for x in (backend, precision, input_size and f"{input_size[0]}x{input_size[1]}") if x)
            raise BundleError(f"{self.root}: bundle {self.name} {self.version} has no {want} model "
                              f"(it has: {have}); choose another backend or precision")
        candidates.sort(key=lambda a: 0 if a.precision == "int8" else 1)
        return candidates[0]

    def entries_for(self, backend: str, precision: str | None = None) -> list[ArtifactEntry]:
        """One artifact per input size for a backend (int8 preferred per size, unless ``precision`` is given)."""
        chosen: dict[tuple[int, int], ArtifactEntry] = {}
        sizes = [(int(a.input_size[0]), int(a.input_size[1])) for a in self.manifest.artifacts if a.format == backend]
        for size in dict.fromkeys(sizes):
            try:
                chosen[size] = self.entry_for(backend, precision, size)
            except BundleError:
                continue
        if not chosen:
            self.entry_for(backend, precision)  # raises with the list of what the bundle has
        return list(chosen.values())

    def artifact_for(self, backend: str, precision: str | None = None,
                     input_size: tuple[int, int] | None = None) -> Path:
        return self.root / self.entry_for(backend, precision, input_size).file

    def contract_for(self, entry: ArtifactEntry) -> InferenceContract:
        """The bundle contract with this artifact's own layout, input size and input type."""
        update: dict = {"layout": entry.layout, "input_size": tuple(entry.input_size)}
        if entry.input_dtype is not None:
            update["input_dtype"] = entry.input_dtype
        return self.contract.model_copy(update=update)

    def selftest_data(self) -> tuple[np.ndarray, np.ndarray]:
        """(reference image as BGR uint8, expected probabilities float32 HxW)."""
        import cv2

        st = self.manifest.selftest
        if st is None:
            raise BundleError(f"{self.root}: bundle {self.name} {self.version} has no selftest section")
        image = cv2.imdecode(np.fromfile(str(self.root / st.image.file), np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise BundleError(f"{self.root / st.image.file}: selftest image is not readable")
        expected = np.load(self.root / st.expected.file, allow_pickle=False).astype(np.float32)
        if expected.shape != image.shape[:2]:
            raise BundleError(f"{self.root / st.expected.file}: shape {expected.shape} does not match the "
                              f"selftest image {image.shape[:2]}")
        return image, expected


# -- verification ------------------------------------------------------------------------
def verify_bundle_dir(root: Path, public_key: PublicKeyLike | None = None,
                      require_signature: bool = False) -> Bundle:
    """Verify an unpacked bundle in place (see the module docstring for the checks)."""
    root = Path(root)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{root}: no {MANIFEST_NAME}: not a model bundle, or an incomplete copy; "
                          "copy or download the whole bundle again")
    data = manifest_path.read_bytes()
    sig_path = root / SIGNATURE_NAME
    signed = False
    if require_signature and public_key is None:
        raise BundleError("a signature is required but no public key was given: configure the public.pem "
                          "written by 'crackseg-convert keygen'")
    if sig_path.is_file() and public_key is not None:
        try:
            verify_manifest(data, sig_path.read_bytes(), public_key)
        except SignatureError as exc:
            raise BundleError(f"{sig_path}: {exc}; do not install this bundle") from exc
        signed = True
    elif public_key is not None or require_signature:
        if require_signature:
            raise BundleError(f"{root}: bundle is not signed ({SIGNATURE_NAME} missing) but a signature is "
                              "required; sign it with 'crackseg-convert build --sign-key'")
        log.warning("%s: bundle is not signed; its integrity is checked but not its origin", root)
    checksum_path = root / CHECKSUM_NAME
    if not checksum_path.is_file():
        raise BundleError(f"{checksum_path}: missing; copy or download the whole bundle again")
    expected_sum = checksum_path.read_text(errors="replace").split()[:1]
    if expected_sum != [hashlib.sha256(data).hexdigest()]:
        raise BundleError(f"{manifest_path}: changed or corrupted (its sha256 does not match {CHECKSUM_NAME}); "
                          "copy or download the bundle again")
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({type(exc).__name__}); rebuild the bundle") from exc
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(f"{manifest_path}: unknown schema_version {version!r} (this crackseg-edge reads "
                          f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); upgrade crackseg-edge or "
                          "rebuild the bundle with a matching crackseg-convert")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise BundleError(f"{manifest_path}: invalid field '{where}': {err['msg']}; rebuild the bundle") from exc
    for entry in manifest.files():
        path = root / entry.file
        if not path.is_file():
            raise BundleError(f"{path}: listed in the manifest but missing; copy or download the whole bundle again")
        size = path.stat().st_size
        if size != entry.size_bytes:
            raise BundleError(f"{path}: {size} bytes, the manifest says {entry.size_bytes} (truncated or replaced); "
                              "copy or download the bundle again")
        if sha256_file(path) != entry.sha256:
            raise BundleError(f"{path}: sha256 does not match the manifest (the file was changed or corrupted); "
                              "copy or download the bundle again")
    return Bundle(root=root, manifest=manifest, signed=signed)


# -- archives ----------------------------------------------------------------------------
def _safe_member_path(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    parts = [x for x in p.parts if x not in ("", ".")]
    if p.is_absolute() or ".." in parts or not parts or ":" in parts[0]:
        raise BundleError(f"{archive}: refuses member '{name}' (absolute path or '..'); the archive is unsafe, "
                          "do not install it")
    return PurePosixPath(*parts)


def _extract(archive: Path, dest: Path, max_bytes: int) -> None:
    kind = archive_kind(archive)
    total = 0
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    rel = _safe_member_path(info.filename, archive)
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode and mode not in (0o100000, 0o040000):
                        raise BundleError(f"{archive}: member '{info.filename}' is not a plain file or folder "
                                          "(links are refused); do not install it")
                    if info.is_dir():
                        (dest / rel).mkdir(parents=True, exist_ok=True)
                        continue
                    total += info.file_size
                    if total > max_bytes:
                        raise BundleError(f"{archive}: unpacks to more than {max_bytes} bytes; refused")
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest / rel, "xb") as dst:
                        shutil.copyfileobj(src, dst)
        else:
            with tarfile.open(archive, "r:*") as tf:
                for member in tf:
                    rel = _safe_member_path(member.name, archive)
                    if member.isdir():
                        (dest / rel).mkdir(parents=True, exist_ok=True)
                        continue
                    if not member.isfile():
                        raise BundleError(f"{archive}: member '{member.name}' is not a plain file or folder "
                                          "(links and devices are refused); do not install it")
                    total += member.size
                    if total > max_bytes:
                        raise BundleError(f"{archive}: unpacks to more than {max_bytes} bytes; refused")
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    extracted = tf.extractfile(member)
                    assert extracted is not None
                    with extracted as src, open(dest / rel, "xb") as dst:
                        shutil.copyfileobj(src, dst)
                        if dst.tell() != member.size:
                            raise EOFError("member shorter than its header says")
    except BundleError:
        raise
    except FileExistsError as exc:
        raise BundleError(f"{archive}: holds the same file twice ({exc.filename}); refused") from exc
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError, NotImplementedError,
            RuntimeError) as exc:  # zip: unsupported compression or encryption raise the last two
        raise BundleError(f"{archive}: truncated or corrupt archive ({type(exc).__name__}: {exc}); "
                          "download or copy it again") from exc


def _find_root(dest: Path, archive: Path) -> Path:
    if (dest / MANIFEST_NAME).is_file():
        return dest
    subdirs = [p for p in dest.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / MANIFEST_NAME).is_file():
        return subdirs[0]
    raise BundleError(f"{archive}: no {MANIFEST_NAME} at the top of the archive (or in its single top folder); "
                      "not a model bundle")


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"crackseg-bundles-{uid}"


def _check_cache_dir(cache_dir: Path) -> None:
    """Refuse a cache another user could write to: files are verified, then opened later."""
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = cache_dir.stat()
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        raise BundleError(f"{cache_dir}: bundle cache is writable by other users (or owned by another user); "
                          f"remove it or point {CACHE_ENV} to a private folder")


def _unpack_cached(archive: Path, cache_dir: Path, max_bytes: int, verify) -> Bundle:
    """Unpack into ``cache_dir/<archive sha256>`` once; later loads re-verify that copy."""
    digest = sha256_file(archive)[:24]
    _check_cache_dir(cache_dir)
    final = cache_dir / digest
    if final.is_dir():
        try:
            return verify(_find_root(final, archive))
        except BundleError:
            shutil.rmtree(final, ignore_errors=True)  # changed on disk since: unpack afresh
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache_dir))
    try:
        _extract(archive, work, max_bytes)
        bundle = verify(_find_root(work, archive))  # verify before publishing into the cache
        try:
            os.rename(work, final)
        except OSError:  # another process published the same archive first
            shutil.rmtree(work, ignore_errors=True)
            return verify(_find_root(final, archive))
        bundle.root = final / bundle.root.relative_to(work)
        return bundle
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def load_bundle(path: str | Path, public_key: PublicKeyLike | None = None, require_signature: bool = False,
                cache_dir: str | Path | None = None, max_bytes: int = MAX_EXTRACTED_BYTES) -> Bundle:
    """Open and verify a bundle directory or archive (.tar.gz, .tgz, .tar, .zip).

    Archives are unpacked once into ``cache_dir`` (default: ``$CRACKSEG_BUNDLE_CACHE`` or a
    per-user folder in the temp dir) keyed by the archive's sha256, and verified every time.
    Raises BundleError with a message naming the file and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}")

    def verify(root: Path) -> Bundle:
        return verify_bundle_dir(root, public_key, require_signature)

    if path.is_dir():
        return verify(path)
    if archive_kind(path) is None:
        raise BundleError(f"{path}: not a bundle; expected a directory with {MANIFEST_NAME} or a .tar.gz, .tgz, "
                          ".tar or .zip archive")
    if path.stat().st_size == 0:
        raise BundleError(f"{path}: empty file (truncated download); download or copy it again")
    return _unpack_cached(path, Path(cache_dir) if cache_dir else default_cache_dir(), max_bytes, verify)
