"""CamNet Layer 2: tumour/normal patch classifiers trained on Layer 1's HDF5 patches, with Horovod."""

__version__ = "0.1.0"
