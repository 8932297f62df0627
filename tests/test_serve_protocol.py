"""The remote-reasoning wire format and the server's batching/caching service, without Ray."""

from __future__ import annotations

import json
import struct
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from visa_edge.runtime import synthetic
from visa_edge.runtime.errors import InputError
from visa_edge.runtime.remote_reasoner import (
    RemoteReasoner,
    decode_masks,
    decode_request,
    encode_masks,
    encode_request,
)
from visa_edge.runtime.streaming import Frame

QUERY = "the red ball"


def _frames(n: int, shape=(48, 64)) -> list[Frame]:
    return [Frame(i, i / 10, synthetic.frame(i)[:shape[0], :shape[1]].copy(), f"{i}") for i in range(n)]


def _body(header: dict, payload: bytes = b"") -> bytes:
    data = json.dumps(header).encode()
    return struct.pack(">I", len(data)) + data + payload


def test_request_round_trip_sends_only_the_listed_frames():
    frames = _frames(4)
    body = encode_request("s-0", [QUERY], frames, {1, 3}, fmt="png")
    req = decode_request(body)
    assert req.stream == "s-0" and req.queries == (QUERY,) and req.frames == [0, 1, 2, 3] and req.shape == (48, 64)
    assert sorted(req.images) == [1, 3]
    assert all(np.array_equal(req.images[i], frames[i].image) for i in (1, 3))  # PNG is lossless


def test_masks_round_trip():
    masks = (np.random.default_rng(0).random((3, 17, 29)) > 0.5).astype(np.uint8)
    answer = json.loads(json.dumps(encode_masks(masks)))
    out = decode_masks(answer)
    assert out.dtype == np.uint8 and np.array_equal(out, masks)


@pytest.mark.parametrize("body, message", [
    (b"\x00\x00", "request body of 2 bytes: expected a 4-byte header length first"),
    (struct.pack(">I", 3) + b"{x}", "request header: not JSON"),
    (_body({"stream": "", "queries": [QUERY], "frames": [0], "shape": [4, 4], "images": []}),
     "request header 'stream': ''; expected a non-empty string"),
    (_body({"stream": "s", "queries": [], "frames": [0], "shape": [4, 4], "images": []}),
     "queries: 0 given; expected 1 to"),
    (_body({"stream": "s", "queries": [QUERY], "frames": [], "shape": [4, 4], "images": []}),
     "request header 'frames': \\[\\]; expected a non-empty list of frame indices"),
    (_body({"stream": "s", "queries": [QUERY], "frames": [0], "shape": [4], "images": []}),
     "request header 'shape': \\[4\\]; expected \\[height, width\\]"),
    (_body({"stream": "s", "queries": [QUERY], "frames": [0], "shape": [4, 4], "images": []}),
     "no image of the target frame 0"),
    (_body({"stream": "s", "queries": [QUERY], "frames": [0], "shape": [4, 4],
            "images": [{"index": 0, "format": "png", "size": 10}]}, b"abc"),
     "request image of frame 0: 3 bytes; header says 10"),
    (_body({"stream": "s", "queries": [QUERY], "frames": [0], "shape": [4, 4],
            "images": [{"index": 0, "format": "png", "size": 3}]}, b"abc"),
     "request image of frame 0: 3 bytes that are not a JPEG or PNG image"),
])
def test_bad_requests_are_refused_with_what_is_wrong(body, message):
    with pytest.raises(InputError, match=message):
        decode_request(body)


def test_image_of_the_wrong_size_and_trailing_bytes_are_refused():
    frames = _frames(2)
    body = encode_request("s", [QUERY], frames, {1}, fmt="png")
    header_len = struct.unpack(">I", body[:4])[0]
    header = json.loads(body[4:4 + header_len])
    header["shape"] = [10, 10]
    with pytest.raises(InputError, match=r"request image of frame 1: \(48, 64\); header shape is \[10, 10\]"):
        decode_request(_body(header, body[4 + header_len:]))
    with pytest.raises(InputError, match="request body: 5 bytes after the images the header lists"):
        decode_request(body + b"extra")


class _FakeStep:
    """Tokens = mean of each frame; the mask is 1 where the target is brighter than the tokens' mean.
    A window whose query is "boom" raises (InputError), failing any batch it is in."""

    def __init__(self):
        self.encode_calls: list[int] = []
        self.batch_calls: list[int] = []

    def visual_tokens(self, images):
        self.encode_calls.append(len(images))
        return torch.tensor([[float(np.mean(im))] for im in images])

    def batch(self, windows):
        self.batch_calls.append(len(windows))
        if any("boom" in w.queries for w in windows):
            raise InputError("queries: 'boom' is not allowed")
        return [self._one(w) for w in windows]

    def _one(self, w):
        target = w.frames[-1].mean(-1)
        masks = np.stack([(target > float(w.frame_tokens.mean())).astype(np.uint8)] * len(w.queries))
        return SimpleNamespace(masks=masks, timings={"fake": 0.0})


def test_service_batches_encoding_caches_per_stream_and_reports_missing_frames():
    from visa_edge.serve.service import ReasonService

    step = _FakeStep()
    service = ReasonService(step, cache_frames=4, max_streams=2)
    a, b = _frames(6), _frames(6)
    req = lambda stream, frames, send: decode_request(encode_request(stream, [QUERY], frames, send, fmt="png"))  # noqa: E731
    answers = service.handle([req("a", a[:3], {0, 1, 2}), req("b", b[:2], {0, 1})])
    assert [x.status for x in answers] == [200, 200] and step.encode_calls == [5]  # both streams in one call
    assert step.batch_calls == [2] and [x.body["step_batch"] for x in answers] == [2, 2]  # and one step
    # stream a holds 0..2; frame 3 is new, 0 and 2 come from the cache
    answers = service.handle([req("a", [a[0], a[2], a[3]], {3})])
    assert answers[0].status == 200 and step.encode_calls == [5, 1]
    # frames 4 and 5 push 0 out of a's 4-frame cache: a window naming 0 unsent gets "missing"
    service.handle([req("a", [a[4], a[5]], {4, 5})])
    answers = service.handle([req("a", [a[0], a[5]], {5})])
    assert answers[0].status == 409 and answers[0].body == {"status": "missing", "missing": [0]}
    # a third stream evicts the least recently used one (b), whose next request then lacks frame 0
    service.handle([req("c", a[:1], {0})])
    assert service.streams() == 2 and service.handle([req("b", b[:2], {1})])[0].body["missing"] == [0]
    m = service.metrics.snapshot()
    assert m["missing_answers"] == 2 and m["evicted_streams"] == 2 and m["batch_sizes"] == {"1": 5, "2": 1}
    assert m["max_batch_size"] == 2 and m["cache_hits"] == 2 and m["cache_misses"] == 5 + 1 + 2 + 1
    assert m["requests"] == 7 and m["answered"] == 5 and m["frames_received"] == 5 + 1 + 2 + 1 + 1 + 1


def test_one_bad_request_does_not_fail_its_batch():
    """The batched step raises for a batch holding a bad request: each request is retried alone, the bad one
    gets 400, the others their masks; the fallback is counted."""
    from visa_edge.serve.service import ReasonService

    step = _FakeStep()
    service = ReasonService(step)
    frames = _frames(3)
    reqs = [decode_request(encode_request(s, [q], frames, {0, 1, 2}, fmt="png"))
            for s, q in (("a", QUERY), ("b", "boom"), ("c", QUERY))]
    answers = service.handle(reqs)
    assert [x.status for x in answers] == [200, 400, 200]
    assert answers[1].body == {"error": "queries: 'boom' is not allowed"}
    assert step.batch_calls == [3, 1, 1, 1] and answers[0].body["step_batch"] == 1
    m = service.metrics.snapshot()
    assert (m["batch_fallbacks"], m["answered"], m["failed"]) == (1, 2, 1)
    # a lone bad request is not a fallback
    assert service.handle(reqs[1:2])[0].status == 400 and service.metrics.batch_fallbacks == 1


def test_client_refuses_bad_urls_and_formats():
    with pytest.raises(InputError, match="reasoner URL 'localhost:8000': expected http://HOST:PORT"):
        RemoteReasoner("localhost:8000")
    with pytest.raises(InputError, match="image format 'webp': expected one of"):
        RemoteReasoner("http://127.0.0.1:1", image_format="webp")


def test_client_retries_with_backoff_then_raises():
    from visa_edge.runtime.remote_reasoner import RemoteError

    client = RemoteReasoner("http://127.0.0.1:9", retries=2, backoff_s=0.01, timeout_s=2)  # port 9: nothing listens
    with pytest.raises(RemoteError, match="failed after 3 attempts"):
        client(_frames(1), QUERY)
    assert client.stats.requests == 3 and client.stats.retries == 2 and client.stats.failures == 1


def test_ros_parameters_select_a_remote_reasoner(tmp_path):
    from visa_edge.ros_node.parameters import defaults, pipeline_config

    (tmp_path / "token").write_text("abc\n")
    cfg = pipeline_config({**defaults(), "reasoner_url": "http://10.0.0.2:8000",
                           "reasoner_token_file": str(tmp_path / "token")})
    assert (cfg.reasoner_url, cfg.reasoner_token, cfg.checkpoint, cfg.clip) == ("http://10.0.0.2:8000", "abc", None, None)
    with pytest.raises(InputError, match="parameter 'checkpoint' is not set"):
        pipeline_config(defaults())
    with pytest.raises(InputError, match="token file .*: empty; expected the shared token"):
        (tmp_path / "empty").write_text(" \n")
        pipeline_config({**defaults(), "reasoner_url": "http://h:1", "reasoner_token_file": str(tmp_path / "empty")})
