"""The search: x <-> recipe spaces, the ask/tell loop, optimizers, checkpoints, distributed evaluation."""
