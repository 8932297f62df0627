"""``train-tiny`` is bit-deterministic: two short runs with the same config write identical weights
(the full run's figures and their tolerance are in training/reproduce.md)."""

from __future__ import annotations

import torch

from visa_edge.runtime.checkpoint import load_state_dict
from visa_edge.runtime.model import VisaModel
from visa_edge.training.train import TrainConfig, train

SHORT = TrainConfig(pool_frames=1, decoder_steps=10, reasoner_steps=6, kinds_steps=4)  # 20 steps, both reasoner phases


def test_twenty_training_steps_are_bit_deterministic(tmp_path):
    a = train(SHORT, tmp_path / "a", progress=False)
    b = train(SHORT, tmp_path / "b", progress=False)
    sa, sb = load_state_dict(a.checkpoint), load_state_dict(b.checkpoint)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # ... and training changed the trained parts, not the frozen ones
    init = train(TrainConfig(pool_frames=1, decoder_steps=0, reasoner_steps=0, kinds_steps=0), tmp_path / "init",
                 progress=False)
    s0 = load_state_dict(init.checkpoint)
    changed = {k for k in sa if not torch.equal(sa[k], s0[k])}
    assert any(k.startswith("model.layers.") for k in changed)
    assert any(k.startswith("model.visual_model.mask_decoder.output_upscaling.") for k in changed)
    assert not any(k.startswith(("model.visual_model.image_encoder.", "model.visual_model.mask_decoder.transformer."))
                   for k in changed)
    model = VisaModel.from_pretrained(a.checkpoint, clip=a.clip)  # the real loader takes it
    assert model.llm is not None
