"""The bound engine: IBP, Fast-Lin, CROWN and alpha-CROWN over an op graph.

``bounds`` (``BoundedModel``, ``compute_bounds``), ``tighten`` (intermediate bounds of the neurons
that need them), ``patches`` (receptive-field rows below convolutions), ``interval`` (intersecting
bounds safely), ``alpha`` (optimised slopes), ``specs`` (boxes and margin specifications)."""
