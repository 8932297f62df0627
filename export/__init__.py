"""Export of the heavy networks to ONNX and TensorRT engines."""
