"""Issue 11: nothing in ``sw/`` imports ``hw/`` or ``sim/``: training, the model file, the golden model and the
host driver run without amaranth or cocotb installed. Only the CLI's `_extensions` registers those parts."""
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


def test_importing_sw_loads_no_hardware_package():
    code = ("import sys\n"
            "import qpsnn.sw.train, qpsnn.sw.modelfile, qpsnn.sw.golden, qpsnn.sw.evaluate, qpsnn.sw.device, "
            "qpsnn.sw.infer, qpsnn.sw.cli\n"
            f"print(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r})))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
