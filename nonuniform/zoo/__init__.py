"""Models and data: ``models`` (embedded models, checkpoints, ONNX; ``load_model``), ``data``
(MNIST/Fashion-MNIST IDX files), ``samples`` (the embedded test samples), ``train``."""
