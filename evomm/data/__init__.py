"""Data loading for the fitness tasks (hub datasets or local folders in the same format)."""
