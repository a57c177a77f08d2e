"""FLOP counting with ``torch.utils.flop_counter``, the selective scan included.

Why this way: the flop counter sees matmuls, convolutions and attention kernels, but the
selective scan (the heart of Serpent) would be invisible.  While counting, the scan is
routed through the registered op ``serpent::selective_scan`` whose formula lives in
:mod:`serpent_cli.ops.scan_op` (``9*b*d*l*n + b*d*l``).  Counting runs on ``meta``
tensors: nothing is allocated or computed, so every model at 512x512 (or 4096x4096) is
counted on any CPU in seconds.  Convention: 2 FLOPs per multiply-add (so "GFLOPs" here are
twice the "GMACs" some papers quote); elementwise ops other than the scan are not counted,
as usual for this counter and for fvcore.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from serpent_cli.ops.scan_op import counting_scan

SCAN_OP = "serpent.selective_scan"


@dataclass(frozen=True)
class FlopReport:
    """Forward FLOPs of one model at one input size, with a per-module breakdown."""

    total: int
    by_module: dict[str, int] = field(default_factory=dict)  # module path -> FLOPs inside it ("Global" = total)
    by_op: dict[str, int] = field(default_factory=dict)  # op name -> FLOPs, whole model

    @property
    def scan(self) -> int:
        """FLOPs charged to the selective scan."""
        return self.by_op.get(SCAN_OP, 0)


def count_flops(model: nn.Module, height: int, width: int | None = None, *, batch: int = 1) -> FlopReport:
    """Forward FLOPs of ``model`` on a (batch, 3, height, width) input, on the model's device.

    Pass a model on the ``meta`` device (see ``serpent_cli.bench.peers.build_model(meta=True)``)
    to count without computing.
    """
    width = height if width is None else width
    device = next(model.parameters()).device
    image = torch.empty(batch, 3, height, width, device=device)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad(), counting_scan(), counter:
            warnings.simplefilter("ignore")  # third-party deprecation chatter (e.g. meshgrid indexing)
            model(image)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    by_module = {name: sum(ops.values()) for name, ops in counts.items()}
    by_op: dict[str, int] = {}
    for op, n in counts.get("Global", {}).items():
        key = str(op).removeprefix("aten.")
        by_op[key] = by_op.get(key, 0) + n
    return FlopReport(total=counter.get_total_flops(), by_module=by_module, by_op=by_op)


def model_flops(name: str, resolution: int) -> tuple[int, int]:
    """(parameters, forward FLOPs) of bench model ``name`` at resolution x resolution, on meta tensors."""
    from serpent_cli.bench.peers import build_model, count_params

    model = build_model(name, meta=True)
    return count_params(model), count_flops(model, resolution).total


__all__ = ["SCAN_OP", "FlopReport", "count_flops", "model_flops"]
