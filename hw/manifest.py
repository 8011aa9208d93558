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
