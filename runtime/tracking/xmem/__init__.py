"""XMem-compatible tracker: official XMem.pth, exportable networks, memory in the runtime.

``XMemTracker.from_checkpoint("XMem.pth")`` tracks with PyTorch engines; ``XMEM_NETWORKS``
names the three networks (key encoder, value encoder, decoder) that other backends replace.
"""

from .checkpoint import load_xmem, xmem_from_state_dict
from .config import XMemConfig
from .memory import XMemMemory
from .modules import XMemModel
from .networks import XMEM_NETWORKS, xmem_modules, xmem_torch_engines
from .tracker import XMemTracker, soft_iou_confidence

__all__ = [
    "XMEM_NETWORKS",
    "XMemConfig",
    "XMemMemory",
    "XMemModel",
    "XMemTracker",
    "load_xmem",
    "soft_iou_confidence",
    "xmem_from_state_dict",
    "xmem_modules",
    "xmem_torch_engines",
]
