"""Semantic fuzz of the `.qpsnn` manifest: mutate one field of a valid file's manifest (or its header
version), recompute the CRC so only the validator can catch it, then load. Every case must end in a clean
`ModelFileError`, or load and then run in the golden model. Anything else is counted as uncaught.

CI runs 1,000 cases (`tests/test_modelfile_fuzz.py`); the benchmark runs 10,000::

    python -m qpsnn.sw.fuzz_modelfile --cases 10000 --seed 0
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import re
import struct
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch

from . import modelfile
from .errors import ModelFileError

_HEAD = struct.Struct("<8sHHI")
NEST = "__nested__"
INTERESTING = [0, 1, -1, 2, 3, 5, 7, 8, 9, 16, 31, 32, 33, 48, 49, 63, 64, 65, 1024, 1025, 1200, 2 ** 16, 2 ** 31,
               2 ** 32, 2 ** 52, 2 ** 53, 2 ** 62, 2 ** 63 - 1, 2 ** 63, 2 ** 64, -2 ** 31, -2 ** 63, -2 ** 63 - 1,
               -2 ** 64, 10 ** 30, 0.5, 1.0, -0.0, 1e308, True, False, None, "", "x", "conv", "fc", "output",
               "odd", "zero", "weights.0", "\ud800", "[bold]", [], [1], [1, 2, 3], [[1]], {}, {"kind": "odd"},
               {"dataset": 1}, "digits"]


def rewrite(data: bytes, manifest: dict, version: tuple[int, int] | None = None) -> bytes:
    """``data`` with another manifest (and header version), its CRC recomputed."""
    _, major, minor, mlen = _HEAD.unpack_from(data)
    major, minor = version or (major, minor)
    body = re.sub(f'"{NEST}(\\d+)"', lambda k: "[" * int(k.group(1)) + "]" * int(k.group(1)), json.dumps(manifest)).encode()
    head = _HEAD.pack(modelfile.MAGIC, major, minor, len(body)) + body
    return head + struct.pack("<I", modelfile._crc(head)) + data[_HEAD.size + mlen + 4:]


def manifest_of(data: bytes) -> dict:
    _, _, _, mlen = _HEAD.unpack_from(data)
    return json.loads(data[_HEAD.size:_HEAD.size + mlen])


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def mutate(manifest: dict, rng: random.Random) -> tuple[dict, tuple[int, int] | None, str]:
    """One semantic mutation: (manifest, header version or None, what was done)."""
    m = copy.deepcopy(manifest)
    paths = [p for p in _paths(m) if p]
    path = rng.choice(paths)
    parent = m
    for key in path[:-1]:
        parent = parent[key]
    key, old = path[-1], parent[path[-1]]
    op = rng.randrange(9)
    if op == 0:
        new = rng.choice(INTERESTING)
    elif op == 1 and isinstance(old, int) and not isinstance(old, bool):
        new = rng.choice([old + 1, old - 1, old * 2, -old, old << rng.randrange(1, 64), old + 2 ** 63])
    elif op == 2 and isinstance(old, list) and old:
        new = old[:-1] if rng.random() < 0.5 else old + [old[-1]]
    elif op == 3:
        new = copy.deepcopy(parent[rng.choice(list(parent) if isinstance(parent, dict) else range(len(parent)))])
    elif op == 4:
        new = f"{NEST}{rng.choice([17, 100, 5000, 100_000])}"  # written as that many nested lists by `rewrite`
    elif op == 5 and isinstance(parent, dict):
        del parent[key]
        return m, None, f"delete {path}"
    elif op == 6:
        version = rng.choice([(1, 1), (1, 65535), (0, 0), (2, 0)])
        return m, version, f"header version {version}"
    elif op == 7 and isinstance(old, list) and old and all(isinstance(v, int) for v in old):
        new = [rng.choice(INTERESTING[:34]) for _ in old]
    else:
        new = rng.choice(INTERESTING)
    parent[key] = new
    return m, None, f"{path} = {repr(new)[:40]}"


@dataclass
class FuzzReport:
    cases: int = 0
    refused: int = 0
    loaded_and_ran: int = 0
    uncaught: int = 0
    slowest_seconds: float = 0.0
    first_uncaught: list = field(default_factory=list)
    errors: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def base_file() -> bytes:
    """A small valid model (two conv layers with pooling, one hidden fc, the output layer)."""
    from .fold import fold
    from .model import QPSNN, QuantConfig
    from .spec import parse_spec

    torch.manual_seed(0)
    model = QPSNN(parse_spec("c3-p2-c4-fc5-fc4"), (1, 6, 6), 3, QuantConfig(mode="rescaw", bits=4)).eval()
    net = fold(model, lanes=4, provenance={"config": {"dataset": "digits", "data_path": None}, "spec": "c3-p2-c4-fc5-fc4"})
    return modelfile.to_bytes(net)


def run(cases: int, seed: int = 0, data: bytes | None = None) -> FuzzReport:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only add overhead (3.5 s instead of 20 s per 1,000)
    try:
        return _run(cases, seed, data or base_file())
    finally:
        torch.set_num_threads(threads)


def _run(cases: int, seed: int, data: bytes) -> FuzzReport:
    from .golden import run_golden

    manifest = manifest_of(data)
    rng = random.Random(seed)
    report, kinds = FuzzReport(), Counter()
    images = torch.randint(0, 256, (2, *modelfile.from_bytes(data).in_shape), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    for _ in range(cases):
        mutated, version, what = mutate(manifest, rng)
        start = time.monotonic()
        try:
            bad = rewrite(data, mutated, version)
            net = modelfile.from_bytes(bad, "fuzz")
            if tuple(net.in_shape) == tuple(images.shape[1:]):
                run_golden(net, images)
            json.dumps(modelfile.read_manifest_bytes(bad))  # what inspect --json prints
            report.loaded_and_ran += 1
        except ModelFileError:
            report.refused += 1
        except Exception as exc:  # noqa: BLE001 - the point of the fuzz: anything else is a finding
            report.uncaught += 1
            kinds[type(exc).__name__] += 1
            if len(report.first_uncaught) < 10:
                report.first_uncaught.append(f"{what}: {type(exc).__name__}: {str(exc)[:120]}")
        report.cases += 1
        report.slowest_seconds = max(report.slowest_seconds, round(time.monotonic() - start, 4))
    report.errors = dict(kinds)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qpsnn.sw.fuzz_modelfile", description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    start = time.monotonic()
    report = run(args.cases, args.seed)
    print(report.to_json())
    print(f"{report.cases} cases in {time.monotonic() - start:.1f} s: {report.refused} refused, "
          f"{report.loaded_and_ran} loaded and ran in the golden model, {report.uncaught} uncaught", file=sys.stderr)
    return 0 if report.uncaught == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
