"""Exporters: ONNX (with a torch-vs-ONNX Runtime check)."""
