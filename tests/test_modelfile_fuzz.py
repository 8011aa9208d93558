"""Issue 11: model files with a valid CRC but a bad manifest are refused with one `ModelFileError`; a file
that loads runs in the golden model. A seeded semantic fuzz (1,000 cases here, 10,000 in
``python -m qpsnn.sw.fuzz_modelfile``) and a hypothesis search over manifest fields and header values."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qpsnn.sw import fuzz_modelfile, modelfile
from qpsnn.sw.errors import ModelFileError
from qpsnn.sw.fold import fold
from qpsnn.sw.golden import run_golden
from qpsnn.sw.packing import packed_size

from conftest import random_model

BASE = fuzz_modelfile.base_file()
MANIFEST = fuzz_modelfile.manifest_of(BASE)
PATHS = [p for p in fuzz_modelfile._paths(MANIFEST) if p]
IMAGES = torch.randint(0, 256, (2, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions: torch's threads only add overhead on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _loads_and_runs_or_is_refused(data: bytes) -> str:
    try:
        net = modelfile.from_bytes(data, "fuzz")
    except ModelFileError as exc:
        assert "\n" not in str(exc)
        return "refused"
    run_golden(net, IMAGES)
    json.dumps(modelfile.read_manifest_bytes(data))
    return "loaded"


def test_seeded_semantic_fuzz_1000_cases():
    report = fuzz_modelfile.run(1000, seed=0, data=BASE)
    assert report.uncaught == 0, report.first_uncaught
    assert report.cases == 1000 and report.refused > 500 and report.loaded_and_ran > 0
    assert report.slowest_seconds < 5


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False)
                    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=8)


@settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(PATHS), value=JSON)
def test_any_value_in_any_field_is_refused_cleanly_or_runs(path, value):
    manifest = json.loads(json.dumps(MANIFEST))
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    _loads_and_runs_or_is_refused(fuzz_modelfile.rewrite(BASE, manifest))


@settings(max_examples=150, derandomize=True, deadline=None)
@given(major=st.integers(0, 65535), minor=st.integers(0, 65535), cut=st.integers(0, 40), extra=st.binary(max_size=8))
def test_header_and_body_edits_with_a_valid_crc_are_refused(major, minor, cut, extra):
    _, _, _, mlen = struct.unpack_from("<8sHHI", BASE)
    body = BASE[16:16 + mlen]
    body = body[:len(body) - cut] + extra
    head = struct.pack("<8sHHI", modelfile.MAGIC, major, minor, len(body)) + body
    data = head + struct.pack("<I", modelfile._crc(head)) + BASE[16 + mlen + 4:]
    outcome = _loads_and_runs_or_is_refused(data)
    if (major, minor, cut, extra) != (1, 0, 0, b""):
        assert outcome == "refused" or (major == 1 and cut == 0 and extra.strip() == b"" and minor == 0)


def test_a_current_beyond_the_golden_models_exact_range_is_refused():
    """A wide layer whose every weight is the most negative code, shifted by 32: it would overflow float64."""
    net = fold(random_model("c128-fc10", (1, 8, 8), bits=8), lanes=8)  # 8,192 inputs x 255 << 32 > 2^52
    data = modelfile.to_bytes(net)
    manifest = fuzz_modelfile.manifest_of(data)
    layer = manifest["layers"][1]
    layer["weight_shift"] = 32
    size = packed_size(layer["weight_rows"], layer["weight_cols"], layer["bits"], manifest["lanes"])
    zeros = bytes(size)  # code 0 everywhere: every weight is -(2^bits - 1)
    sec = manifest["sections"][1]
    sec.update(bytes=size, crc32=modelfile._crc(zeros))
    _, _, _, mlen = struct.unpack_from("<8sHHI", data)
    start = 16 + mlen + 4 + sec["offset"]
    patched = data[:start] + zeros + data[start + size:]
    with pytest.raises(ModelFileError, match="exact range"):
        modelfile.from_bytes(fuzz_modelfile.rewrite(patched, manifest))
