"""Every numba-compiled function of fastbp, one module per family, and nothing else."""
