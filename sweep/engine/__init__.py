"""Structural surgery on top of Torch-Pruning: what every pruning method ends in.

- :mod:`.trace`: the model traced into Torch-Pruning's dependency graph (the one place it is built);
- :mod:`.skip`: :func:`~.skip.skipped_layers`, the final list of layers never pruned (the layers
  producing the outputs, found on the graph; the model's declared layers; the user's keep_layers);
- :mod:`.criteria`: channel importance criteria;
- :mod:`.groups`: coupled channel groups (residual adds, concat, split, grouped/depthwise convs),
  scored and pruned in one go on the live model or on a copy;
- :mod:`.channels`: :func:`~.channels.solve_for_target` (the plan that meets a channel ratio or a
  MACs / params / latency fraction, by a criterion or by a method's own scores, with per-group
  rounding) and :func:`~.channels.prune_to_target`, which traces, solves and prunes;
- :mod:`.check`: :func:`~.check.check_prunable`, run before a sweep, naming the layer that breaks;
- :mod:`.depth`: block (depth) removal; :mod:`.latency`: measured per-layer latency costs.

Imports go one way: ``trace`` <- ``skip``, ``criteria`` <- ``groups`` <- ``channels``, ``check``.

Submodules import torch lazily or on import; this package imports nothing, so that listing methods
stays fast.
"""
