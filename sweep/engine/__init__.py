"""Structural surgery on top of Torch-Pruning: what every pruning method ends in.

- :mod:`.groups`: coupled channel groups (residual adds, concat, split, grouped/depthwise convs),
  scored and pruned in one go on the live model or on a copy;
- :mod:`.channels`: :func:`~.channels.prune_to_target`, to a channel ratio or a MACs / params /
  latency fraction, with per-group rounding of channel counts;
- :mod:`.check`: :func:`~.check.check_prunable`, run before a sweep, naming the layer that breaks;
- :mod:`.depth`: block (depth) removal.

Submodules import torch lazily or on import; this package imports nothing, so that listing methods
stays fast.
"""
