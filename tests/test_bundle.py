"""Model bundles: writing, packing, loading, and refusing every kind of damaged or forged bundle."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle import (
    BundleError,
    Manifest,
    SourceInfo,
    artifact_entry,
    load_bundle,
    pack_archive,
    write_manifest,
)
from edge_agent.bundle.manifest import version_key
from edge_agent.contract import InferenceContract
from tests.bundles import flip_byte, make_keys, tar_archive
from tests.tiny_models import export_onnx, tiny_torch_model

SIZE = (64, 96)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    return export_onnx(tiny_torch_model(), tmp_path_factory.mktemp("src") / "model.onnx", SIZE)


def make_bundle(root: Path, onnx_file: Path, signer=None, version: str = "1.0.0") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_file, root / "m-fp32.onnx")
    manifest = Manifest(name="tiny", version=version,
                        source=SourceInfo(checkpoint="tiny.pt", checkpoint_sha256="0" * 64, kind="checkpoint"),
                        contract=InferenceContract(input_size=SIZE, threshold=0.4),
                        artifacts=[artifact_entry(root, "m-fp32.onnx", "onnx", "fp32", SIZE, "NCHW")])
    write_manifest(root, manifest, signer)
    return root


def test_directory_bundle_loads_and_runs(tmp_path, onnx_file, keys):
    key, public = keys  # conftest's module-scoped pair: (key, public.pem)
    pub = public.read_bytes()
    root = make_bundle(tmp_path / "b", onnx_file, key.sign)
    bundle = load_bundle(root, public_key=pub, require_signature=True)
    assert bundle.signed and bundle.name == "tiny" and bundle.version == "1.0.0"
    assert bundle.contract.threshold == 0.4
    assert bundle.artifact_for("onnx") == root / "m-fp32.onnx"
    assert bundle.artifact_for("onnx", "fp32") == root / "m-fp32.onnx"
    with pytest.raises(BundleError, match="no tflite"):
        bundle.artifact_for("tflite")
    with pytest.raises(BundleError, match="no onnx/int8"):
        bundle.artifact_for("onnx", "int8")
    # the device runtime opens it through load_bundle
    from edge_agent.detectors import open_model

    seg = open_model(root, public_key=pub, require_signature=True)
    assert seg.probabilities(np.zeros((70, 100, 3), np.uint8)).shape == (70, 100)


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip", ".tar"])
def test_archives_round_trip_and_are_reproducible(tmp_path, onnx_file, keys, suffix):
    key, public = keys  # conftest's module-scoped pair: (key, public.pem)
    pub = public.read_bytes()
    root = make_bundle(tmp_path / "b", onnx_file, key.sign)
    a1 = pack_archive(root, tmp_path / f"one{suffix}")
    a2 = pack_archive(root, tmp_path / f"two{suffix}")
    assert a1.read_bytes() == a2.read_bytes()
    bundle = load_bundle(a1, public_key=pub, require_signature=True, cache_dir=tmp_path / "cache")
    assert bundle.signed and bundle.artifact_for("onnx").is_file()
    assert bundle.root.is_relative_to(tmp_path / "cache")
    # loading again reuses the unpacked copy, verified again
    again = load_bundle(a1, public_key=pub, cache_dir=tmp_path / "cache")
    assert again.root == bundle.root


def test_changed_artifact_byte_is_refused(tmp_path, onnx_file):
    root = make_bundle(tmp_path / "b", onnx_file)
    flip_byte(root / "m-fp32.onnx")
    with pytest.raises(BundleError, match=r"m-fp32\.onnx: sha256 does not match"):
        load_bundle(root)


def test_truncated_or_missing_artifact_is_refused(tmp_path, onnx_file):
    root = make_bundle(tmp_path / "b", onnx_file)
    data = (root / "m-fp32.onnx").read_bytes()
    (root / "m-fp32.onnx").write_bytes(data[:-10])
    with pytest.raises(BundleError, match="truncated or replaced"):
        load_bundle(root)
    (root / "m-fp32.onnx").unlink()
    with pytest.raises(BundleError, match="listed in the manifest but missing"):
        load_bundle(root)


def test_changed_manifest_byte_is_refused_signed_or_not(tmp_path, onnx_file, keys):
    key, public = keys  # conftest's module-scoped pair: (key, public.pem)
    pub = public.read_bytes()
    unsigned = make_bundle(tmp_path / "u", onnx_file)
    text = (unsigned / "manifest.json").read_text()
    (unsigned / "manifest.json").write_text(text.replace('"threshold": 0.4', '"threshold": 0.1'))
    with pytest.raises(BundleError, match="manifest.json: changed or corrupted"):
        load_bundle(unsigned)
    signed = make_bundle(tmp_path / "s", onnx_file, key.sign)
    text = (signed / "manifest.json").read_text()
    (signed / "manifest.json").write_text(text.replace('"name": "tiny"', '"name": "tinx"'))
    with pytest.raises(BundleError, match="signature does not match"):
        load_bundle(signed, public_key=pub)


def test_wrong_key_and_unsigned_when_required_are_refused(tmp_path, onnx_file, keys):
    key, public = keys  # conftest's module-scoped pair: (key, public.pem)
    pub = public.read_bytes()
    other, _ = make_keys(tmp_path / "other")
    forged = make_bundle(tmp_path / "f", onnx_file, other.sign)
    with pytest.raises(BundleError, match="manifest.sig: signature does not match"):
        load_bundle(forged, public_key=pub)
    unsigned = make_bundle(tmp_path / "u", onnx_file)
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(unsigned, public_key=pub, require_signature=True)
    with pytest.raises(BundleError, match="no public key"):
        load_bundle(unsigned, require_signature=True)
    # without a requirement an unsigned bundle is usable (integrity is still checked)
    assert not load_bundle(unsigned, public_key=pub).signed


def test_truncated_and_corrupt_archives_are_refused(tmp_path, onnx_file):
    root = make_bundle(tmp_path / "b", onnx_file)
    for suffix in (".tar.gz", ".zip"):
        archive = pack_archive(root, tmp_path / f"b{suffix}")
        data = archive.read_bytes()
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(BundleError, match=r"cut\.(tar\.gz|zip): truncated or corrupt archive"):
            load_bundle(cut, cache_dir=tmp_path / "cache")
        empty = tmp_path / f"empty{suffix}"
        empty.write_bytes(b"")
        with pytest.raises(BundleError, match="empty file"):
            load_bundle(empty, cache_dir=tmp_path / "cache")
    # a flipped byte inside the compressed stream: the gzip CRC or the sha256 catches it
    archive = pack_archive(root, tmp_path / "c.tar.gz")
    flip_byte(archive, len(archive.read_bytes()) // 2)
    with pytest.raises(BundleError):
        load_bundle(archive, cache_dir=tmp_path / "cache")


def test_path_traversal_and_links_in_archives_are_refused(tmp_path, onnx_file):
    root = make_bundle(tmp_path / "b", onnx_file)
    evil = tar_archive(tmp_path / "evil.tar.gz", {**{name: root / name for name in
                                                     ("manifest.json", "manifest.sha256", "m-fp32.onnx")},
                                                  "../escaped.txt": b"owned"})
    with pytest.raises(BundleError, match=r"'\.\./escaped\.txt'.*unsafe"):
        load_bundle(evil, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "cache" / "escaped.txt").exists()
    linked = tar_archive(tmp_path / "link.tar", {}, symlinks={"manifest.json": "/etc/passwd"})
    with pytest.raises(BundleError, match="links"):
        load_bundle(linked, cache_dir=tmp_path / "cache")
    absolute = tmp_path / "abs.zip"
    with zipfile.ZipFile(absolute, "w") as zf:
        zf.writestr("/tmp/x", b"x")
    with pytest.raises(BundleError, match="unsafe"):
        load_bundle(absolute, cache_dir=tmp_path / "cache")


def test_unknown_schema_version_and_invalid_fields_are_refused(tmp_path, onnx_file):
    import hashlib

    root = make_bundle(tmp_path / "b", onnx_file)

    def rewrite(change):
        data = json.loads((root / "manifest.json").read_text())
        change(data)
        raw = json.dumps(data).encode()
        (root / "manifest.json").write_bytes(raw)
        (root / "manifest.sha256").write_text(hashlib.sha256(raw).hexdigest() + "  manifest.json\n")

    rewrite(lambda d: d.update(schema_version=99))
    with pytest.raises(BundleError, match="unknown schema_version 99.*upgrade crackseg-edge"):
        load_bundle(root)
    rewrite(lambda d: d.update(schema_version=1, version="one"))
    with pytest.raises(BundleError, match="invalid field 'version'"):
        load_bundle(root)
    rewrite(lambda d: (d.update(version="1.0.0"), d["artifacts"][0].update(file="../outside.onnx")))
    with pytest.raises(BundleError, match="artifacts.0.file"):
        load_bundle(root)
    rewrite(lambda d: (d["artifacts"][0].update(file="m-fp32.onnx"), d.update(surprise=True)))
    with pytest.raises(BundleError, match="surprise"):
        load_bundle(root)


def test_not_a_bundle_errors_name_the_path(tmp_path):
    with pytest.raises(BundleError, match="bundle not found"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path / "empty")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path / "model.bin")


def test_public_key_forms(tmp_path, onnx_file, keys):
    from cryptography.hazmat.primitives import serialization

    key, public = keys  # conftest's module-scoped pair: (key, public.pem)
    pub = public.read_bytes()
    root = make_bundle(tmp_path / "b", onnx_file, key.sign)
    (tmp_path / "pub.pem").write_bytes(pub)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for form in (pub, pub.decode(), tmp_path / "pub.pem", str(tmp_path / "pub.pem"), raw, key.public_key()):
        assert load_bundle(root, public_key=form).signed
    with pytest.raises(BundleError, match="not found"):
        load_bundle(root, public_key=tmp_path / "missing.pem")


def test_semantic_versions_sort():
    versions = ["1.10.0", "1.2.0", "1.2.0-rc.1", "0.9.9"]
    assert sorted(versions, key=version_key) == ["0.9.9", "1.2.0-rc.1", "1.2.0", "1.10.0"]


def test_a_cache_other_users_can_write_is_refused(tmp_path, onnx_file):
    root = make_bundle(tmp_path / "b", onnx_file)
    archive = pack_archive(root, tmp_path / "b.tar.gz")
    shared = tmp_path / "shared-cache"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(BundleError, match="writable by other users"):
        load_bundle(archive, cache_dir=shared)
    shared.chmod(0o700)
    assert load_bundle(archive, cache_dir=shared).manifest.name == "tiny"
