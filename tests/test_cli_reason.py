"""``visa-edge reason``, ``tiny`` and ``demo`` through the real CLI entry point."""

from __future__ import annotations

import json

import numpy as np

from visa_edge.runtime.cli import main
from visa_edge.runtime.io import read_mask


def test_reason_writes_the_golden_mask(golden_visa, tmp_path, capsys):
    out = tmp_path / "mask.png"
    frames = sorted(str(p) for p in (golden_visa / "frames").glob("seq*.png"))
    rc = main(["reason", "--checkpoint", str(golden_visa / "hf_model"), "--clip", str(golden_visa / "clip_vision_tower"),
               "--frames", *frames, "--query", "the red ball moving to the right", "--out", str(out),
               "--logits", str(tmp_path / "logits.npy"), "--device", "cpu"])
    assert rc == 0
    sam = np.load(golden_visa / "sam.npz")
    confident = np.abs(sam["mask_logits"][0]) > 1e-4
    assert np.array_equal(read_mask(out)[confident], sam["mask_binary"][0][confident])
    assert np.abs(np.load(tmp_path / "logits.npy") - sam["mask_logits"][0]).max() < 1e-4
    printed = capsys.readouterr().out
    for stage in ("visual_tokens", "llm_prefill", "seg_head", "sam_encoder", "mask_decoder", "postprocess", "total"):
        assert f"  {stage}" in printed


def test_reason_reports_a_missing_frame(golden_visa, tmp_path, capsys):
    rc = main(["reason", "--checkpoint", str(golden_visa / "hf_model"), "--clip", str(golden_visa / "clip_vision_tower"),
               "--frames", str(tmp_path / "missing.png"), "--query", "x", "--out", str(tmp_path / "m.png")])
    assert rc == 2
    assert "missing.png: frame not found" in capsys.readouterr().err


def test_tiny_writes_a_loadable_safetensors_checkpoint(tmp_path):
    from visa_edge.runtime.model import VisaModel

    assert main(["tiny", "--out", str(tmp_path), "--format", "safetensors", "--shards", "3"]) == 0
    index = json.loads((tmp_path / "visa" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    model = VisaModel.from_pretrained(tmp_path / "visa", clip=tmp_path / "clip")
    assert model.config.hidden_size == 64 and model.prompt.seg_token_id == model.config.vocab_size - 1
