"""Front ends: a user's model as the engine's op graph.

``read.to_network`` picks one: ``sequential`` (``nn.Sequential`` as a chain), ``fx_trace`` (any
``nn.Module`` by ``torch.fx``), ``onnx_read`` (ONNX files); ``layers`` converts PyTorch layers."""
