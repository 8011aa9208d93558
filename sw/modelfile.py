"""The `.qpsnn` compressed model file (contract 2).

Layout, all integers little-endian::

    0   8 bytes  magic  b"QPSNN\\x00\\r\\n"  (the CR LF catches text-mode copies)
    8   u16      major version, u16 minor version
    12  u32      manifest length M
    16  M bytes  manifest, UTF-8 JSON
    16+M u32     CRC32 of bytes [0, 16+M)
    ...          sections, back to back, in manifest order; each one's length and CRC32 are in the manifest

A weight section holds one layer's codes packed exactly as the weight memory reads them (`packing.py`).
Thresholds and biases are in the manifest. Loading parses JSON and raw bytes only, never pickle, and
checks every field; any problem raises one `ModelFileError` that names it.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import ModelFileError
from .intnet import INPUT_BITS, IntLayer, IntNet
from .options import MAX_TIMESTEPS, regular_file
from .packing import lanes_problem, pack_rows, packed_size, unpack_rows

MAGIC = b"QPSNN\x00\r\n"
VERSION = (1, 0)
_HEAD = struct.Struct("<8sHHI")
_CRC = struct.Struct("<I")
MAX_MANIFEST = 64 << 20
MAX_FILE = 1 << 30  # far beyond any model a board holds; a bigger "model" is not read into memory
MAX_DEPTH = 16  # JSON nesting of the manifest (the format itself needs 4)
MAX_MEMBRANE_BITS = 48
MAX_NEURONS = 1 << 24  # membranes of one layer (the golden model holds them all for a batch)
EXACT_LIMIT = 2 ** 52  # the golden model's float64 accumulation is exact below this (`golden.EXACT_LIMIT`)
KERNEL, PADDING = 3, 1


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def manifest_of(net: IntNet) -> tuple[dict, list[bytes]]:
    layers, sections = [], []
    offset = 0
    for i, layer in enumerate(net.layers):
        rows = layer.weight_rows()
        data = pack_rows(rows.numpy(), layer.bits, net.lanes)
        name = f"weights.{i}"
        sections.append((name, data, offset))
        offset += len(data)
        layers.append({
            "name": f"{layer.kind}{i}",
            "kind": layer.kind,
            "in_shape": list(layer.in_shape),
            "out_shape": list(layer.out_shape),
            "neurons": list(layer.neuron_shape),
            "kernel": 3 if layer.kind == "conv" else None,
            "padding": 1 if layer.kind == "conv" else None,
            "pool": layer.pool,
            "bits": layer.bits,
            "code_map": {"kind": "odd", "value": f"2*q-{(1 << layer.bits) - 1}"},
            "weight_shift": layer.weight_shift,
            "weight_rows": int(rows.shape[0]),
            "weight_cols": int(rows.shape[1]),
            "section": name,
            "fires": layer.fires,
            "threshold": None if layer.threshold is None else [int(v) for v in layer.threshold],
            "bias": [int(v) for v in layer.bias],
            "membrane_bits": layer.membrane_bits,
            "kept_channels": list(layer.kept_channels),
        })
    manifest = {
        "format": "qpsnn",
        "version": list(VERSION),
        "input": {"shape": list(net.in_shape), "bits": INPUT_BITS, "encoding": "bit-planes, direct (static) input"},
        "timesteps": net.timesteps,
        "classes": net.classes,
        "lanes": net.lanes,
        "neuron": {"model": "lif", "tau": 2.0 ** -net.leak_shift, "leak_shift": net.leak_shift, "reset": "zero",
                   "order": "V = (reset(V) >> leak_shift) + bias + inputs; spike if V >= threshold"},
        "layers": layers,
        "provenance": net.provenance,
        "sections": [{"name": n, "offset": o, "bytes": len(d), "crc32": _crc(d)} for n, d, o in sections],
    }
    return manifest, [d for _, d, _ in sections]


def to_bytes(net: IntNet) -> bytes:
    manifest, sections = manifest_of(net)
    body = json.dumps(manifest, separators=(",", ":"), sort_keys=False).encode()
    head = _HEAD.pack(MAGIC, *VERSION, len(body)) + body
    return head + _CRC.pack(_crc(head)) + b"".join(sections)


def save(net: IntNet, path: str | Path, data: bytes | None = None) -> int:
    """Write atomically: a temporary file in the same folder, fsync, then rename. Returns the size. The bytes
    (``data``: `to_bytes` of ``net``, when the caller has them) are loaded first: a file `load` would refuse
    is never written."""
    path = Path(path)
    data = to_bytes(net) if data is None else data
    try:
        from_bytes(data, str(path))
    except ModelFileError as exc:
        raise ModelFileError(f"the model cannot be exported, it would not load: {exc}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_all(f, data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a model file is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(data)


def _write_all(f, data: bytes, chunk: int = 1 << 16) -> None:
    for i in range(0, len(data), chunk):
        f.write(data[i:i + chunk])


# ---------------------------------------------------------------------------------------------- loading

def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ModelFileError(message)


def _int(value, what: str, lo: int | None = None, hi: int | None = None) -> int:
    _need(isinstance(value, int) and not isinstance(value, bool), f"{what} must be an integer, got {value!r}")
    _need(lo is None or value >= lo, f"{what} = {value} is below {lo}")
    _need(hi is None or value <= hi, f"{what} = {value} is above {hi}")
    return value


def _int_list(value, what: str, length: int) -> list[int]:
    _need(isinstance(value, list) and len(value) == length, f"{what} must be a list of {length} integers")
    return [_int(v, f"{what}[{k}]") for k, v in enumerate(value)]


def _depth(value) -> int:
    """Nesting depth of decoded JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, level + 1) for child in children)
    return deepest


def _field(obj: dict, key: str, where: str):
    _need(isinstance(obj, dict) and key in obj, f"{where} has no field {key!r}")
    return obj[key]


def _shape(value, what: str, rank: int | None = None) -> tuple[int, ...]:
    _need(isinstance(value, list) and (rank is None or len(value) == rank) and 1 <= len(value) <= 3,
          f"{what} must be a shape list" + (f" of rank {rank}" if rank else ""))
    return tuple(_int(v, f"{what}[{k}]", 1, 1 << 16) for k, v in enumerate(value))


def _parse_header(data: bytes, name: str) -> tuple[dict, int]:
    _need(len(data) >= _HEAD.size, f"{name}: file is {len(data)} bytes, too short for a .qpsnn header (truncated?)")
    magic, major, minor, mlen = _HEAD.unpack_from(data)
    _need(magic == MAGIC, f"{name}: not a .qpsnn file (bad magic {magic!r})")
    _need(major == VERSION[0], f"{name}: file format version {major}.{minor} is not supported (this reads {VERSION[0]}.x)")
    _need(mlen <= MAX_MANIFEST, f"{name}: manifest length {mlen} is implausible (corrupted header)")
    end = _HEAD.size + mlen
    _need(len(data) >= end + _CRC.size, f"{name}: file is truncated inside the manifest ({len(data)} of at least {end + 4} bytes)")
    (stored,) = _CRC.unpack_from(data, end)
    _need(stored == _crc(data[:end]), f"{name}: header/manifest CRC mismatch (file corrupted)")
    try:
        manifest = json.loads(data[_HEAD.size:end].decode("utf-8"))
    except ValueError as exc:  # not UTF-8, not JSON, or an integer of more than 4,300 digits
        raise ModelFileError(f"{name}: manifest is not valid JSON ({str(exc)[:200]})") from None
    except RecursionError:
        raise ModelFileError(f"{name}: manifest JSON is nested deeper than {MAX_DEPTH} levels") from None
    _need(isinstance(manifest, dict), f"{name}: manifest is not a JSON object")
    _need(_depth(manifest) <= MAX_DEPTH, f"{name}: manifest JSON is nested deeper than {MAX_DEPTH} levels")
    try:  # a lone surrogate (\\ud800) decodes but cannot be printed or written back
        json.dumps(manifest, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ModelFileError(f"{name}: manifest holds a string that is not valid Unicode") from None
    except ValueError:  # json reads NaN and Infinity; they are no numbers of this format
        raise ModelFileError(f"{name}: manifest holds NaN or Infinity") from None
    return manifest, end + _CRC.size


def _read_sections(manifest: dict, data: bytes, start: int, name: str) -> dict[str, bytes]:
    sections = _field(manifest, "sections", name)
    _need(isinstance(sections, list), f"{name}: sections must be a list")
    out, expected = {}, 0
    for k, sec in enumerate(sections):
        where = f"{name}: section {k}"
        sname = _field(sec, "name", where)
        _need(isinstance(sname, str) and sname not in out, f"{where} has a missing or duplicate name")
        offset = _int(_field(sec, "offset", where), f"{where} offset", 0)
        size = _int(_field(sec, "bytes", where), f"{where} bytes", 0)
        crc = _int(_field(sec, "crc32", where), f"{where} crc32", 0, 0xFFFFFFFF)
        _need(offset == expected, f"{where} ({sname}) starts at {offset}, expected {expected}")
        lo, hi = start + offset, start + offset + size
        _need(hi <= len(data), f"{name}: truncated: section {sname} needs bytes up to {hi}, file has {len(data)}")
        chunk = data[lo:hi]
        _need(_crc(chunk) == crc, f"{name}: section {sname} CRC mismatch (file corrupted)")
        out[sname] = chunk
        expected += size
    _need(len(data) == start + expected, f"{name}: {len(data) - start - expected} unexpected bytes after the last section")
    return out


def _parse_layer(entry: dict, i: int, sections: dict[str, bytes], lanes: int, prev_shape: tuple, name: str) -> IntLayer:
    where = f"{name}: layer {i}"
    _need(isinstance(_field(entry, "name", where), str), f"{where}: name must be a string")
    kind = _field(entry, "kind", where)
    _need(kind in ("conv", "fc", "output"), f"{where}: unknown kind {kind!r}")
    in_shape = _shape(_field(entry, "in_shape", where), f"{where} in_shape")
    _need(in_shape == prev_shape, f"{where}: in_shape {list(in_shape)} does not match the previous output {list(prev_shape)}")
    out_shape = _shape(_field(entry, "out_shape", where), f"{where} out_shape")
    pool = _int(_field(entry, "pool", where), f"{where} pool", 1, 2)
    bits = _int(_field(entry, "bits", where), f"{where} bits")
    _need(bits in (2, 4, 8), f"{where}: bits must be 2, 4 or 8, got {bits}")
    cmap = _field(entry, "code_map", where)
    _need(isinstance(cmap, dict) and cmap.get("kind") == "odd", f"{where}: only the 'odd' code map is supported")
    shift = _int(_field(entry, "weight_shift", where), f"{where} weight_shift", 0, 32)
    mbits = _int(_field(entry, "membrane_bits", where), f"{where} membrane_bits", 2, MAX_MEMBRANE_BITS)
    channels = out_shape[0]
    kernel, padding = (KERNEL, PADDING) if kind == "conv" else (None, None)
    _need(_field(entry, "kernel", where) == kernel and _field(entry, "padding", where) == padding
          and type(entry["kernel"]) is type(kernel) and type(entry["padding"]) is type(padding),
          f"{where}: a {kind} layer has kernel {kernel} and padding {padding}, the file says "
          f"{entry['kernel']!r} and {entry['padding']!r}")
    if kind == "conv":
        _need(len(in_shape) == 3 and len(out_shape) == 3, f"{where}: conv shapes must be (C, H, W)")
        _need(out_shape[1:] == (in_shape[1] // pool, in_shape[2] // pool), f"{where}: out_shape does not follow from in_shape and pool")
        rows_expected = in_shape[0] * KERNEL * KERNEL
        neurons = channels * in_shape[1] * in_shape[2]
    else:
        _need(len(out_shape) == 1 and pool == 1, f"{where}: {kind} output must be (N,) without pooling")
        rows_expected = math.prod(in_shape)
        neurons = channels
    _need(neurons <= MAX_NEURONS, f"{where}: {neurons} neurons, more than the {MAX_NEURONS} a layer may have")
    rows = _int(_field(entry, "weight_rows", where), f"{where} weight_rows")
    cols = _int(_field(entry, "weight_cols", where), f"{where} weight_cols")
    _need(rows == rows_expected and cols == channels, f"{where}: weight matrix {rows}x{cols} does not match the shapes ({rows_expected}x{channels})")
    sname = _field(entry, "section", where)
    _need(isinstance(sname, str) and sname in sections, f"{where}: weight section {sname!r} is missing")
    data = sections[sname]
    _need(len(data) == packed_size(rows, cols, bits, lanes),
          f"{where}: section {sname} has {len(data)} bytes, {rows}x{cols} codes at {bits} bits and {lanes} lanes need {packed_size(rows, cols, bits, lanes)}")
    codes = IntLayer.codes_from_rows(kind, torch.from_numpy(unpack_rows(data, rows, cols, bits, lanes)), in_shape[0])
    fires = _field(entry, "fires", where)
    _need(fires is (kind != "output"), f"{where}: fires must be {kind != 'output'} for a {kind} layer")
    limit = (1 << (mbits - 1)) - 1  # the largest membrane value; the bounds are Python integers (no overflow)
    threshold = _field(entry, "threshold", where)
    if fires:
        threshold = _int_list(threshold, f"{where} threshold", channels)
        _need(all(v > 0 for v in threshold), f"{where}: thresholds must be positive")
        _need(all(v <= limit for v in threshold), f"{where}: a threshold does not fit {mbits}-bit membranes")
        threshold = torch.tensor(threshold, dtype=torch.int64)
    else:
        _need(threshold is None, f"{where}: the output layer has no threshold")
    bias = _int_list(_field(entry, "bias", where), f"{where} bias", channels)
    _need(all(-limit <= v <= limit for v in bias), f"{where}: a bias does not fit {mbits}-bit membranes")
    bias = torch.tensor(bias, dtype=torch.int64)
    kept = _field(entry, "kept_channels", where)
    _need(isinstance(kept, list) and len(kept) == channels, f"{where}: kept_channels must list {channels} channels")
    kept = [_int(c, f"{where} kept_channels", 0, 1 << 20) for c in kept]
    _need(kept == sorted(set(kept)), f"{where}: kept_channels must be strictly increasing")
    layer = IntLayer(kind, in_shape, out_shape, pool, bits, codes, shift, threshold, bias, mbits, kept)
    # the golden model sums in float64: exact while every current stays below 2^52 (pixels reach 255, spikes 1)
    per_output = layer.weights().abs().flatten(1).sum(1).max().item() if channels else 0
    largest = per_output * (255 if i == 0 else 1) << shift
    _need(largest < EXACT_LIMIT, f"{where}: a current can reach {largest}, beyond the exact range 2^52 "
          f"(weight_shift {shift} is too large for {rows} inputs)")
    return layer


def from_bytes(data: bytes, name: str = "model") -> IntNet:
    return _from_bytes(data, name)[0]


def _from_bytes(data: bytes, name: str) -> tuple[IntNet, dict]:
    manifest, start = _parse_header(data, name)
    _need(manifest.get("format") == "qpsnn", f"{name}: manifest format is not 'qpsnn'")
    version = manifest.get("version")
    _need(version == list(_HEAD.unpack_from(data)[1:3]) and all(type(v) is int for v in version),
          f"{name}: manifest version {version!r} differs from the header's")
    sections = _read_sections(manifest, data, start, name)
    inp = _field(manifest, "input", name)
    in_shape = _shape(_field(inp, "shape", f"{name}: input"), f"{name}: input shape", 3)
    _need(math.prod(in_shape) <= 1 << 20, f"{name}: input shape {list(in_shape)} has more than {1 << 20} pixels")
    _need(type(_field(inp, "bits", f"{name}: input")) is int and inp["bits"] == INPUT_BITS,
          f"{name}: input bits must be {INPUT_BITS}")
    timesteps = _int(_field(manifest, "timesteps", name), f"{name}: timesteps", 1, MAX_TIMESTEPS)
    classes = _int(_field(manifest, "classes", name), f"{name}: classes", 2, 1 << 16)
    lanes = _int(_field(manifest, "lanes", name), f"{name}: lanes")
    _need(lanes_problem(lanes) is None, f"{name}: {lanes_problem(lanes)} (what the accelerator can be built with)")
    neuron = _field(manifest, "neuron", name)
    leak = _int(_field(neuron, "leak_shift", f"{name}: neuron"), f"{name}: leak_shift", 1, 16)
    _need(_field(neuron, "reset", f"{name}: neuron") == "zero", f"{name}: only reset to zero is supported")
    entries = _field(manifest, "layers", name)
    _need(isinstance(entries, list) and entries, f"{name}: layers must be a non-empty list")
    layers, shape = [], in_shape
    for i, entry in enumerate(entries):
        _need(isinstance(entry, dict), f"{name}: layer {i} is not an object")
        layer = _parse_layer(entry, i, sections, lanes, shape, name)
        _need((layer.kind == "output") == (i == len(entries) - 1), f"{name}: layer {i}: only the last layer is the output layer")
        layers.append(layer)
        shape = layer.out_shape
    _need(layers[-1].channels == classes, f"{name}: output layer has {layers[-1].channels} neurons for {classes} classes")
    used = [e["section"] for e in entries]
    _need(len(set(used)) == len(used), f"{name}: two layers share a weight section")
    _need(set(used) == set(sections), f"{name}: sections {sorted(set(sections) - set(used))} belong to no layer")
    provenance = manifest.get("provenance", {})
    _check_provenance(provenance, name)
    return IntNet(layers, timesteps, classes, in_shape, lanes, leak, provenance), manifest


def read_manifest_bytes(data: bytes, name: str = "model") -> dict:
    """The manifest of bytes that `from_bytes` accepts."""
    return _from_bytes(data, name)[1]


def _check_provenance(provenance, name: str) -> None:
    """Provenance is free-form, but what the tools read from it has its type."""
    _need(isinstance(provenance, dict), f"{name}: provenance must be an object")
    config = provenance.get("config", {})
    _need(isinstance(config, dict), f"{name}: provenance.config must be an object")
    for key in ("dataset", "data_path"):
        _need(config.get(key) is None or isinstance(config[key], str), f"{name}: provenance.config.{key} must be a string")
    for key in ("spec", "original_spec"):
        _need(provenance.get(key) is None or isinstance(provenance[key], str), f"{name}: provenance.{key} must be a string")


def load_with_manifest(path: str | Path) -> tuple[IntNet, dict]:
    """The network and its manifest, from one read of a regular file (never a pipe or a device)."""
    path = Path(path)
    st = regular_file(path, "model file", ModelFileError)
    _need(st.st_size <= MAX_FILE, f"{path}: {st.st_size} bytes is too large for a model file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read ({exc.strerror})") from None
    return _from_bytes(data, str(path))


def load(path: str | Path) -> IntNet:
    return load_with_manifest(path)[0]


def read_manifest(path: str | Path) -> dict:
    """The manifest of a file that `load` accepts (so it is never shown for a broken file)."""
    return load_with_manifest(path)[1]
