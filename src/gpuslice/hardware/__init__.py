"""What GPUs exist: the model catalog, NVML access and the inventory built from either."""
