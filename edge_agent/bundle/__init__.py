"""Model bundles: verified, optionally signed packages of model artifacts plus a manifest.

The device side needs only numpy, pydantic and cryptography here (TFLite metadata also
needs ai-edge-litert); writing bundles is done by ``crackseg-convert``.
"""

from edge_agent.bundle.loader import (
    Bundle,
    BundleError,
    default_cache_dir,
    load_bundle,
    verify_bundle_dir,
)
from edge_agent.bundle.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SIGNATURE_NAME,
    ArtifactEntry,
    FileEntry,
    Manifest,
    Selftest,
    SelftestTolerance,
    SourceInfo,
    ValidationEntry,
    ValidationSummary,
)
from edge_agent.bundle.pack import (
    PackError,
    artifact_entry,
    file_entry,
    pack_archive,
    write_manifest,
)
from edge_agent.bundle.signing import SignatureError, load_public_key

__all__ = ["ArtifactEntry", "Bundle", "BundleError", "FileEntry", "MANIFEST_NAME", "Manifest", "PackError",
           "SCHEMA_VERSION", "SIGNATURE_NAME", "Selftest", "SelftestTolerance", "SignatureError",
           "SourceInfo", "ValidationEntry", "ValidationSummary", "artifact_entry", "default_cache_dir", "file_entry",
           "load_bundle", "load_public_key", "pack_archive", "verify_bundle_dir", "write_manifest"]
