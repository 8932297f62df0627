"""XMem's exportable networks: names, tensor signatures and PyTorch engines.

Shapes (H, W: padded frame size, multiples of 16; h, w = H/16, W/16; O objects of one object
group, a dynamic axis named ``objects``, 1..MAX_QUERIES in exported engines):

* ``xmem_key_encoder``: image [1,3,H,W] (normalised) -> key [1,64,h,w], shrinkage [1,1,h,w],
  selection [1,64,h,w], f16 [1,1024,h,w], f8 [1,512,2h,2w], f4 [1,256,4h,4w].
* ``xmem_value_encoder``: image, mask [O,1,H,W] (object probability), others [O,1,H,W] (sum of
  the other objects' probabilities), f16, hidden [O,64,h,w] -> value [O,512,h,w],
  hidden_out [O,64,h,w] (the deep-updated hidden state).
* ``xmem_skips``: f8, f4 -> s8 [1,512,2h,2w], s4 [1,256,4h,4w]: the decoder's skip convs, which
  depend on the frame only (its two largest convolutions), so they are computed once per frame
  and cached with the key features instead of once per decoder call.
* ``xmem_decoder``: f16, s8, s4, readout [O,512,h,w], hidden -> logits [O,1,4h,4w] (1/4 of the
  padded frame), hidden_out (the decoder-updated hidden state).

Every network always computes all its outputs; the runtime decides which hidden state to
keep (deep update, normal update or none), so no network branches on a flag.
"""

from __future__ import annotations

import torch
from torch import nn

from ...backends import DimRange, Engine, TorchEngine
from ...reasoning_networks import MAX_QUERIES, NetworkSpec
from .modules import DecoderSkips, KeyEncoder, KeyProjection, XMemModel

OBJECTS = DimRange(1, 1, MAX_QUERIES)  # objects of one group: a stream tracks one label per query
_PER_OBJECT = {0: "objects"}

XMEM_NETWORKS: dict[str, NetworkSpec] = {
    "xmem_key_encoder": NetworkSpec(("image",), ("key", "shrinkage", "selection", "f16", "f8", "f4")),
    "xmem_value_encoder": NetworkSpec(
        ("image", "mask", "others", "f16", "hidden"),
        ("value", "hidden_out"),
        axes={name: _PER_OBJECT for name in ("mask", "others", "hidden", "value", "hidden_out")},
        dims={"objects": OBJECTS},
    ),
    "xmem_skips": NetworkSpec(("f8", "f4"), ("s8", "s4")),
    "xmem_decoder": NetworkSpec(
        ("f16", "s8", "s4", "readout", "hidden"),
        ("logits", "hidden_out"),
        axes={name: _PER_OBJECT for name in ("readout", "hidden", "logits", "hidden_out")},
        dims={"objects": OBJECTS},
    ),
}


class KeyEncoderNet(nn.Module):
    """Key encoder + key projection (one engine: the projections need only f16)."""

    def __init__(self, key_encoder: KeyEncoder, key_proj: KeyProjection):
        super().__init__()
        self.key_encoder = key_encoder
        self.key_proj = key_proj

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f16, f8, f4 = self.key_encoder(image)
        key, shrinkage, selection = self.key_proj(f16)
        return key, shrinkage, selection, f16, f8, f4


def xmem_modules(model: XMemModel) -> dict[str, nn.Module]:
    """name -> nn.Module for every XMem network (sharing the parameters of ``model``)."""
    return {
        "xmem_key_encoder": KeyEncoderNet(model.key_encoder, model.key_proj).eval(),
        "xmem_value_encoder": model.value_encoder.eval(),  # forwards already match the specs
        "xmem_skips": DecoderSkips(model.decoder).eval(),
        "xmem_decoder": model.decoder.eval(),
    }


def xmem_torch_engines(model: XMemModel) -> dict[str, Engine]:
    """PyTorch engines for every XMem network."""
    return {
        name: TorchEngine(name, module, XMEM_NETWORKS[name].inputs, XMEM_NETWORKS[name].outputs)
        for name, module in xmem_modules(model).items()
    }
