"""Weights and model safety: safetensors only (no pickle), SHA-256 from the model card
checked at load, tampered or truncated weights refused with a message that says so."""
from __future__ import annotations

import json
import pickle
import re
import shutil
import struct

import pytest
import torch

from core.batch import main as batch_main
from core.model.checkpoint import CARD_FILE, WEIGHTS_FILE, load_bundle
from core.model.integrity import sha256_file
from core.errors import CheckpointError
from tests.conftest import REPO


@pytest.fixture
def bundle_copy(tiny_bundle_dir, tmp_path):
    """A private copy of the tiny model folder, free to tamper with."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_bundle_dir, dst)
    return dst


def _card(folder) -> dict:
    return json.loads((folder / CARD_FILE).read_text())


def _set_card_sha(folder, file_name: str) -> None:
    """What an attacker who can also edit the card would do: make the card match their file."""
    card = _card(folder)
    card["weights"].update(file=file_name, sha256=sha256_file(folder / file_name))
    (folder / CARD_FILE).write_text(json.dumps(card))


def test_weights_file_is_safetensors_and_matches_the_card(bundle_copy):
    card = _card(bundle_copy)
    wfile = bundle_copy / card["weights"]["file"]
    assert wfile.name == WEIGHTS_FILE and wfile.suffix == ".safetensors"
    raw = wfile.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])  # safetensors: u64 header size, then a JSON header
    header = json.loads(raw[8:8 + header_len])
    assert "__metadata__" in header and any(k.startswith("head.") for k in header)
    assert not raw.startswith((b"PK", b"\x80")), "looks like a torch zip or a pickle"
    assert card["weights"]["sha256"] == sha256_file(wfile) and card["weights"]["bytes"] == len(raw)
    bundle = load_bundle(bundle_copy)
    assert bundle.sha256 == card["weights"]["sha256"]


def test_no_code_path_unpickles_weights():
    """No module of the engine or the app calls pickle-based loaders (``torch.load`` only with weights_only=True,
    which reads tensors and refuses code: the offline ImageNet weights of ``core.model.pretrained``)."""
    pattern = re.compile(r"\btorch\.load\s*\((?![^)]*weights_only\s*=\s*True)|\bpickle\.loads?\s*\(|\bjoblib\.load\s*\(|weights_only\s*=\s*False"
                         r"|\bdill\.load|\bcloudpickle\.load")
    sources = [*REPO.glob("core/**/*.py"), *REPO.glob("ui/*.py"), *REPO.glob("pages/*.py"), *REPO.glob("*.py")]
    assert len(sources) > 10
    offenders = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in sources for m in pattern.finditer(p.read_text())]
    assert offenders == []


TAMPERING = {
    "one flipped byte": lambda b: b[:len(b) // 2] + bytes([b[len(b) // 2] ^ 0x01]) + b[len(b) // 2 + 1:],
    "truncated to half": lambda b: b[:len(b) // 2],
    "last byte cut": lambda b: b[:-1],
    "bytes appended": lambda b: b + b"\x00" * 16,
    "emptied": lambda b: b"",
}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_tampered_or_truncated_weights_are_refused(bundle_copy, how):
    wfile = bundle_copy / WEIGHTS_FILE
    wfile.write_bytes(TAMPERING[how](wfile.read_bytes()))
    with pytest.raises(CheckpointError) as info:
        load_bundle(bundle_copy)
    msg = str(info.value)
    assert "failed its integrity check" in msg and "modified or truncated" in msg and "refusing to load" in msg
    assert WEIGHTS_FILE in msg and _card(bundle_copy)["weights"]["sha256"][:12] in msg


def test_tampered_card_hash_is_refused(bundle_copy):
    card = _card(bundle_copy)
    card["weights"]["sha256"] = "0" * 64
    (bundle_copy / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="failed its integrity check"):
        load_bundle(bundle_copy)
    del card["weights"]
    (bundle_copy / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="missing field 'weights'"):
        load_bundle(bundle_copy)
    (bundle_copy / CARD_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_bundle(bundle_copy)


class _Payload:
    """A pickle that runs code when unpickled: it would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("planted_as", [WEIGHTS_FILE, "model.pt"])
def test_planted_pickle_is_refused_and_never_executed(bundle_copy, tmp_path, planted_as):
    marker = tmp_path / "pwned"
    state = load_bundle(bundle_copy).model.state_dict()
    evil = bundle_copy / planted_as
    torch.save({"state_dict": state, "x": _Payload(marker)}, evil)  # a classic pickle-based .pt checkpoint
    _set_card_sha(bundle_copy, planted_as)  # even with a matching hash in the card
    with pytest.raises(CheckpointError) as info:
        load_bundle(bundle_copy)
    assert "cannot be read as safetensors" in str(info.value) and planted_as in str(info.value)
    assert not marker.exists(), "the pickle payload ran"
    # A bare pickle (not even a torch zip) is refused the same way.
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    _set_card_sha(bundle_copy, planted_as)
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        load_bundle(bundle_copy)
    assert not marker.exists()


def test_batch_cli_reports_refusal_instead_of_crashing(bundle_copy, tmp_path, capsys):
    wfile = bundle_copy / WEIGHTS_FILE
    wfile.write_bytes(wfile.read_bytes()[:-100])
    (tmp_path / "in").mkdir()
    rc = batch_main([str(tmp_path / "in"), "--out", str(tmp_path / "r.csv"), "--weights", str(bundle_copy),
                     "--no-audit"])
    err = capsys.readouterr().err
    assert rc == 2 and "failed its integrity check" in err and "Traceback" not in err
    assert not (tmp_path / "r.csv").exists()
