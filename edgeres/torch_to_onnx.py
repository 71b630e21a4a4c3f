"""torch -> ONNX with the exporter pinned (torch's default changed to dynamo in 2.9), the one function every ONNX
edgeres writes from torch goes through: the export stage, QAT's Q/DQ export and prune's latency probe."""

from __future__ import annotations

import warnings
from typing import Any

from edgeres.config import ExportStage
from edgeres.deps import require

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def onnx_from_torch(model: Any, example: Any, cfg: ExportStage, path: Any) -> None:
    torch = require("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)  # the torchscript exporter warns by design
        if cfg.exporter == "dynamo":
            require("onnxscript", purpose="export with the dynamo exporter")
            shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if cfg.dynamic_batch else None
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                opset_version=cfg.opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=shapes,
                external_data=False,
                verbose=False,
            )
        else:
            axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if cfg.dynamic_batch else None
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=cfg.opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                do_constant_folding=True,
            )
