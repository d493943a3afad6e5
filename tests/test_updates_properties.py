"""Property-based tests (hypothesis) of everything a sender controls on the update side.

Whatever arrives, the answer is a clear refusal (CommandError, UpdateError, BundleError) or a
JSON answer, never another exception and never a hang, and nothing already accepted is lost:

- command payloads of model-update/-chunk/-chunk-abort/-rollback/-status through the real
  CommandRegistry with a signature verifier (types, sizes, nesting, unicode, huge numbers,
  NaN, forged signature fields);
- download URLs (odd schemes, hosts, paths, escapes) against a file_root;
- bundle archives (tar, tar.gz, zip) with odd names, links, devices, FIFOs, huge claimed
  sizes, duplicates, truncation and flipped bytes, through ``ModelStore.install``;
- chunked transfers: a valid one interleaved with garbage (wrong counts and indexes, base64
  garbage, other hashes, other ids) still completes with the exact bytes.

Sizes are kept small and the examples many; ``EXAMPLES_SCALE`` multiplies the counts (e.g. 10
for a long local run). Hypothesis keeps no database in the repository (``database=None``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import tempfile
import warnings
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.agent.commands import CommandRegistry
from edge_agent.bundle import BundleError
from edge_agent.comms.base import Command, CommandError
from edge_agent.config.sections import ModelConfig
from edge_agent.config.updates import UpdatesConfig
from edge_agent.updates.commands import UpdateCommands
from edge_agent.updates.download import DownloadArea, FetchLimits
from edge_agent.updates.manager import Settings, UpdateManager
from edge_agent.updates.signed_commands import command_verifier_for, sign_command
from edge_agent.updates.state import Job
from edge_agent.updates.store import ModelStore, UpdateError
from tests.bundles import make_keys

SCALE = float(os.environ.get("EXAMPLES_SCALE", "1"))
REFUSALS = (CommandError, UpdateError, BundleError)
PREFIX = "crackseg/van-1/cmd/"
CHUNK_MAX = 512
MAX_BUNDLE = 8 * 1024


def examples(n: int) -> settings:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=timedelta(seconds=10), database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


class OfflineManager(UpdateManager):
    """A real manager that never reaches the network or loads a model: accepted jobs are recorded."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.started: list[Job] = []

    def start(self, job: Job) -> dict:
        self.state.begin(job)  # the real busy checks
        self.started.append(job)
        self.state.finish(None)
        return {"accepted": True, "update_id": job.update_id, "stage": "downloading"}


# -- JSON-like values -------------------------------------------------------------------------------
# Few draws per value: hypothesis pays per draw, and thousands of examples must fit in seconds.
SPECIAL_INTS = [0, -1, 1, 2 ** 31, 2 ** 63, 2 ** 64 + 1, 10 ** 30, 10 ** 400, -(10 ** 400)]
SPECIAL_TEXTS = ["", "..", "../../etc/shadow", "a" * 300, "\x00", "\ud800", "💥", "t-1", "\u202e", "ab" * 32, "AAAA",
                 "@@@", "file:///etc/shadow", "http://127.0.0.1:1/x", "https://[::1", "http://", "ftp://x/y", "AAA=",
                 "1e999", "NaN", "null", "model-update", "key:office"]
SPECIAL_SCALARS = [None, True, False, 0.5, -0.0, float("nan"), float("inf"), -float("inf"), 1e308, 2 ** 53 + 1]
huge_ints = st.one_of(st.integers(min_value=-(2 ** 70), max_value=2 ** 70), st.sampled_from(SPECIAL_INTS))
texts = st.one_of(st.sampled_from(SPECIAL_TEXTS), st.text(max_size=6))
scalars = st.one_of(st.sampled_from(SPECIAL_SCALARS + SPECIAL_INTS + SPECIAL_TEXTS), huge_ints, st.floats(), texts)
_level1 = st.one_of(scalars, st.lists(scalars, max_size=3))
json_values = st.one_of(_level1, st.dictionaries(texts, _level1, max_size=3),  # two levels are enough to reach
                        st.sampled_from([[[[[[1]]]]], {"a": {"b": {"c": [None]}}}]))  # every check; deeper: samples
FIELDS = ["url", "sha256", "size", "version", "transfer_id", "index", "count", "data", "request_id", "sig",
          "key_id", "ts", "nonce", "id", "colour"]
# Near-valid bodies: the interesting refusals are deep inside, behind a valid-looking envelope.
TEMPLATES = [
    {"url": "https://models.example/a.tar.gz", "sha256": "ab" * 32, "size": 100, "version": "1.0.0"},
    {"url": "file:///etc/passwd", "sha256": "ab" * 32},
    {"transfer_id": "t-1", "index": 0, "count": 2, "sha256": "ab" * 32, "data": "AAAA"},
    {"transfer_id": "t-1"},
    {},
]
field_values = st.one_of(json_values, st.just(base64.b64encode(b"x" * (CHUNK_MAX + 1)).decode()))


@st.composite
def payloads(draw) -> dict:
    body = dict(draw(st.sampled_from(TEMPLATES)))
    for key in draw(st.lists(st.one_of(st.sampled_from(FIELDS), texts), max_size=3)):
        if draw(st.booleans()):
            body[key] = draw(field_values)
        else:
            body.pop(key, None)
    return body


@pytest.fixture(scope="module", autouse=True)
def no_fsync():
    """fsync is what makes these writes durable, not what is tested here; without it thousands of
    examples fit in seconds (tests/test_updates_killpoints.py covers durability)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: None)
        yield


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder for the thousands of small files these tests write: on a RAM disk when there is one
    (a folder removal costs milliseconds on some virtual disks), else pytest's temp folder."""
    import shutil

    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        folder = Path(tempfile.mkdtemp(prefix="crackseg-props-", dir="/dev/shm"))
        yield folder
        shutil.rmtree(folder, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("scratch")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@pytest.fixture(scope="module")
def keyed(scratch) -> tuple[Ed25519PrivateKey, UpdatesConfig]:
    folder = scratch / "key"
    key, pub = make_keys(folder)
    root = folder / "usb"
    root.mkdir()
    # unsigned commands allowed, so that random bodies reach the handlers; signed ones are verified
    cfg = UpdatesConfig(enabled=True, command_public_keys=[{"key_id": "office", "file": pub}],
                        require_signed_update_commands=False, max_bundle_bytes=MAX_BUNDLE,
                        chunk_max_bytes=CHUNK_MAX, allowed_url_schemes=["https", "file"], file_root=root)
    return key, cfg


@pytest.fixture(scope="module")
def device(scratch, keyed) -> tuple[CommandRegistry, OfflineManager, Ed25519PrivateKey]:
    key, cfg = keyed
    state = scratch / "state"
    m = OfflineManager(Settings(cfg, ModelConfig(), state), load_model=lambda p: p, swap_model=lambda s: None)
    registry = CommandRegistry(verify=command_verifier_for(cfg, state), audit=m.audit)
    m.register_commands(registry)
    return registry, m, key


@examples(1600)
@given(name=st.sampled_from(["model-update", "model-chunk", "model-chunk-abort", "model-rollback", "model-status"]),
       body=payloads(), sign=st.sampled_from(["no", "no", "valid", "forged"]))
def test_any_command_payload_is_answered_or_refused(device, name, body, sign) -> None:
    registry, m, key = device
    topic = PREFIX + name
    if sign != "no":
        clean = {k: v for k, v in body.items() if k not in ("ts", "nonce", "key_id", "sig")}
        signer = key if sign == "valid" else Ed25519PrivateKey.generate()
        try:
            body = sign_command(signer, topic, clean, "office")
        except (ValueError, RecursionError):  # NaN or lone surrogates: cannot be signed at all; send as is
            body = {**clean, "sig": "AAAA", "key_id": "office"}
    try:
        answer = registry(Command(name, body, topic))
    except REFUSALS:
        return
    assert isinstance(answer, dict)
    json.dumps(answer)  # an answer must go out as JSON
    for t in m.chunks.open_transfers():  # keep the device from filling up between examples
        m.chunks.abort(t.transfer_id)


# -- URLs ----------------------------------------------------------------------------------------------
url_parts = st.one_of(texts, st.sampled_from(["/", "//", "/..", "%2e%2e", "%00", "%2f", "usb", "a b", "?", "#",
                                              "@", ":", "[", "localhost", "\\"]))


@examples(500)
@given(scheme=st.sampled_from(["file", "FILE", "http", "https", "ftp", "", "file:", "jar"]),
       parts=st.lists(url_parts, max_size=6), size=st.one_of(st.none(), huge_ints))
def test_any_url_is_fetched_or_refused_without_network(scratch, keyed, scheme, parts, size) -> None:
    _, cfg = keyed
    root = Path(cfg.file_root)
    (root / "stick").mkdir(exist_ok=True)
    (root / "stick" / "not-a-bundle.tar.gz").write_bytes(b"\x1f\x8bjunk")
    area = DownloadArea(scratch / "url-downloads")
    url = f"{scheme}://" + "/".join(parts) if parts[:1] != ["usb"] else f"{scheme}://{root}/" + "/".join(parts[1:])
    limits = FetchLimits(MAX_BUNDLE, 5.0, ("file",), root)  # http(s) is refused before any connection
    try:
        area.fetch(url, "ab" * 32, limits, size=size if isinstance(size, int) and size > 0 else None)
    except UpdateError:
        return
    pytest.fail(f"{url} was fetched although no file has that sha256")


# -- bundle archives ----------------------------------------------------------------------------------
member_names = st.one_of(texts.filter(lambda s: "\x00" not in s and _utf8(s)), st.sampled_from(
    ["manifest.json", "manifest.sha256", "manifest.sig", "a/manifest.json", "/etc/passwd", "../x", "a/../../x",
     "./", "", "C:\\x", "a\\..\\..\\x", "dir/", "x" * 250 + "/y", "top/model.onnx", "top/"]))
MEMBER_KINDS = ["file", "file", "file", "dir", "symlink", "hardlink", "chr", "blk", "fifo", "huge"]


@st.composite
def archive_bytes(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["tar", "tar.gz", "zip"]))
    members = draw(st.lists(st.tuples(member_names, st.sampled_from(MEMBER_KINDS), st.binary(max_size=300)),
                            min_size=0, max_size=6))
    if draw(st.booleans()):  # a manifest whose checksum matches, so verification goes deeper
        manifest = draw(st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200),
                                  st.just(b"[" * 5000 + b"]" * 5000)))
        members += [("manifest.json", "file", manifest),
                    ("manifest.sha256", "file", hashlib.sha256(manifest).hexdigest().encode() + b"  manifest.json\n")]
    buf = io.BytesIO()
    if kind == "zip":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate names are part of the point
            with zipfile.ZipFile(buf, "w") as zf:
                for name, mkind, data in members:
                    info = zipfile.ZipInfo(name or "x")
                    modes = {"dir": 0o040755, "symlink": 0o120777, "chr": 0o020644, "fifo": 0o010644}
                    info.external_attr = modes.get(mkind, 0o100644) << 16
                    zf.writestr(info, data)
    else:
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
            for name, mkind, data in members:
                info = tarfile.TarInfo(name)
                types = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}
                if mkind in types:
                    info.type, info.linkname = types[mkind], "/etc/passwd"
                    tf.addfile(info)
                elif mkind == "huge":  # a header claiming far more than follows
                    info.size = 10 ** 11
                    tf.fileobj.write(info.tobuf(tf.format, tf.encoding, tf.errors))
                    tf.fileobj.write(data.ljust(512, b"\0"))
                    tf.offset += 512 + 512
                else:
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    if kind == "tar.gz":
        import gzip

        raw = gzip.compress(raw, mtime=0)
    cut = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=max(0, len(raw)))))
    if cut is not None:
        raw = raw[:cut]
    flips = draw(st.lists(st.integers(min_value=0, max_value=max(0, len(raw) - 1)), max_size=3))
    data = bytearray(raw)
    for i in flips:
        if data:
            data[i] ^= 0x5A
    return kind, bytes(data)


@examples(700)
@given(archive=archive_bytes(), signed=st.booleans())
def test_any_archive_is_refused_cleanly(scratch, archive, signed) -> None:
    kind, data = archive
    base = scratch
    path = base / f"candidate.{kind}"
    path.write_bytes(data)
    key = Ed25519PrivateKey.generate().public_key() if signed else None
    store = ModelStore(base / "archive-store" / "models", key, require_signature=signed)
    try:
        store.install(path, max_bytes=64 * 1024)
    except REFUSALS:
        pass
    else:
        pytest.fail("an archive without a valid bundle was installed")
    leftovers = [p.name for p in store.root.iterdir() if p.name != ".lock"] if store.root.is_dir() else []
    assert leftovers == []


# -- chunked transfers -------------------------------------------------------------------------------
@st.composite
def transfer_scripts(draw) -> tuple[bytes, list[tuple[str, dict]]]:
    """A valid archive's chunks (first one first) interleaved with garbage chunk commands."""
    archive = b"\x1f\x8b" + draw(st.binary(min_size=1, max_size=4 * CHUNK_MAX))
    sha = hashlib.sha256(archive).hexdigest()
    parts = [archive[i:i + CHUNK_MAX] for i in range(0, len(archive), CHUNK_MAX)]
    good = [{"transfer_id": "good", "index": i, "count": len(parts), "sha256": sha,
             "data": base64.b64encode(p).decode()} for i, p in enumerate(parts)]
    rest = draw(st.permutations(good[1:]))
    garbage = st.one_of(
        payloads(),
        st.builds(lambda g, c: {**g, "count": c}, st.sampled_from(good), huge_ints.filter(lambda c: c != len(parts))),
        st.builds(lambda g, i: {**g, "index": i}, st.sampled_from(good),
                  huge_ints.filter(lambda i: not 0 <= i < len(parts))),
        st.builds(lambda g, s: {**g, "sha256": s}, st.sampled_from(good), st.sampled_from(["cd" * 32, "x", ""])),
        st.builds(lambda g, d: {**g, "data": d}, st.sampled_from(good), st.sampled_from(["@@@", "", "A", "AAA="])),
        st.builds(lambda g, t: {**g, "transfer_id": t}, st.sampled_from(good), st.sampled_from(["bad", "../g", "o"])),
        st.sampled_from(good),  # a duplicate of a valid chunk
        st.just(("abort", {"transfer_id": "good-not"})),
    )
    script: list[tuple[str, dict]] = [("chunk", good[0])]
    for g in rest:
        for junk in draw(st.lists(garbage, max_size=3)):
            script.append(junk if isinstance(junk, tuple) else ("chunk", junk))
        script.append(("chunk", g))
    return archive, script


@examples(400)
@given(script=transfer_scripts())
def test_a_valid_transfer_completes_among_garbage(scratch, script) -> None:
    archive, steps = script
    state = Path(tempfile.mkdtemp(prefix="transfer-", dir=scratch))
    cfg = UpdatesConfig(enabled=True, max_bundle_bytes=MAX_BUNDLE, chunk_max_bytes=CHUNK_MAX)
    m = OfflineManager(Settings(cfg, ModelConfig(), state), load_model=lambda p: p, swap_model=lambda s: None)
    commands = UpdateCommands(m)
    valid_sha = hashlib.sha256(archive).hexdigest()
    completed = None
    for action, body in steps:
        cmd = Command("model-chunk" if action == "chunk" else "model-chunk-abort", body, PREFIX + "model-chunk")
        try:
            answer = commands.chunk(cmd) if action == "chunk" else commands.abort_transfer(cmd)
        except CommandError as exc:
            assert not _is_exact_valid(body, archive), f"a chunk of the valid transfer was refused: {exc}"
            continue
        json.dumps(answer)
        if answer.get("complete") and body.get("sha256") == valid_sha:
            completed = answer
    assert completed is not None and completed["update"]["accepted"]
    assert [j.path.read_bytes() for j in m.started if j.sha256 == valid_sha] == [archive]


def _is_exact_valid(body: dict, archive: bytes) -> bool:
    """Exactly one of the valid transfer's chunks (a resend included)."""
    count, index = body.get("count"), body.get("index")
    if set(body) != {"transfer_id", "index", "count", "sha256", "data"} or body["transfer_id"] != "good":
        return False
    if type(index) is not int or type(count) is not int or not 0 <= index < count:
        return False
    part = archive[index * CHUNK_MAX:(index + 1) * CHUNK_MAX]
    return (body["sha256"] == hashlib.sha256(archive).hexdigest() and count == -(-len(archive) // CHUNK_MAX)
            and body["data"] == base64.b64encode(part).decode())
