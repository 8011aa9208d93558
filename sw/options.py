"""Argparse types for every option of the CLI (``sw/cli.py``, ``sim/cli.py``, ``hw/cli.py``): each one
checks its range before any work starts and says what is allowed, so a bad value is one line and exit 2.

A type raises `argparse.ArgumentTypeError`; argparse prefixes the option's name. Paths are checked the same
way: a file that is written must not be a directory and its folder must be writable; a device URL must
name something that can be one.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import stat
from pathlib import Path

from .errors import QpsnnError
from .packing import MAX_LANES

MAX_TIMESTEPS = 1024  # what a .qpsnn file may hold (`modelfile`)
MAX_SEED = 2 ** 32 - 1  # numpy's and torch's generators both take it
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")  # --device of train, eval, ablate
SERIAL_SCHEMES = ("socket", "loop", "rfc2217", "spy", "hwgrep", "alt", "cp2110")


def _bad(message: str):
    return argparse.ArgumentTypeError(message)


def integer(lo: int | None = None, hi: int | None = None, what: str = ""):
    """An integer in [lo, hi] (either end open when None)."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except (TypeError, ValueError):
            raise _bad(f"{text!r} is not an integer") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            allowed = (f"{lo}..{hi}" if hi is not None else f"at least {lo}") if lo is not None else f"at most {hi}"
            raise _bad(f"{value} is outside the allowed range: {allowed}" + (f" ({what})" if what else ""))
        return value
    parse.__name__ = "integer"
    return parse


def list_of(parse, check=None):
    """A comma-separated list of ``parse``'d values, each then ``check``'d; an empty list is refused."""
    def parse_list(text: str) -> list:
        try:
            values = [parse(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError as exc:
            raise _bad(f"bad list {text!r}: {exc}") from None
        if not values:
            raise _bad("empty list")
        for v in values:
            if check:
                check(v)
        return values
    parse_list.__name__ = "list"
    return parse_list


def real(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
         what: str = ""):
    """A finite number in the interval from lo to hi; ``*_open`` excludes that end."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise _bad(f"{text!r} is not a number") from None
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        too_high = hi is not None and (value >= hi if hi_open else value > hi)
        if not math.isfinite(value) or too_low or too_high:
            left = "-inf" if lo is None else f"{lo:g}"
            right = "inf" if hi is None else f"{hi:g}"
            interval = f"{'(' if lo_open or lo is None else '['}{left}, {right}{')' if hi_open or hi is None else ']'}"
            raise _bad(f"{text} is outside {interval}" + (f" ({what})" if what else ""))
        return value
    parse.__name__ = "number"
    return parse


def power_of_two(lo: int, hi: int, what: str = ""):
    def parse(text: str) -> int:
        value = integer(what=what)(text)
        if not lo <= value <= hi or value & (value - 1):
            raise _bad(f"{value} is not a power of two in {lo}..{hi}" + (f" ({what})" if what else ""))
        return value
    parse.__name__ = "power of two"
    return parse


positive = integer(1)
fraction = real(0.0, 1.0, hi_open=True, what="the fraction of channels removed")
lanes = power_of_two(1, MAX_LANES, "weight codes per memory word; the RTL supports up to "
                     f"{MAX_LANES}")
samples = integer(1, 10 ** 7)
timesteps = integer(1, MAX_TIMESTEPS)
epochs = integer(1, 100_000)
finetune_epochs = integer(0, 100_000)
batch_size = integer(2, 1 << 16, "a batch needs two images for BatchNorm")
learning_rate = real(0.0, 1.0, lo_open=True)
svs_eps = real(0.0, 1.0, hi_open=True, what="times the largest singular value")
seed = integer(0, MAX_SEED)
seeds = integer(1, 100)
port = integer(0, 65535, "0 picks a free port")
frames = integer(0, 10 ** 7)
clients = integer(1, 10 ** 6)
max_payload = power_of_two(64, 32768, "the frame buffer in bytes")
baud = integer(300, 12_000_000)
clock_mhz = real(1.0, 400.0, what="MHz")
timeout = real(0.0, 3600.0, lo_open=True, what="seconds")
retries = integer(0, 100)
jobs = integer(1, 256, "processes")


def compute_device(text: str) -> str:
    """Where the float model runs: auto, cpu, cuda, cuda:N or mps (whether it is there is checked by
    `qpsnn.sw.runtime.resolve_device`, which needs torch)."""
    if not DEVICE_PATTERN.fullmatch(text):
        raise _bad(f"{text!r} is not a device: auto, cpu, cuda, cuda:N or mps")
    return text


def output_file(text: str) -> str:
    """A file to write: not empty, not a directory, in a folder that is (or can be made) writable."""
    if not text.strip():
        raise _bad("an empty path")
    path = Path(text)
    if path.is_dir():
        raise _bad(f"{text} is a directory, not a file")
    _writable_folder(path.parent, text)
    return text


def output_dir(text: str) -> str:
    """A folder to write into: not an existing file, and writable (or creatable)."""
    if not text.strip():
        raise _bad("an empty path")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise _bad(f"{text} exists and is not a directory")
    _writable_folder(path, text)
    return text


def _writable_folder(folder: Path, text: str) -> None:
    probe = folder
    while not probe.exists():  # the nearest existing ancestor decides
        if probe == probe.parent:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise _bad(f"{text}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise _bad(f"{text}: {probe} is not writable")


def device_url(text: str) -> str:
    """A serial port, a pyserial URL or an mmio URL that can name a device: checked before anything loads."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return _serial_port(text)
    if scheme == "mmio":
        return _device_node(text, rest, stat.S_ISREG, "a register window file (a sysfs resource file)")
    if scheme in ("socket", "mmio+socket", "rfc2217"):
        host, colon, number = rest.rstrip("/").rpartition(":")
        if not colon or not host or not number.isdigit() or not 1 <= int(number) <= 65535:
            raise _bad(f"{text}: expected {scheme}://HOST:PORT with a port in 1..65535")
        return text
    if scheme in SERIAL_SCHEMES:
        return text
    raise _bad(f"{text}: unknown scheme {scheme!r} (a serial port, socket://, mmio+socket://, mmio://, loop://)")


def _serial_port(text: str) -> str:
    if not text:
        raise _bad("an empty device")
    return _device_node(text, text, stat.S_ISCHR, "a serial port (not a character device)",
                        " (a serial port such as /dev/ttyUSB1, or a URL)")


def _device_node(text: str, path: str, kind_ok, kind: str, hint: str = "") -> str:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise _bad(f"{text}: {exc.strerror}{hint}") from None
    if not kind_ok(mode):
        raise _bad(f"{text} is not {kind}")
    return text


def regular_file(path: str | Path, what: str = "file", error: type[QpsnnError] = QpsnnError) -> os.stat_result:
    """stat of a file to read; refuses a missing path, a directory, a FIFO or a device (which would hang)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path}: is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: is not a regular file (a pipe or a device), not a {what}")
    return st
