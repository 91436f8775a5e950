"""CamNet Layer 1: whole-slide images and annotations to labelled HDF5 patch stores."""

__version__ = "0.1.0"
