"""Issue 11: nothing in ``sw/`` imports ``hw/`` or ``sim/``: training, the model file, the golden model and the
host driver run without amaranth or cocotb installed. Only the CLI's `build_parser` registers those parts' commands,
and registering them imports no optional package."""
import ast
import subprocess
import sys
from pathlib import Path

import qpsnn.sw

SW = Path(qpsnn.sw.__file__).parent
FORBIDDEN = ("amaranth", "cocotb", "qpsnn.hw", "qpsnn.sim")


def test_no_sw_module_imports_hw_or_sim():
    found = []
    for path in sorted(SW.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                if name.startswith(FORBIDDEN) and not (path.name == "cli.py" and name.endswith(".cli")):
                    found.append(f"{path.name}:{node.lineno} imports {name}")
    assert not found, found


def _loaded_after(code: str, packages: tuple) -> str:
    """The modules of ``packages`` (names or dotted prefixes) a fresh interpreter has loaded after ``code``."""
    code += f"\nimport sys\nprint(sorted(m for m in sys.modules if (m + '.').startswith(tuple(p + '.' for p in {packages!r}))))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_importing_sw_loads_no_hardware_package():
    code = ("import qpsnn.sw.train, qpsnn.sw.modelfile, qpsnn.sw.golden, qpsnn.sw.evaluate, qpsnn.sw.device, "
            "qpsnn.sw.infer, qpsnn.sw.cli")
    assert _loaded_after(code, FORBIDDEN) == "[]"


def test_registering_every_command_loads_no_optional_package():
    """`qpsnn --help` and every subcommand's parser without amaranth, cocotb or NIR: each command imports its
    extra only when it runs (and says which to install when it is missing: tests/test_cli.py)."""
    optional = ("amaranth", "amaranth_boards", "cocotb", "cocotb_tools", "nir", "nirtorch", "snntorch", "norse")
    assert _loaded_after("from qpsnn.sw.cli import build_parser\nbuild_parser()", optional) == "[]"
