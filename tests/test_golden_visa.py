"""Parity of the PyTorch reasoning step with the original VISA code (../shared/golden/visa_tiny).

Every float stage must be within max-abs 1e-4 (fp32) and the binary mask identical where
|logit| > 1e-4 (the golden README lists 132 pixels closer to 0 than that). Measured here:
CLIP ~7e-7, clustered tokens ~1e-6, [SEG] state ~1.4e-6, logits ~3e-7, mask identical everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import golden_visa_frames, golden_visa_model, max_abs
from visa_edge.runtime import sam
from visa_edge.runtime.llm import expand_image_tokens, seg_hidden_states
from visa_edge.runtime.reasoning import ReasoningStep

QUERY = "the red ball moving to the right"
TOL = 1e-4


@pytest.fixture(scope="module")
def golden(golden_visa):
    return {name: np.load(golden_visa / f"{name}.npz") for name in ("inputs", "vision", "llm", "sam")}


@pytest.fixture(scope="module")
def model(golden_visa):
    return golden_visa_model(golden_visa)


@pytest.fixture(scope="module")
def frames(golden_visa):
    return golden_visa_frames(golden_visa)


@pytest.fixture(scope="module")
def result(model, frames):
    return ReasoningStep(model)(frames, QUERY)


def test_frames_are_the_golden_frames(golden_visa, frames):
    assert np.array_equal(np.stack(frames), np.load(golden_visa / "frames" / "frames.npy"))


def test_clip_preprocessing_is_bit_exact(model, frames, golden):
    px = torch.stack([model.clip_preprocess(frames[i]) for i in (0, 11)])
    assert np.array_equal(px.numpy(), golden["inputs"]["clip_pixel_values_seq0_seq11"])


def test_sam_preprocessing_is_bit_exact(frames, golden):
    image, resized = sam.preprocess(frames[-1])
    assert resized == tuple(golden["inputs"]["sam_resize_hw"])
    assert np.array_equal(image[:, 752:784].numpy(), golden["inputs"]["sam_pixel_values_rows_752_784"])
    mean, std = np.float32(sam.PIXEL_MEAN), np.float32(sam.PIXEL_STD)
    expected = (golden["inputs"]["sam_resized_uint8"].astype(np.float32) - mean) / std
    assert np.array_equal(image[:, :768].numpy(), expected.transpose(2, 0, 1))
    assert not image[:, 768:].any()


def test_clip_features(model, golden):
    px = torch.from_numpy(golden["inputs"]["clip_pixel_values_seq0_seq11"])
    with torch.no_grad():
        feats = model.vision_tower(px)
    assert max_abs(feats, golden["vision"]["clip_patch_features"][[0, 11]]) < TOL


def test_clustered_and_projected_tokens(model, golden):
    v = golden["vision"]
    with torch.no_grad():
        clustered = model.clustering(torch.from_numpy(v["clip_patch_features"]))
        projected = model.mm_projector(clustered)
    assert clustered.shape == (12, 112, 32)
    assert max_abs(clustered, v["clustered_tokens"]) < TOL
    assert max_abs(projected, v["projected_tokens"]) < TOL


def test_inputs_embeds_and_seg_state(model, golden):
    ids = golden["inputs"]["input_ids"][0].tolist()
    assert model.prompt(QUERY, 11) == ids
    tokens = torch.from_numpy(golden["vision"]["projected_tokens"])
    with torch.no_grad():
        embeds, positions = expand_image_tokens(ids, tokens, model.llm.get_input_embeddings(), model.prompt.seg_token_id)
        hidden = seg_hidden_states(model.llm, embeds, positions)
        head = model.text_hidden_fcs(hidden)
    llm = golden["llm"]
    assert positions == [int(llm["seg_hidden_index"])] == [1454]
    assert max_abs(embeds, llm["inputs_embeds"]) < TOL
    assert max_abs(hidden, llm["seg_hidden"]) < TOL
    assert max_abs(head, llm["text_hidden_fcs_out"]) < TOL


def test_sam_embeddings_and_decoder(model, frames, golden):
    s = golden["sam"]
    image, _ = sam.preprocess(frames[-1])
    dec = model.mask_decoder_net()
    with torch.no_grad():
        emb = model.sam_encoder_net()(image[None])
        low, iou = dec(torch.from_numpy(s["image_embeddings"]), torch.from_numpy(s["sparse_embeddings"][:, 0]))
    assert max_abs(emb, s["image_embeddings"]) < TOL
    assert max_abs(dec.image_pe[0, :8], s["image_pe_channels_0_7"]) < TOL
    assert max_abs(dec.dense, s["dense_embeddings"]) < TOL
    assert max_abs(low, s["low_res_masks"]) < TOL
    assert max_abs(iou, s["iou_predictions"]) < TOL


def test_end_to_end_logits_and_mask(result, golden):
    s, llm = golden["sam"], golden["llm"]
    assert max_abs(result.seg_hidden, llm["seg_hidden"]) < TOL
    assert max_abs(result.seg_embedding, llm["text_hidden_fcs_out"]) < TOL
    assert max_abs(result.low_res_logits, s["low_res_masks"]) < TOL
    assert max_abs(result.logits, s["mask_logits"][0]) < TOL
    confident = np.abs(s["mask_logits"][0]) > TOL
    assert np.array_equal(result.mask[confident], s["mask_binary"][0][confident])
    assert 0.3 < result.mask.mean() < 0.34  # golden: 31.9 % positive


def test_timings_cover_every_stage(result):
    assert set(result.timings) == {"visual_tokens", "llm_prefill", "seg_head", "sam_encoder", "mask_decoder", "postprocess"}
    assert all(t > 0 for t in result.timings.values())


def test_precomputed_frame_tokens_give_the_same_mask(model, frames, result):
    step = ReasoningStep(model)
    tokens = step.visual_tokens(frames)
    again = step(frames, QUERY, frame_tokens=tokens)
    assert np.array_equal(again.logits, result.logits)
    assert "visual_tokens" not in again.timings
