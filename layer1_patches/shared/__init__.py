"""The platform every CamNet layer stands on: typed configs, errors, atomic writes, the CLI frame, SLURM helpers,
array manifests and cohort discovery. It imports nothing from any layer (tests/test_architecture.py)."""
