"""``python -m qpsnn``: the CLI, also the entry that ``torchrun --nproc-per-node N -m qpsnn train ...`` starts."""
import sys

from qpsnn.sw.cli import main

if __name__ == "__main__":
    sys.exit(main())
