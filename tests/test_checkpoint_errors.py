"""Every way a checkpoint can be wrong gives an error naming the file and what was expected."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from visa_edge.runtime.checkpoint import load_state_dict
from visa_edge.runtime.errors import CheckpointError
from visa_edge.runtime.model import VisaModel


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path):
    """A writable copy of the tiny checkpoint folder and its CLIP folder."""
    dst = tmp_path / "visa"
    shutil.copytree(tiny_checkpoint.checkpoint, dst)
    return dst, tiny_checkpoint.clip


def rewrite(folder, edit):
    """Replace the weights of ``folder`` by ``edit(state_dict)`` stored as one safetensors file."""
    sd = load_state_dict(folder)
    for f in list(folder.glob("pytorch_model*")):
        f.unlink()
    save_file({k: v.contiguous() for k, v in edit(dict(sd)).items()}, str(folder / "model.safetensors"))


def load(folder, clip, **kw):
    return VisaModel.from_pretrained(folder, clip=clip, **kw)


def test_missing_folder(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointError, match="nope/config.json: not found"):
        load(tmp_path / "nope", tiny_checkpoint.clip)


def test_missing_shard(ckpt):
    folder, clip = ckpt
    (folder / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin.index.json: shard\(s\) listed in the index are missing.*00002-of-00002"):
        load(folder, clip)


def test_no_weights(ckpt):
    folder, clip = ckpt
    for f in folder.glob("pytorch_model*"):
        f.unlink()
    with pytest.raises(CheckpointError, match="no weights found; expected one of"):
        load(folder, clip)


def test_corrupt_weight_file(ckpt):
    folder, clip = ckpt
    (folder / "pytorch_model-00001-of-00002.bin").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="00001-of-00002.bin: could not be read as a weight file"):
        load(folder, clip)


def test_unexpected_keys_are_listed(ckpt):
    folder, clip = ckpt
    rewrite(folder, lambda sd: {**sd, "model.extra_head.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): model.extra_head.weight"):
        load(folder, clip)


def test_lora_keys_get_a_merge_hint(ckpt):
    folder, clip = ckpt
    rewrite(folder, lambda sd: {**sd, "base_model.model.layers.0.q_proj.lora_A.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="LoRA adapters must be merged first"):
        load(folder, clip)


@pytest.mark.parametrize(
    "key, what",
    [
        ("model.layers.1.mlp.up_proj.weight", "the LLaMA language model"),
        ("model.visual_model.mask_decoder.iou_token.weight", "SAM"),
        ("model.text_hidden_fcs.0.2.bias", "the module"),
        ("model.mm_projector.bias", "the module"),
    ],
)
def test_missing_keys_are_listed(ckpt, key, what):
    folder, clip = ckpt
    rewrite(folder, lambda sd: {k: v for k, v in sd.items() if k != key})
    short = key.split("model.visual_model.")[-1].split("model.text_hidden_fcs.0.")[-1].split("model.mm_projector.")[-1]
    with pytest.raises(CheckpointError, match=rf"{what} does not match the checkpoint; missing keys \(1\): {short}"):
        load(folder, clip)


def test_shape_mismatch_shows_both_shapes(ckpt):
    folder, clip = ckpt
    rewrite(folder, lambda sd: {**sd, "model.norm.weight": torch.zeros(65, dtype=torch.bfloat16)})
    with pytest.raises(CheckpointError, match=r"model.norm.weight: checkpoint \(65,\) vs model \(64,\)"):
        load(folder, clip)


def test_tokenizer_without_seg_token(ckpt):
    folder, clip = ckpt
    (folder / "added_tokens.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"\(tokenizer\): the tokenizer has no \[SEG\] token"):
        load(folder, clip)


def test_config_missing_fields(ckpt):
    folder, clip = ckpt
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["mm_hidden_size"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json: missing required field\(s\) \['mm_hidden_size'\]"):
        load(folder, clip)


def test_missing_clip_folder(ckpt, tmp_path):
    folder, _ = ckpt
    with pytest.raises(CheckpointError, match="noclip/config.json: not found; expected a Hugging Face CLIP vision folder"):
        load(folder, tmp_path / "noclip")


def test_clip_of_another_size(ckpt, golden_visa, tmp_path):
    folder, _ = ckpt
    cfg = json.loads((folder / "config.json").read_text())
    cfg["mm_hidden_size"] = 48
    (folder / "config.json").write_text(json.dumps(cfg))
    rewrite(folder, lambda sd: {**sd, "model.mm_projector.weight": torch.zeros(64, 48, dtype=torch.bfloat16)})
    with pytest.raises(CheckpointError, match="CLIP hidden size 32 does not match mm_hidden_size 48"):
        load(folder, golden_visa / "clip_vision_tower")


def test_official_sam_checkpoint_overrides_tensors(ckpt, tmp_path):
    folder, clip = ckpt
    base = load(folder, clip)
    sam_sd = {"image_encoder." + k: torch.full_like(v, 0.5) for k, v in base.sam["image_encoder"].state_dict().items()}
    torch.save(sam_sd, tmp_path / "sam.pth")
    over = load(folder, clip, sam_checkpoint=tmp_path / "sam.pth")
    assert torch.all(over.sam["image_encoder"].neck[0].weight == 0.5)
    assert torch.equal(over.sam["mask_decoder"].iou_token.weight, base.sam["mask_decoder"].iou_token.weight)


def test_sam_checkpoint_with_foreign_keys(ckpt, tmp_path):
    folder, clip = ckpt
    torch.save({"model.something": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="bad.pth: unexpected keys.*expected an official SAM checkpoint"):
        load(folder, clip, sam_checkpoint=tmp_path / "bad.pth")


def test_safetensors_and_bin_load_the_same_weights(ckpt, tiny_checkpoint):
    folder, clip = ckpt
    rewrite(folder, lambda sd: sd)
    a = load(tiny_checkpoint.checkpoint, clip).state_dict()
    b = load(folder, clip).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_load_without_llm_reads_no_llm_tensor(ckpt, monkeypatch):
    """Export needs only the vision and SAM networks: the LLM's tensors are never read."""
    from visa_edge.runtime import checkpoint
    from visa_edge.runtime.errors import InputError
    from visa_edge.runtime.reasoning import ReasoningStep

    folder, clip = ckpt
    rewrite(folder, lambda sd: sd)  # safetensors: read lazily, tensor by tensor
    read = []
    real = checkpoint.load_file
    monkeypatch.setattr(checkpoint, "load_file", lambda path, keep=None: read.extend(real(path, keep)) or real(path, keep))
    model = VisaModel.from_pretrained(folder, clip=clip, load_llm=False)
    assert model.llm is None and read and not any(k.startswith(("model.layers.", "lm_head.", "model.embed_tokens.")) for k in read)
    assert model.sam_encoder_net() is not None
    with pytest.raises(InputError, match="loaded without its LLM"):
        ReasoningStep(model)
