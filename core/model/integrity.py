"""Files checked against a pinned SHA-256 before they are used: the model weights and the ImageNet start.

Imports nothing of ``core.model``, so the checkpoint (which builds networks) and the pretrained weights (which the
networks load) both use it without importing each other.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from core.errors import CheckpointError


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file as 64 hex digits, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_verified(path: Path, expected_sha256: str, what: str, source: str,
                  error: type[Exception] = CheckpointError) -> bytes:
    """The bytes of ``path``, refused with ``error`` unless their SHA-256 is ``expected_sha256``.

    Read once, then hashed and parsed from the same bytes: the file cannot be swapped in between. ``what``
    names the file and ``source`` where the expected hash comes from, in the message.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{what} {path.name} cannot be read ({exc.strerror or exc})") from None
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected_sha256:
        raise error(f"{what} {path.name} failed its integrity check: SHA-256 is {actual[:12]}…, {source} expects "
                    f"{expected_sha256[:12]}…. The file was modified or truncated; refusing to load it.")
    return raw
