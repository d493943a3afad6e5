"""Keys, models, bundles and archives for the tests, made one way for all of them.

Real tiny ONNX models of the reference network (``tiny_onnx``), Ed25519 key pairs (``make_keys``),
real bundles with a self-test section, signed or not (``build_bundle``, ``build_archive``), and
archives with chosen members for the refusal tests (``tar_archive``).
"""

from __future__ import annotations

import atexit
import functools
import io
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle import (
    Manifest,
    Selftest,
    SourceInfo,
    artifact_entry,
    file_entry,
    pack_archive,
    write_manifest,
)
from edge_agent.contract import InferenceContract
from edge_agent.util.files import sha256_file
from tests.convert_fixtures import synthetic_pavement
from tests.tiny_models import export_onnx, tiny_torch_model

SELFTEST_HW = (64, 96)      # the self-test image size
SERVICE_HW = (96, 128)      # frames "on the road" (another size)
ARTIFACT = "model-fp32.onnx"


@functools.cache
def _work_dir() -> Path:
    root = Path(tempfile.mkdtemp(prefix="crackseg-update-test-"))
    atexit.register(shutil.rmtree, root, True)
    return root


@functools.cache
def tiny_onnx(seed: int = 0, fixed_reshape: bool = False) -> Path:
    """The tiny reference network as ONNX with dynamic height/width.

    ``fixed_reshape`` appends a Reshape of the logits to the self-test's exact element
    count: the model passes its self-test but every frame of another size fails inside
    onnxruntime, as a wrongly exported graph would on the road.
    """
    path = _work_dir() / f"tiny-{seed}{'-reshape' if fixed_reshape else ''}.onnx"
    export_onnx(tiny_torch_model(seed), path, None)
    if fixed_reshape:
        import onnx
        from onnx import TensorProto, helper

        proto = onnx.load(str(path))
        graph = proto.graph
        out = graph.output[0]
        out.name, old = "logits", out.name
        for node in graph.node:
            node.output[:] = ["logits_raw" if o == old else o for o in node.output]
        graph.initializer.append(helper.make_tensor("fixed_shape", TensorProto.INT64, [4],
                                                    [1, 1, *SELFTEST_HW]))
        graph.node.append(helper.make_node("Reshape", ["logits_raw", "fixed_shape"], ["logits"]))
        dims = out.type.tensor_type.shape.dim
        for dim, value in zip(dims, [1, 1, *SELFTEST_HW], strict=True):
            dim.ClearField("dim_param")
            dim.dim_value = value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
    return path


def public_pem(key: Ed25519PrivateKey) -> bytes:
    """The PEM (SubjectPublicKeyInfo) of ``key``'s public half, as public-key files hold it."""
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def make_keys(folder: Path) -> tuple[Ed25519PrivateKey, Path]:
    """A new Ed25519 key pair in ``folder``: (private key, public.pem path); private.pem (PKCS8) beside it."""
    key = Ed25519PrivateKey.generate()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "private.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    pub = folder / "public.pem"
    pub.write_bytes(public_pem(key))
    return key, pub


def build_bundle(root: Path, version: str, *, onnx: Path | None = None, key: Ed25519PrivateKey | None = None,
                 name: str = "tiny", wrong_expected: bool = False) -> Path:
    """A bundle folder with one fp32 ONNX artifact and a self-test measured on that artifact.

    ``wrong_expected`` stores expected outputs the model does not produce (a model that
    behaves differently from when it was built), signed like any other bundle.
    """
    from converters.build import make_selftest
    from edge_agent.detectors.runtime import open_model

    onnx = onnx or tiny_onnx()
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx, root / ARTIFACT)
    image, _ = synthetic_pavement(np.random.default_rng(7), *SELFTEST_HW)
    expected = open_model(root / ARTIFACT, threads=1).probabilities(image)
    selftest = make_selftest(root, image, expected, {"onnx-fp32": root / ARTIFACT}, threads=1)
    if wrong_expected:
        np.save(root / "selftest/expected_fp32.npy", (1.0 - expected).astype(np.float32), allow_pickle=False)
        selftest["expected"] = file_entry(root, "selftest/expected_fp32.npy").model_dump()
    manifest = Manifest(name=name, version=version,
                        source=SourceInfo(checkpoint="tiny.pt", checkpoint_sha256="0" * 64, kind="checkpoint"),
                        contract=InferenceContract(input_size=None, threshold=0.5),
                        artifacts=[artifact_entry(root, ARTIFACT, "onnx", "fp32", SELFTEST_HW, "NCHW")],
                        selftest=Selftest.model_validate(selftest))
    write_manifest(root, manifest, key.sign if key else None)
    return root


def build_archive(folder: Path, version: str, **kwargs) -> Path:
    """``<folder>/tiny-<version>.tar.gz`` of a fresh bundle."""
    bundle = build_bundle(folder / f"src-{version}", version, **kwargs)
    return pack_archive(bundle, folder / f"tiny-{version}.tar.gz")


def sha256_of(path: Path) -> str:
    return sha256_file(path)


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Flip the lowest bit of one byte of ``path``: the one at ``offset``, the middle one by default."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.write_bytes(bytes(data))


def tar_archive(path: Path, files: dict[str, bytes | Path], *, symlinks: dict[str, str] | None = None) -> Path:
    """A tar archive (gzip when ``path`` ends in .gz) holding exactly ``files`` (name: bytes or a file to
    copy) and ``symlinks`` (name: target), names as given: for archives no bundle tool would make."""
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as tf:
        for name, content in files.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path
