"""RelPosAttention (runtime/sam.py) against segment-anything's own encoder attention.

Same parameters and state-dict keys; outputs equal up to the order of two additions: max-abs
relative to the outputs' largest magnitude below 2e-6 (measured 5.7e-7 / 1.2e-6 / 9.7e-7 for the
three cases below, sharp random weights, outputs up to ~26; the golden tiny VISA's image embeddings
stay within 1e-4 of the original, tests/test_golden_visa.py). On a CPU the query rows are processed in
cache-sized blocks; traced graphs keep one block (one Softmax per attention for TensorRT)."""

from __future__ import annotations

import pytest
import torch

from visa_edge.runtime import sam

TOL = 2e-6  # relative to the largest output magnitude


def sam_attention(dim: int, heads: int, side: int) -> torch.nn.Module:
    torch.manual_seed(0)
    attn = sam.sam_modeling().image_encoder.Attention(dim, heads, qkv_bias=True, use_rel_pos=True, input_size=(side, side))
    for p in attn.parameters():
        p.data.normal_(0, 0.3)
    return attn.eval()


@pytest.mark.parametrize(
    "batch, side, dim, heads, block_elements",
    [
        (1, 64, 32, 2, 1 << 20),  # tiny VISA's global block: 64 rows per block
        (2, 32, 64, 4, 1 << 14),  # several images, 2 rows per block
        (25, 14, 32, 2, 10_000),  # windowed block (25 windows), a block size that does not divide the rows
    ],
)
def test_blocked_rows_equal_sam_attention(monkeypatch, batch, side, dim, heads, block_elements):
    monkeypatch.setattr(sam, "ATTENTION_BLOCK_ELEMENTS", block_elements)
    ref = sam_attention(dim, heads, side)
    ours = sam.RelPosAttention(ref)
    x = torch.randn(batch, side, side, dim)
    rows = ours._rows_per_block(x, batch * heads * side * side)
    assert rows == max(1, block_elements // (batch * heads * side * side)) < side * side
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert (got - want).abs().max().item() < TOL * want.abs().max().item()
    assert list(ours.state_dict()) == list(ref.state_dict())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # SAM's get_rel_pos sizes are Python numbers
def test_exported_graph_has_one_softmax_per_attention(tmp_path, monkeypatch):
    onnx, ort = pytest.importorskip("onnx"), pytest.importorskip("onnxruntime")
    monkeypatch.setattr(sam, "ATTENTION_BLOCK_ELEMENTS", 1 << 10)  # eager: 2 rows per block
    ours = sam.RelPosAttention(sam_attention(32, 2, 16))
    x = torch.randn(1, 16, 16, 32)
    path = tmp_path / "attention.onnx"
    with torch.no_grad():
        torch.onnx.export(ours, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
        want = ours(x).numpy()
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("Softmax") == 1  # eager would run 128 blocks
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert abs(got - want).max() < TOL * abs(want).max()


def test_encoder_is_built_with_blocked_attention():
    encoder = sam.build_sam_parts(sam.SamEncoderConfig(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,)))["image_encoder"]
    assert [type(b.attn) for b in encoder.blocks] == [sam.RelPosAttention] * 2
