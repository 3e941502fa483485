"""CUDA MPS on a node: the control daemon's lifecycle and each slice's client environment."""
