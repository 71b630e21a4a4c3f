"""Deployment fidelity beyond clean top-1: what the benchmark stage measures besides accuracy and latency.

- `corruptions`: ImageNet-C style common corruptions (Gaussian noise, blur, brightness, contrast, JPEG,
  pixelation) at chosen severities, applied to uint8 test images before normalisation, seeded.
- `saliency`: occlusion sensitivity (forward passes only, so it runs on every engine through the Runner), and the
  agreement of two saliency maps (rank correlation, overlap of the top regions).
- `measure`: what the measuring child process runs on a loaded runner (corrupted predictions, saliency maps, a
  per-layer profile of the engine).
- `layerwise`: FP32 against an engine's ONNX, tensor by tensor through ONNX Runtime, naming where the error grows.
- `summary`: the numbers against the baseline variant that go into report.json.

Nothing here imports a heavy package at module import time; torch and torchvision are needed only to corrupt
images (the parent process), numpy and the runtimes where they run.
"""
