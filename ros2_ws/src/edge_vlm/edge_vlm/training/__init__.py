"""Training and fitting commands (simulated data, held-out subjects)."""
