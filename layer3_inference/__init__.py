"""CamNet Layer 3: whole-slide heatmap inference, QuPath output and evaluation."""

from layer1_patches import __version__

__all__ = ["__version__"]
