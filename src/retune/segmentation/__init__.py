"""Segmentation on a frozen image tower's dense maps: heads in one registry (linear, FPN, text-guided), the
from-scratch U-Net baseline, Dice + BCE training with ignore pixels, overlays, and the run's typed config."""
