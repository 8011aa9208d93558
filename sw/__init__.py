"""Software half of qpsnn: QP-SNN training, integer fold, `.qpsnn` files and the golden reference."""
