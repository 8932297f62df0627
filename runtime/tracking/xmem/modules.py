"""XMem's network blocks, laid out so that the official ``XMem.pth`` loads with a strict key match.

Objects are the batch dimension of every mask-dependent tensor ([O, C, h, w]); image
features have batch 1 and are broadcast to the objects. All forwards are tensor-in /
tensor-out without branches on data, so they export to ONNX. Sizes are the release's:
key 64, value 512, hidden 64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KEY_DIM = 64
VALUE_DIM = 512
HIDDEN_DIM = 64


def conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=bias)


def conv1x1(cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=bias)


def shortcut(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """ResNet projection shortcut (1x1 conv + BN) where the shape changes, else None (identity)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(conv1x1(cin, cout, stride, bias=False), nn.BatchNorm2d(cout))


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck, stride on the 3x3 conv (torchvision v1.5)."""

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv1x1(cin, width, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, width * 4, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.downsample = shortcut(cin, width * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class BasicBlock(nn.Module):
    """ResNet-18 basic block."""

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(cin, width, stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = shortcut(cin, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


def res_stage(block: type[nn.Module], cin: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    """One ResNet stage: the first block changes stride/width, the rest keep it."""
    expansion = 4 if block is Bottleneck else 1
    layers = [block(cin, width, stride)] + [block(width * expansion, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class KeyEncoder(nn.Module):
    """ResNet-50 without layer4: image [1,3,H,W] -> f16 [1,1024], f8 [1,512], f4 [1,256]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.res2 = res_stage(Bottleneck, 64, 64, 3, 1)
        self.layer2 = res_stage(Bottleneck, 256, 128, 4, 2)
        self.layer3 = res_stage(Bottleneck, 512, 256, 6, 2)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(image))))
        f4 = self.res2(x)
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f16, f8, f4


class KeyProjection(nn.Module):
    """f16 -> key, shrinkage (>= 1) and selection (in (0, 1))."""

    def __init__(self, cin: int = 1024, key_dim: int = KEY_DIM):
        super().__init__()
        self.key_proj = conv3x3(cin, key_dim)
        self.d_proj = conv3x3(cin, 1)
        self.e_proj = conv3x3(cin, key_dim)

    def forward(self, f16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shrinkage = self.d_proj(f16) ** 2 + 1
        selection = torch.sigmoid(self.e_proj(f16))
        return self.key_proj(f16), shrinkage, selection


class ResBlock(nn.Module):
    """Pre-activation residual block; a 3x3 conv shortcut when the width changes."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.downsample = conv3x3(cin, cout) if cin != cout else None
        self.conv1 = conv3x3(cin, cout)
        self.conv2 = conv3x3(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(F.relu(x))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class ChannelGate(nn.Module):
    """CBAM channel attention: shared MLP on the global average and max, summed, sigmoid."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(), nn.Linear(channels // reduction, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3)))
        mx = self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(avg + mx)[:, :, None, None]


class SpatialGate(nn.Module):
    """CBAM spatial attention: 7x7 conv on [max, mean] over channels, sigmoid."""

    def __init__(self):
        super().__init__()
        self.spatial = nn.ModuleDict({"conv": nn.Conv2d(2, 1, kernel_size=7, padding=3)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial["conv"](pooled))


class CBAM(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.ChannelGate = ChannelGate(channels)
        self.SpatialGate = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


def per_object(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Image features [1,C,h,w] repeated for the objects of ``g`` [O,*,h,w]."""
    return x.expand(g.shape[0], -1, -1, -1)


class FeatureFusion(nn.Module):
    """Fuses image features x [1,Cx] with per-object features g [O,Cg]: ResBlock, CBAM, ResBlock."""

    def __init__(self, x_dim: int, g_dim: int, mid_dim: int, out_dim: int):
        super().__init__()
        self.block1 = ResBlock(x_dim + g_dim, mid_dim)
        self.attention = CBAM(mid_dim)
        self.block2 = ResBlock(mid_dim, out_dim)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        g = self.block1(torch.cat([per_object(x, g), g], dim=1))
        return self.block2(g + self.attention(g))


def gru_update(gates: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """XMem's GRU-like rule: h' = f*h*(1-u) + u*n from 3*C gate channels (forget, update, new)."""
    c = hidden.shape[1]
    forget = torch.sigmoid(gates[:, :c])
    update = torch.sigmoid(gates[:, c : 2 * c])
    new = torch.tanh(gates[:, 2 * c :])
    return forget * hidden * (1 - update) + update * new


class HiddenReinforcer(nn.Module):
    """Value-encoder ("deep") hidden update from the value."""

    def __init__(self, g_dim: int = VALUE_DIM, hidden_dim: int = HIDDEN_DIM):
        super().__init__()
        self.transform = conv3x3(g_dim + hidden_dim, hidden_dim * 3)

    def forward(self, g: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return gru_update(self.transform(torch.cat([g, hidden], dim=1)), hidden)


class HiddenUpdater(nn.Module):
    """Decoder hidden update from the multi-scale decoder features and the logits."""

    def __init__(self, g_dims: tuple[int, int, int] = (512, 256, 257), mid_dim: int = 256, hidden_dim: int = HIDDEN_DIM):
        super().__init__()
        self.g16_conv = conv1x1(g_dims[0], mid_dim)
        self.g8_conv = conv1x1(g_dims[1], mid_dim)
        self.g4_conv = conv1x1(g_dims[2], mid_dim)
        self.transform = conv3x3(mid_dim + hidden_dim, hidden_dim * 3)

    def forward(self, g16: torch.Tensor, g8: torch.Tensor, g4: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        g = self.g16_conv(g16) + self.g8_conv(F.avg_pool2d(g8, 2)) + self.g4_conv(F.avg_pool2d(g4, 4))
        return gru_update(self.transform(torch.cat([g, hidden], dim=1)), hidden)


class ValueEncoder(nn.Module):
    """ResNet-18 (5 input channels) without layer4, fused with the key encoder's f16, plus the deep update."""

    def __init__(self, value_dim: int = VALUE_DIM, hidden_dim: int = HIDDEN_DIM):
        super().__init__()
        self.conv1 = nn.Conv2d(5, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = res_stage(BasicBlock, 64, 64, 2, 1)
        self.layer2 = res_stage(BasicBlock, 64, 128, 2, 2)
        self.layer3 = res_stage(BasicBlock, 128, 256, 2, 2)
        self.fuser = FeatureFusion(1024, 256, value_dim, value_dim)
        self.hidden_reinforce = HiddenReinforcer(value_dim, hidden_dim)

    def forward(
        self, image: torch.Tensor, mask: torch.Tensor, others: torch.Tensor, f16: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.cat([per_object(image, mask), mask, others], dim=1)
        # max-pool before ReLU as in the original (equal to the reverse order)
        g = F.relu(self.maxpool(self.bn1(self.conv1(g))))
        g = self.layer3(self.layer2(self.layer1(g)))
        value = self.fuser(f16, g)
        return value, self.hidden_reinforce(value, hidden)


class UpsampleBlock(nn.Module):
    """x2 bilinear upsampling of g plus the skip feature's 3x3 conv, then a ResBlock.

    ``forward`` takes the skip conv's output (``skip_conv(f)``): it depends on the frame only, so
    it is computed once per frame (:class:`DecoderSkips`) and shared by every tracker and object.
    """

    def __init__(self, skip_dim: int, up_dim: int, out_dim: int):
        super().__init__()
        self.skip_conv = conv3x3(skip_dim, up_dim)
        self.out_conv = ResBlock(up_dim, out_dim)

    def forward(self, skip: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(g, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out_conv(skip + up)


class Decoder(nn.Module):
    """Readout + hidden + image features -> logits at 1/4 and the updated hidden state."""

    def __init__(self, value_dim: int = VALUE_DIM, hidden_dim: int = HIDDEN_DIM):
        super().__init__()
        self.fuser = FeatureFusion(1024, value_dim + hidden_dim, 512, 512)
        self.hidden_update = HiddenUpdater((512, 256, 257), 256, hidden_dim)
        self.up_16_8 = UpsampleBlock(512, 512, 256)
        self.up_8_4 = UpsampleBlock(256, 256, 256)
        self.pred = conv3x3(256, 1)

    def forward(
        self, f16: torch.Tensor, s8: torch.Tensor, s4: torch.Tensor, readout: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``s8``, ``s4``: the skip convs of f8 and f4 (:class:`DecoderSkips`)."""
        g16 = self.fuser(f16, torch.cat([readout, hidden], dim=1))
        g8 = self.up_16_8(s8, g16)
        g4 = self.up_8_4(s4, g8)
        logits = self.pred(F.relu(g4))
        new_hidden = self.hidden_update(g16, g8, torch.cat([g4, logits], dim=1), hidden)
        return logits, new_hidden


class DecoderSkips(nn.Module):
    """The decoder's skip convs of f8 and f4 (its two largest convolutions): per frame, not per object."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.up_16_8_skip = decoder.up_16_8.skip_conv
        self.up_8_4_skip = decoder.up_8_4.skip_conv

    def forward(self, f8: torch.Tensor, f4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.up_16_8_skip(f8), self.up_8_4_skip(f4)


class XMemModel(nn.Module):
    """Container whose state dict is exactly that of the official XMem network (412 tensors)."""

    def __init__(self):
        super().__init__()
        self.key_encoder = KeyEncoder()
        self.value_encoder = ValueEncoder()
        self.key_proj = KeyProjection()
        self.decoder = Decoder()
