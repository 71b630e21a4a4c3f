"""edgeres: take a torchvision ResNet from fine-tuning to a verified, fast engine on an edge device.

Importing this package imports nothing heavy (no torch, ONNX Runtime, OpenVINO or TensorRT); stages and runtimes
import what they need when they run.
"""

__version__ = "0.1.0"
