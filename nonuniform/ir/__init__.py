"""The engine's intermediate representation: a model as a DAG of bound-aware ops.

``ops`` (affine maps and activations, the interface every op implements), ``graph_ops`` (affine ops
only general graphs need), ``network`` (the DAG with its shapes), ``graph_model`` (a graph of ops
that behaves as an ``nn.Module``, e.g. an ONNX file)."""
