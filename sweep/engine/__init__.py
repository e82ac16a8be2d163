"""Structural surgery on top of Torch-Pruning: channel removal to a ratio or a MACs target."""
