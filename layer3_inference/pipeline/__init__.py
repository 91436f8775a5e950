"""The whole chain from one experiment YAML: config, SLURM/local runners, status and the HTML report."""
