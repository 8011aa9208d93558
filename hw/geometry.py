"""The accelerator's geometry now lives in `qpsnn.sw.geometry`: the host driver needs it too, and nothing in
``sw/`` imports ``hw/`` (issue 11). This name stays for the RTL generator, the simulations and the tests."""
from qpsnn.sw.geometry import *  # noqa: F401,F403
