"""`bitstreams/manifest.json`: the sha256 of every kept bitstream and report, so a changed or corrupted file
is caught (`qpsnn build --check`) before anyone flashes it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from qpsnn.sw.errors import QpsnnError

KEPT = ("*.bin", "*.bit", "*.qpsnn", "report.json")


def _kept_files(root: Path) -> list[Path]:
    files = {p for pattern in KEPT for p in root.rglob(pattern) if "build" not in p.relative_to(root).parts}
    return sorted(files)


def write_manifest(root: str | Path = "bitstreams") -> Path:
    root = Path(root)
    files = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in _kept_files(root)}
    if not files:
        raise QpsnnError(f"no bitstreams or reports under {root}/ to put in a manifest")
    path = root / "manifest.json"
    path.write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=1, sort_keys=True) + "\n")
    return path


def check_manifest(root: str | Path = "bitstreams") -> list[str]:
    """Problems found (empty when every file matches and none is missing or unlisted)."""
    root = Path(root)
    path = root / "manifest.json"
    if not path.exists():
        raise QpsnnError(f"{path}: no manifest (write one with qpsnn build --write-manifest)")
    try:
        listed = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise QpsnnError(f"{path}: not a qpsnn manifest ({exc})") from None
    problems = []
    for name, digest in sorted(listed.items()):
        f = root / name
        if not f.exists():
            problems.append(f"{name}: missing")
        elif hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            problems.append(f"{name}: sha256 differs from the manifest (changed or corrupted)")
    for f in _kept_files(root):
        if str(f.relative_to(root)) not in listed:
            problems.append(f"{f.relative_to(root)}: not in the manifest")
    return problems


def rebuild_commands(root: str | Path = "bitstreams") -> list[tuple[Path, list[str]]]:
    """(folder, argv) that rebuilds each kept bitstream: the command its report.json records, run on the
    model kept beside it, into a scratch folder."""
    import shlex

    root = Path(root)
    out = []
    for report in sorted(root.rglob("report.json")):
        if "build" in report.relative_to(root).parts:
            continue
        try:
            argv = shlex.split(json.loads(report.read_text())["command"])
        except (ValueError, KeyError, TypeError) as exc:
            raise QpsnnError(f"{report}: no build command recorded ({exc})") from None
        if argv[:2] != ["qpsnn", "build"] or len(argv) < 3:
            raise QpsnnError(f"{report}: the recorded command is not a qpsnn build: {' '.join(argv)}")
        out.append((report.parent, ["build", str(report.parent / "model.qpsnn"), *argv[3:]]))
    return out


def reproduce(root: str | Path = "bitstreams", scratch: str | Path | None = None, log=print) -> list[str]:
    """Rebuild every kept bitstream from the current code with its recorded command and compare the sha256
    with the manifest; returns the differences (empty when every bitstream is reproduced exactly)."""
    import tempfile

    from .board_build import build

    root = Path(root)
    listed = json.loads((root / "manifest.json").read_text())["files"]
    problems = []
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        for folder, argv in rebuild_commands(root):
            unrolled = "--unrolled" in argv  # the one flag without a value
            flags = [a for a in argv if a != "--unrolled"]
            opts = dict(zip(flags[2::2], flags[3::2]))
            rel = folder.relative_to(root)
            out = Path(tmp) / rel
            report = build(argv[1], opts["--board"], int(opts["--lanes"]), float(opts["--clock"]),
                           int(opts.get("--baud", 115200)), out, offsets=int(opts.get("--offsets", 1)), unrolled=unrolled)
            name = str(rel / report["bitstream"])
            want = listed.get(name)
            got = report["bitstream_sha256"]
            log(f"{name}: {'reproduced' if got == want else 'DIFFERS'} (sha256 {got[:12]}, manifest {str(want)[:12]})")
            if got != want:
                problems.append(f"{name}: rebuilt sha256 {got} differs from the manifest's {want}")
    return problems
