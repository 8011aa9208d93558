"""qpsnn: quantized and pruned spiking neural networks, from PyTorch training to an FPGA accelerator.

The parts live in top-level folders and are imported as ``qpsnn.sw``, ``qpsnn.hw`` and ``qpsnn.sim``.
"""
__version__ = "0.1.0"
