"""`python -m pgolf` (and `torchrun -m pgolf`) entry point; the code lives in `pgolf_core`."""
