import json
import os
import struct
from pathlib import Path

import pytest
import torch

from qpsnn.sw import modelfile
from qpsnn.sw.errors import ModelFileError
from qpsnn.sw.fold import fold

from conftest import random_model


def _same(a, b):
    assert a.timesteps == b.timesteps and a.classes == b.classes and tuple(a.in_shape) == tuple(b.in_shape)
    for la, lb in zip(a.layers, b.layers):
        assert torch.equal(la.codes, lb.codes)
        assert torch.equal(la.bias, lb.bias)
        assert (la.threshold is None and lb.threshold is None) or torch.equal(la.threshold, lb.threshold)
        assert (la.weight_shift, la.membrane_bits, la.pool, la.bits) == (lb.weight_shift, lb.membrane_bits, lb.pool, lb.bits)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_round_trip(tmp_path, bits):
    net = fold(random_model("c5-p2-c3-fc4", (2, 6, 6), bits=bits), lanes=2)  # 2x2-bit words: padded to a byte
    size = modelfile.save(net, tmp_path / "m.qpsnn")
    assert size == (tmp_path / "m.qpsnn").stat().st_size
    _same(net, modelfile.load(tmp_path / "m.qpsnn"))


@pytest.fixture(scope="module")
def small_file_bytes():
    return modelfile.to_bytes(fold(random_model("c2-p2-fc3", (1, 4, 4), bits=2), lanes=4))


def test_every_single_byte_flip_is_rejected(small_file_bytes):
    data = small_file_bytes
    modelfile.from_bytes(data)  # the intact file loads
    for i in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= flip
            with pytest.raises(ModelFileError):
                modelfile.from_bytes(bytes(bad))


def test_every_truncation_and_extension_is_rejected(small_file_bytes):
    data = small_file_bytes
    for n in range(len(data)):
        with pytest.raises(ModelFileError):
            modelfile.from_bytes(data[:n])
    with pytest.raises(ModelFileError, match="unexpected bytes"):
        modelfile.from_bytes(data + b"\x00")


def _rewrite_manifest(data: bytes, edit) -> bytes:
    """A file whose manifest was changed and whose CRC was recomputed: only the consistency checks can catch it."""
    _, major, minor, mlen = struct.unpack_from("<8sHHI", data)
    manifest = json.loads(data[16:16 + mlen])
    edit(manifest)
    body = json.dumps(manifest).encode()
    head = struct.pack("<8sHHI", modelfile.MAGIC, major, minor, len(body)) + body
    return head + struct.pack("<I", modelfile._crc(head)) + data[16 + mlen + 4:]


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["layers"][0].update(bits=3), "bits must be 2, 4 or 8"),
    (lambda m: m["layers"][0]["threshold"].pop(), "threshold must be a list"),
    (lambda m: m["layers"][1].update(in_shape=[7]), "does not match the previous output"),
    (lambda m: m.update(classes=5), "for 5 classes"),
    (lambda m: m["layers"][0].update(kept_channels=[1, 0]), "strictly increasing"),
    (lambda m: m["layers"][0].update(threshold=[0, 1]), "thresholds must be positive"),
    (lambda m: m.update(lanes=8), "need"),
    (lambda m: m.pop("timesteps"), "no field 'timesteps'"),
    (lambda m: m["neuron"].update(reset="subtract"), "reset to zero"),
])
def test_inconsistent_manifest_is_named(small_file_bytes, edit, message):
    with pytest.raises(ModelFileError, match=message):
        modelfile.from_bytes(_rewrite_manifest(small_file_bytes, edit))


def test_wrong_version_and_magic(small_file_bytes):
    bad = bytearray(small_file_bytes)
    bad[8:10] = struct.pack("<H", 2)
    with pytest.raises(ModelFileError, match="version 2.0 is not supported"):
        modelfile.from_bytes(bytes(bad))
    with pytest.raises(ModelFileError, match="not a .qpsnn file"):
        modelfile.from_bytes(b"PK\x03\x04" + small_file_bytes[4:])


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        modelfile.load(tmp_path / "nope.qpsnn")
    with pytest.raises(ModelFileError, match="is a directory"):
        modelfile.load(tmp_path)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    import pickle

    def forbidden(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    net = fold(random_model(), lanes=4)
    modelfile.save(net, tmp_path / "m.qpsnn")
    modelfile.load(tmp_path / "m.qpsnn")


def test_interrupted_export_leaves_no_partial_file(tmp_path, monkeypatch):
    net = fold(random_model(), lanes=4)
    target = tmp_path / "m.qpsnn"
    modelfile.save(net, target)
    before = target.read_bytes()
    calls = []

    def dying_write(f, data, chunk=1 << 16):
        f.write(data[: len(data) // 2])
        calls.append(1)
        raise KeyboardInterrupt  # the user pressed Ctrl-C mid-write

    monkeypatch.setattr(modelfile, "_write_all", dying_write)
    other = fold(random_model(seed=3), lanes=4)
    with pytest.raises(KeyboardInterrupt):
        modelfile.save(other, target)
    with pytest.raises(KeyboardInterrupt):
        modelfile.save(other, tmp_path / "new.qpsnn")
    assert calls == [1, 1]
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.qpsnn"]  # no partial new file, no temp left
    assert oct(os.stat(target).st_mode & 0o777) != "0o600"
