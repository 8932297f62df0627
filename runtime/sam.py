"""SAM parts of VISA: building from checkpoint shapes, pre/post-processing, the [SEG]-prompted decoder.

The modules themselves come from the ``segment-anything`` package. Its package
``__init__`` imports ``predictor`` and ``automatic_mask_generator``, which import
torchvision; the PyPI torchvision is a CUDA build that does not import on CPU-only
machines, and VISA does not use those modules. :func:`sam_modeling` is the one place
that imports ``segment_anything.modeling`` without running that ``__init__``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from functools import partial
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import CheckpointError, InputError

IMAGE_SIZE = 1024
PATCH_SIZE = 16
PROMPT_DIM = 256
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


def sam_modeling() -> ModuleType:
    """Import ``segment_anything.modeling`` without executing ``segment_anything/__init__.py``."""
    name = "segment_anything.modeling"
    if name in sys.modules:
        return sys.modules[name]
    if "segment_anything" in sys.modules:  # the full package is already imported
        return importlib.import_module(name)
    spec = importlib.util.find_spec("segment_anything")
    if spec is None:
        raise ImportError("segment-anything is not installed (pip install segment-anything==1.0)")
    # An unexecuted package module lets the relative imports inside modeling/ resolve.
    sys.modules["segment_anything"] = importlib.util.module_from_spec(spec)
    try:
        return importlib.import_module(name)
    finally:
        # Drop the placeholder so a later `import segment_anything` runs the real __init__.
        del sys.modules["segment_anything"]


@dataclass(frozen=True)
class SamEncoderConfig:
    """ViT image-encoder sizes. VISA uses ViT-H (1280, 32 blocks, 16 heads, global at 7/15/23/31)."""

    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 16
    global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    window_size: int = 14

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], prefix: str, source: str) -> "SamEncoderConfig":
        """Infer the encoder sizes from weight shapes (SAM configs are not stored in checkpoints).

        ``rel_pos_h`` has shape ``(2*S-1, head_dim)`` with S the attention grid side: 14 for
        windowed blocks, 64 for global ones; head_dim gives the number of heads.
        """
        pos = sd.get(prefix + "pos_embed")
        if pos is None:
            raise CheckpointError(f"{source}: missing {prefix}pos_embed; cannot infer the SAM image encoder size")
        embed_dim = int(pos.shape[-1])
        depth = 0
        while f"{prefix}blocks.{depth}.attn.rel_pos_h" in sd:
            depth += 1
        if depth == 0:
            raise CheckpointError(f"{source}: no {prefix}blocks.*.attn.rel_pos_h; expected a SAM ViT encoder with relative positions")
        grid = IMAGE_SIZE // PATCH_SIZE
        head_dims, global_idx, windows = set(), [], set()
        for i in range(depth):
            rel = sd[f"{prefix}blocks.{i}.attn.rel_pos_h"]
            side = (int(rel.shape[0]) + 1) // 2
            head_dims.add(int(rel.shape[1]))
            if side == grid:
                global_idx.append(i)
            else:
                windows.add(side)
        if len(head_dims) != 1 or len(windows) > 1 or embed_dim % next(iter(head_dims)):
            raise CheckpointError(f"{source}: inconsistent SAM encoder rel_pos shapes (head dims {head_dims}, windows {windows})")
        return cls(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=embed_dim // head_dims.pop(),
            global_attn_indexes=tuple(global_idx),
            window_size=windows.pop() if windows else 14,
        )


def build_sam_parts(cfg: SamEncoderConfig) -> nn.ModuleDict:
    """SAM image encoder, prompt encoder and mask decoder with SAM's fixed sizes (uninitialised values).

    The encoder's attention modules are :class:`RelPosAttention` (same parameters and state-dict
    keys as SAM's)."""
    m = sam_modeling()
    grid = IMAGE_SIZE // PATCH_SIZE
    encoder = m.ImageEncoderViT(
        depth=cfg.depth,
        embed_dim=cfg.embed_dim,
        img_size=IMAGE_SIZE,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=cfg.num_heads,
        patch_size=PATCH_SIZE,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=cfg.global_attn_indexes,
        window_size=cfg.window_size,
        out_chans=PROMPT_DIM,
    )
    for block in encoder.blocks:
        block.attn = RelPosAttention(block.attn)
    return nn.ModuleDict(
        {
            "image_encoder": encoder,
            "prompt_encoder": m.PromptEncoder(
                embed_dim=PROMPT_DIM,
                image_embedding_size=(grid, grid),
                input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
                mask_in_chans=16,
            ),
            "mask_decoder": m.MaskDecoder(
                num_multimask_outputs=3,
                transformer=m.TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=2048, num_heads=8),
                transformer_dim=PROMPT_DIM,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
            ),
        }
    )


ATTENTION_BLOCK_ELEMENTS = 1 << 20  # logits per block of query rows (4 MB in fp32): stays in cache


class RelPosAttention(nn.Module):
    """SAM's image-encoder attention (same parameters, same state-dict keys), computed by blocks of query rows.

    SAM materialises the logits of every query against every key ([windows x heads, HW, HW]:
    4096 x 4096 per head in a global block), adds the decomposed relative positions in two
    broadcast passes, then runs softmax and the value product: on a CPU these passes over memory
    are ~85 % of the tiny encoder. Here the position bias of a block of query rows is built first
    and the query-key product accumulated into it (``baddbmm``), so the block's logits stay in cache
    through softmax and the value product. Each row's arithmetic is SAM's up to the order of two
    additions (tested against SAM's module). Traced graphs (ONNX export) and non-CPU devices use
    one block: one MatMul + Add + Softmax + MatMul chain, which TensorRT fuses itself.
    """

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.rel_pos_h = attn.rel_pos_h
        self.rel_pos_w = attn.rel_pos_w
        self.num_heads = attn.num_heads
        self.scale = attn.scale
        self.qkv = attn.qkv
        self.proj = attn.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        n = height * width
        qkv = self.qkv(x).reshape(batch, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, batch * self.num_heads, n, -1).unbind(0)
        get_rel_pos = sam_modeling().image_encoder.get_rel_pos
        grid_q = q.reshape(batch * self.num_heads, height, width, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", grid_q, get_rel_pos(height, height, self.rel_pos_h)).reshape(-1, n, height, 1)
        rel_w = torch.einsum("bhwc,wkc->bhwk", grid_q, get_rel_pos(width, width, self.rel_pos_w)).reshape(-1, n, 1, width)
        q_scaled, k_t = q * self.scale, k.transpose(-2, -1).contiguous()
        rows = self._rows_per_block(x, q.shape[0] * n)
        blocks = []
        for s in range(0, n, rows):
            logits = torch.baddbmm((rel_h[:, s : s + rows] + rel_w[:, s : s + rows]).flatten(2), q_scaled[:, s : s + rows], k_t)
            blocks.append(torch.bmm(logits.softmax(-1), v))
        out = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
        out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
        return self.proj(out)

    @staticmethod
    def _rows_per_block(x: torch.Tensor, logits_per_row: int) -> int:
        """Query rows per block: all of them when tracing or off the CPU, else a cache-sized block."""
        n = x.shape[1] * x.shape[2]
        if x.device.type != "cpu" or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return n
        return max(1, min(n, ATTENTION_BLOCK_ELEMENTS // logits_per_row))


def resized_shape(height: int, width: int, long_side: int = IMAGE_SIZE) -> tuple[int, int]:
    """SAM's ResizeLongestSide output size: scale the longer side to ``long_side``, round half up."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess(frame: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """RGB uint8 HxWx3 -> normalised, zero-padded [3,1024,1024] float32 and the resized (h, w).

    PIL bilinear resize to the longest side 1024 (as torchvision's resize on a PIL image),
    per-channel ``(x - mean) / std`` in float32, zero padding at the bottom and right.
    """
    check_rgb(frame, "frame")
    h, w = resized_shape(*frame.shape[:2])
    resized = np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR))
    x = (resized.astype(np.float32) - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    out[:h, :w] = x
    return torch.from_numpy(out.transpose(2, 0, 1).copy()), (h, w)


def postprocess(low_res: torch.Tensor, resized_hw: tuple[int, int], original_hw: tuple[int, int]) -> torch.Tensor:
    """Low-res logits [Q,1,256,256] -> logits at the frame size [Q,H,W] (SAM's postprocess_masks)."""
    x = F.interpolate(low_res.float(), (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = x[..., : resized_hw[0], : resized_hw[1]]
    x = F.interpolate(x, original_hw, mode="bilinear", align_corners=False)
    return x[:, 0]


def check_rgb(frame: np.ndarray, what: str) -> None:
    """Raise InputError unless ``frame`` is an HxWx3 uint8 array."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise InputError(f"{what}: expected an RGB uint8 array of shape (H, W, 3), got {desc}")


def dense_positional_encoding(gaussian: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """SAM's random-Fourier encoding of the embedding grid [1, 2*F, H, W], computed in float32.

    Cell centres ``((col+0.5)/W, (row+0.5)/H)`` mapped to [-1, 1], projected by the gaussian
    matrix [2,F], times 2*pi, then [sin, cos]. (SAM's own code would round the grid to the
    matrix dtype in fp16/bf16; float32 keeps the constant exact.)
    """
    h, w = grid
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [H,W,2] as (x, y)
    proj = (2 * coords - 1) @ gaussian.float().to(coords.device) * (2 * torch.pi)
    return torch.cat([proj.sin(), proj.cos()], dim=-1).permute(2, 0, 1).unsqueeze(0)


UPSCALE_BLOCKS = 8  # row blocks of the per-pixel upscaling: each block's intermediates stay in cache


class SegMaskDecoder(nn.Module):
    """SAM mask decoder prompted by [SEG] embeddings, one mask per query.

    Inputs: image embeddings [1,256,64,64] and Q [SEG] embeddings [Q,256] (the sparse
    prompts). The dense prompt (``no_mask_embed``) and the positional encoding are
    folded in as constants. Outputs low-res logits [Q,1,256,256] and IoU [Q,1] of mask
    token 0 (VISA's ``multimask_output=False``).

    SAM's ``MaskDecoder.predict_masks`` (two-way transformer, upscaling, hypernetwork), computed
    so that the work per query is small; each query's output equals SAM's up to float summation
    order:

    - the first block's image-side projections are computed once (:meth:`image_side`) and
      broadcast over the queries (no per-query copy of the image embedding);
    - later attentions over per-query image states fold the 256->128 projections into the
      token side (``(x W^T) . q == x . (W q)``; a key bias is constant along the softmax axis
      and the value bias passes through it, since the probabilities sum to 1);
    - the last token->image attention runs for the two tokens read afterwards (IoU, mask 0)
      and only mask 0's hypernetwork and product are computed;
    - the upscaling (two stride-2 transposed convolutions) is written as per-pixel matrix
      products on channels-last states, in row blocks that fit in cache.

    Broadcasting only (no ``repeat_interleave``), no data-dependent control flow: the exported
    graph has a dynamic ``queries`` axis.
    """

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module):
        super().__init__()
        self.decoder = mask_decoder
        with torch.no_grad():
            dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
            grid = tuple(prompt_encoder.image_embedding_size)
            pe = dense_positional_encoding(prompt_encoder.pe_layer.positional_encoding_gaussian_matrix, grid)
        self.register_buffer("dense", dense.expand(1, -1, *grid).clone(), persistent=False)
        self.register_buffer("image_pe", pe.to(dense.dtype), persistent=False)

    def forward(self, image_embeddings: torch.Tensor, seg_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.decoder
        tr = d.transformer
        image = self.image_side(image_embeddings)
        q = seg_embeddings.shape[0]
        out_tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(q, -1, -1), seg_embeddings.unsqueeze(1)], dim=1)
        queries, keys = _two_way_block(tr.layers[0], tokens, image.keys, tokens, image.pos, image)
        for layer in tr.layers[1:]:
            queries, keys = _two_way_block(layer, queries, keys, tokens, image.pos)
        head = queries[:, :2]  # the IoU token and mask token 0: all that is read after this attention
        attn = _tokens_to_image(tr.final_attn_token_to_image, head + tokens[:, :2], keys + image.pos, keys)
        head = tr.norm_final_attn(head + attn)
        hyper = d.output_hypernetworks_mlps[0](head[:, 1])
        low_res = _upscaled_logits(d.output_upscaling, keys, hyper, tuple(image_embeddings.shape[-2:]))
        iou = d.iou_prediction_head(head[:, 0])[:, :1]
        return low_res, iou

    def image_side(self, image_embeddings: torch.Tensor) -> ImageSide:
        """The query-independent inputs of the first two-way block, computed once per call."""
        layer = self.decoder.transformer.layers[0]
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        keys = (image_embeddings + self.dense).flatten(2).transpose(1, 2)  # [1,N,C]
        pos = self.image_pe.flatten(2).transpose(1, 2)
        with_pos = (keys + pos)[0]
        return ImageSide(
            keys=keys,
            pos=pos,
            t2i_keys=_heads(t2i.k_proj(with_pos), t2i.num_heads).transpose(0, 1),
            t2i_values=_heads(t2i.v_proj(keys[0]), t2i.num_heads).transpose(0, 1),
            i2t_queries=_heads(i2t.q_proj(with_pos), i2t.num_heads).transpose(0, 1),
        )


@dataclass
class ImageSide:
    """Query-independent tensors of the decoder: image states [1,N,C], their positional
    encoding [1,N,C], and the first block's projections of the image, per head [h,N,d]."""

    keys: torch.Tensor
    pos: torch.Tensor
    t2i_keys: torch.Tensor
    t2i_values: torch.Tensor
    i2t_queries: torch.Tensor


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., h*d] -> [..., h, d]."""
    return x.unflatten(-1, (heads, -1))


def _by_head(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Token projections [Q,T,h*d] -> [h,Q*T,d]."""
    return _heads(x, heads).permute(2, 0, 1, 3).flatten(1, 2)


def _scale(attn: nn.Module) -> float:
    """1/sqrt(head dim) (1/4 in SAM: a power of two, so scaling one factor instead of the product is exact)."""
    return (attn.internal_dim // attn.num_heads) ** -0.5


def _two_way_block(
    layer: nn.Module, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor,
    image: ImageSide | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's ``TwoWayAttentionBlock``; ``image`` given: the first block, whose keys are the image for every query."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    if image is None:
        with_pos = keys + key_pe
        attn = _tokens_to_image(t2i, queries + query_pe, with_pos, keys)
    else:
        attn = _tokens_to_shared_image(t2i, queries + query_pe, image)
    queries = layer.norm2(queries + attn)
    queries = layer.norm3(queries + layer.mlp(queries))
    token_keys = _heads(i2t.k_proj(queries + query_pe) * _scale(i2t), i2t.num_heads)  # [Q,T,h,d]
    if image is None:
        probs = _image_to_token_probs(i2t, with_pos, token_keys)
    else:
        probs = _shared_image_to_token_probs(image.i2t_queries, token_keys)
    keys = layer.norm4(_image_to_tokens(i2t, keys, probs, queries))
    return queries, keys


def _tokens_to_shared_image(attn: nn.Module, q: torch.Tensor, image: ImageSide) -> torch.Tensor:
    """Tokens [Q,T,C] attend to the image, whose keys and values were projected once."""
    t = q.shape[1]
    h = attn.num_heads
    p = torch.softmax(_by_head(attn.q_proj(q) * _scale(attn), h) @ image.t2i_keys.transpose(1, 2), dim=-1)  # [h,QT,N]
    return attn.out_proj((p @ image.t2i_values).unflatten(1, (-1, t)).permute(1, 2, 0, 3).flatten(2))


def _tokens_to_image(attn: nn.Module, q: torch.Tensor, keys_in: torch.Tensor, values_in: torch.Tensor) -> torch.Tensor:
    """Tokens [Q,T,C] attend to per-query image states [Q,N,C]: the key projection is folded into
    the tokens (scores = keys_in @ (W_k^T q)) and the value projection applied after mixing."""
    t, c = q.shape[1:]
    h = attn.num_heads
    qh = _by_head(attn.q_proj(q) * _scale(attn), h)  # [h,QT,d]
    folded = (qh @ attn.k_proj.weight.unflatten(0, (h, -1))).unflatten(1, (-1, t)).transpose(0, 1).reshape(-1, h * t, c)
    p = torch.softmax(folded @ keys_in.transpose(1, 2), dim=-1)  # [Q,hT,N]
    mixed = (p @ values_in).unflatten(1, (h, t)).transpose(0, 1).flatten(1, 2)  # [h,QT,C]
    v = attn.v_proj
    out = mixed @ v.weight.unflatten(0, (h, -1)).transpose(1, 2) + v.bias.unflatten(0, (h, 1, -1))  # [h,QT,d]
    return attn.out_proj(out.unflatten(1, (-1, t)).permute(1, 2, 0, 3).flatten(2))


def _shared_image_to_token_probs(image_queries: torch.Tensor, token_keys: torch.Tensor) -> torch.Tensor:
    """Image queries projected once [h,N,d] vs each query's token keys [Q,T,h,d] -> probabilities [Q,N,T*h]."""
    t = token_keys.shape[1]
    scores = (image_queries @ token_keys.permute(2, 3, 0, 1).flatten(2)).unflatten(2, (-1, t)).permute(2, 1, 3, 0)
    return torch.softmax(scores, dim=2).flatten(2)


def _image_to_token_probs(attn: nn.Module, queries_in: torch.Tensor, token_keys: torch.Tensor) -> torch.Tensor:
    """Per-query image states [Q,N,C] vs token keys [Q,T,h,d] -> probabilities [Q,N,T*h], the query
    projection folded into the token keys (softmax over T with h innermost: a vectorised axis)."""
    t, h = token_keys.shape[1:3]
    c = queries_in.shape[-1]
    wq = attn.q_proj.weight.unflatten(0, (h, -1))  # [h,d,C]
    folded = (token_keys.permute(2, 0, 1, 3).flatten(1, 2) @ wq).unflatten(1, (-1, t)).permute(1, 2, 0, 3).reshape(-1, t * h, c)
    bias = (token_keys * attn.q_proj.bias.unflatten(0, (h, -1))).sum(-1).reshape(-1, 1, t * h)
    scores = torch.baddbmm(bias, queries_in, folded.transpose(1, 2)).unflatten(2, (t, h))
    return torch.softmax(scores, dim=2).flatten(2)


def _image_to_tokens(attn: nn.Module, keys: torch.Tensor, probs: torch.Tensor, values_in: torch.Tensor) -> torch.Tensor:
    """keys + attention of the image to the tokens [Q,N,C], from probabilities [Q,N,T*h]: the value
    and output projections are applied to the tokens first (probs @ (V W_o^T)), the output bias
    shared by the heads (each head's probabilities sum to 1)."""
    t, c = values_in.shape[1:]
    h = attn.num_heads
    wo = attn.out_proj.weight.unflatten(1, (h, -1)).transpose(0, 1)  # [h,C,d]
    mixed = (_by_head(attn.v_proj(values_in), h) @ wo.transpose(1, 2)).unflatten(1, (-1, t)).permute(1, 2, 0, 3)
    return torch.baddbmm(keys.expand(values_in.shape[0], -1, -1), probs, mixed.reshape(-1, t * h, c) + attn.out_proj.bias / h)


def _upscaled_logits(upscaling: nn.Sequential, keys: torch.Tensor, hyper: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Image states [Q,N,C] (channels last) and mask-0 hypernetwork weights [Q,c2] -> logits [Q,1,4H,4W].

    Each 2x2 stride-2 transposed convolution maps one pixel to its 2x2 children: a per-pixel
    matrix product (output columns ordered (row offset, column offset, channel)); LayerNorm2d
    is ``layer_norm`` over the channels. Per pixel throughout, so it runs in row blocks.
    """
    up1, norm, act1, up2, act2 = upscaling
    c1, c2 = up1.out_channels, up2.out_channels
    w1, b1 = up1.weight.permute(2, 3, 1, 0).flatten(0, 2), up1.bias.repeat(4)
    w2, b2 = up2.weight.permute(2, 3, 1, 0).flatten(0, 2), up2.bias.repeat(4)
    gh, gw = grid
    blocks = []
    for block in keys.split(max(1, gh // UPSCALE_BLOCKS) * gw, dim=1):
        x = act1(F.layer_norm(F.linear(block, w1, b1).unflatten(-1, (4, c1)), (c1,), norm.weight, norm.bias, norm.eps))
        x = act2(F.linear(x, w2, b2)).unflatten(-1, (4, c2)).flatten(1, 3)  # [Q,n*16,c2]: pixel, 4x4 children
        blocks.append(x @ hyper.unsqueeze(-1))
    logits = torch.cat(blocks, dim=1).reshape(-1, gh, gw, 2, 2, 2, 2)  # (y, x, a, b, a2, b2)
    return logits.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, 1, 4 * gh, 4 * gw)
