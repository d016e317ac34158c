"""Experiments as one Python API: shared preparation, train / adaptor / peft experiments, and loading saved runs."""
