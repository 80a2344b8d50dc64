"""Certified boxes: the problem of one batch, the optimiser, the float64 proof and the result type.

``settings`` (``CertifyConfig``, the typed settings), ``problem``, ``optimiser`` (warm start,
balancing steps, augmented Lagrangian), ``finalise`` (uniform radius, proof, shrink on failure),
``boxes`` (``certify_boxes``), ``result`` (``CertifiedBoxes`` and its ``.npz`` format)."""
