"""Reasoning as a service: `visa-edge serve` (Ray Serve, local instance, loopback) and RemoteReasoner.

One Ray instance and one deployment (tiny checkpoint, one replica) are shared by the module.
"""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from visa_edge.runtime import synthetic
from visa_edge.runtime.remote_reasoner import RemoteError, RemoteReasoner, decode_image, encode_image
from visa_edge.runtime.streaming import Frame, StreamConfig, StreamingRuntime
from visa_edge.runtime.tracking import Tracker, TrackOutput

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

TOKEN = "s3cret-token"
QUERY = "the red ball"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    from visa_edge.serve.app import ServeOptions, start

    opts = ServeOptions(checkpoint=str(tiny_checkpoint.checkpoint), clip=str(tiny_checkpoint.clip), token=TOKEN,
                        cpus_per_replica=0, max_batch_size=4, batch_wait_timeout_s=0.3, max_request_mb=1,
                        torch_threads=1)
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        start(opts, port=port)
        yield opts, f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def local(tiny_checkpoint):
    from visa_edge.runtime.model import VisaModel
    from visa_edge.runtime.reasoning import ReasoningStep

    return ReasoningStep(VisaModel.from_pretrained(tiny_checkpoint.checkpoint, clip=tiny_checkpoint.clip))


def _video(n: int) -> list[Frame]:
    return [Frame(i, i / 10, synthetic.frame(i), f"{i:05d}") for i in range(n)]


def _decoded(frames: list[Frame], fmt: str) -> list[Frame]:
    return [Frame(f.index, f.timestamp, decode_image(encode_image(f.image, fmt), "test"), f.name) for f in frames]


def test_serve_options_and_deployment(tmp_path):
    """CLI options become deployment options: replicas, autoscaling, resources; a public host needs a token."""
    from visa_edge.runtime.cli import build_parser
    from visa_edge.runtime.errors import InputError
    from visa_edge.serve.app import application
    from visa_edge.serve.command import options_from

    parser = build_parser()
    base = ["serve", "--checkpoint", "c", "--clip", "k", "--device", "cpu"]
    (tmp_path / "token").write_text(TOKEN)
    opts = options_from(parser.parse_args([*base, "--host", "0.0.0.0", "--token-file", str(tmp_path / "token"),
                                           "--replicas", "2", "--max-replicas", "4", "--gpus-per-replica", "0.5"]))
    assert opts.token == TOKEN and (opts.replicas, opts.max_replicas, opts.gpus_per_replica) == (2, 4, 0.5)
    deployment = application(opts)._bound_deployment
    autoscaling = deployment._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (2, 4)
    assert deployment.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 0.5}
    fixed = application(options_from(parser.parse_args([*base, "--replicas", "3"])))._bound_deployment
    assert fixed.num_replicas == 3 and fixed._deployment_config.autoscaling_config is None
    with pytest.raises(InputError, match="--host 0.0.0.0: not loopback, so a --token-file is required"):
        options_from(parser.parse_args([*base, "--host", "0.0.0.0"]))
    with pytest.raises(InputError, match="--max-replicas 1 < --replicas 2"):
        options_from(parser.parse_args([*base, "--replicas", "2", "--max-replicas", "1"]))
    with pytest.raises(InputError, match="token file .*missing: No such file"):
        options_from(parser.parse_args([*base, "--token-file", str(tmp_path / "missing")]))


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_remote_masks_equal_local_masks(server, local, fmt):
    """Two overlapping windows (the second reuses cached tokens): the remote mask equals, pixel for pixel,
    a local step's on the frames as the server decodes them (PNG: the frames themselves)."""
    from visa_edge.runtime.streaming.visa_reasoner import VisaReasoner

    _, url = server
    video = _video(8)
    remote = RemoteReasoner(url, TOKEN, image_format=fmt)
    reference = VisaReasoner(local)
    seen = _decoded(video, fmt) if fmt == "jpeg" else video
    if fmt == "png":
        assert all(np.array_equal(a.image, b.image) for a, b in zip(_decoded(video, "png"), video))
    windows = [[0, 2, 4], [2, 4, 6, 7]]
    for window in windows:
        out = remote([video[i] for i in window], [QUERY, "the blue box"])
        expected = reference([seen[i] for i in window], [QUERY, "the blue box"])
        assert out.masks.shape == (2, 240, 320) and out.masks.dtype == np.uint8
        assert np.array_equal(out.masks, expected.masks)
        assert np.array_equal(out.mask, expected.mask) and out.mask.any()
    # the second window sent only the frames the first did not: 6 and 7 (the target is always sent)
    assert remote.stats.frames_sent == 3 + 2 and remote.stats.resent == 0 and remote.stats.steps == 2
    assert remote.stats.step_bytes[1] < remote.stats.step_bytes[0]


def test_token_and_size_are_checked(server):
    _, url = server
    video = _video(2)
    before = RemoteReasoner(url, TOKEN).get("/metrics")
    for token in (None, "wrong"):
        with pytest.raises(RemoteError, match="HTTP 401: missing or wrong token"):
            RemoteReasoner(url, token)(video, QUERY)
        with pytest.raises(RemoteError, match="HTTP 401"):
            RemoteReasoner(url, token).get("/metrics")
    noise = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), np.uint8)  # ~2.7 MB as PNG > 1 MB limit
    big = RemoteReasoner(url, TOKEN, image_format="png")
    with pytest.raises(RemoteError, match=r"HTTP 413: request of \d+ bytes; the limit is 1048576"):
        big([Frame(0, 0.0, noise, "noise")], QUERY)
    assert big.stats.requests == 1  # refused requests are not retried
    after = RemoteReasoner(url, TOKEN).get("/metrics")
    assert after["refused_unauthorized"] - before["refused_unauthorized"] == 4
    assert after["refused_too_large"] - before["refused_too_large"] == 1
    assert after["requests"] == before["requests"]  # none of them reached the step
    assert RemoteReasoner(url).get("/healthz")["status"] == "ok"  # health needs no token


def test_three_streams_share_batches(server, local):
    """Three streams requesting at the same time are served by one replica in batches larger than one."""
    from visa_edge.runtime.streaming.visa_reasoner import VisaReasoner

    _, url = server
    before = RemoteReasoner(url, TOKEN).get("/metrics")
    videos = [[Frame(i, i / 10, synthetic.frame(i + 40 * s), f"{i:05d}") for i in range(6)] for s in range(3)]
    clients = [RemoteReasoner(url, TOKEN, image_format="png") for _ in videos]
    windows = [[0, 2, 4], [1, 3, 5]]
    results: dict[tuple[int, int], np.ndarray] = {}
    barrier = threading.Barrier(3)

    def stream(s: int) -> None:
        for w, window in enumerate(windows):
            barrier.wait()
            results[s, w] = clients[s]([videos[s][i] for i in window], QUERY).mask

    threads = [threading.Thread(target=stream, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert len(results) == 6
    after = RemoteReasoner(url, TOKEN).get("/metrics")
    assert after["requests"] - before["requests"] == 6 and after["answered"] - before["answered"] == 6
    assert after["batches"] - before["batches"] < 6  # at least two requests shared a batch
    assert after["max_batch_size"] >= 2
    assert after["cache_misses"] - before["cache_misses"] == 3 * 6  # each frame of each stream encoded once
    # batched token encoding (frames of several streams in one call) keeps the masks: IoU with local > 0.99
    for s in range(3):
        reference = VisaReasoner(local)
        for w, window in enumerate(windows):
            expected = reference([videos[s][i] for i in window], QUERY).mask
            inter, union = np.logical_and(results[s, w], expected).sum(), np.logical_or(results[s, w], expected).sum()
            assert union and inter / union > 0.99


def test_run_command_with_a_remote_reasoner(server, tmp_path, capsys):
    """`visa-edge run --reasoner URL --reasoner-token-file F` streams without a local model."""
    import json

    import cv2

    from visa_edge.runtime.cli import main

    _, url = server
    frames = tmp_path / "frames"
    frames.mkdir()
    for f in _video(7):
        cv2.imwrite(str(frames / f"{f.name}.png"), cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
    (tmp_path / "token").write_text(TOKEN + "\n")
    common = ["run", "--source", str(frames), "--query", QUERY, "--no-overlay", "--blocking",
              "--every-frames", "3", "--window", "4", "--references", "2"]
    assert main([*common, "--out", str(tmp_path / "out"), "--reasoner", url,
                 "--reasoner-token-file", str(tmp_path / "token")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames"] == 7 and summary["stats"]["reasoning_completed"] == 3  # frames 0, 3, 6
    assert summary["stats"]["reasoning_failed"] == 0
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 7
    assert main([*common, "--out", str(tmp_path / "none")]) == 2
    assert "--checkpoint and --clip are required unless --reasoner URL is given" in capsys.readouterr().err


class _Copy(Tracker):
    """Holds the last anchor mask (tracking that never fails, so reasoning is what the test watches)."""

    def reset(self):
        self.mask = None

    def step(self, frame, mask=None, *, objects=None, index=None):
        if mask is not None:
            self.mask = mask.astype(np.float32)
        if self.mask is None:
            return TrackOutput(np.zeros(frame.shape[:2], np.float32), 0.0)
        return TrackOutput(self.mask, 1.0)


def test_server_restart_mid_stream(server):
    """The app is deleted mid-stream and deployed again: failed steps are counted, every frame still gets a mask,
    and reasoning resumes after the client resends the frames the fresh replica lacks."""
    from visa_edge.serve.app import application

    opts, url = server
    remote = RemoteReasoner(url, TOKEN, retries=1, backoff_s=0.05, timeout_s=20)
    video = _video(24)
    # windows reach back to frame 0, so the steps after the restart name frames sent before it
    config = StreamConfig(every_frames=4, window=24, references=6, blocking=True, retry_delay_s=0.0)
    results = []
    with StreamingRuntime(remote, _Copy, config, query=QUERY) as rt:
        results += [rt.process(f) for f in video[:8]]
        completed_before = rt.stats.reasoning_completed
        serve.delete("visa")
        results += [rt.process(f) for f in video[8:13]]
        failed = rt.stats.reasoning_failed
        serve.run(application(opts), name="visa", route_prefix="/")
        results += [rt.process(f) for f in video[13:]]
    assert [r.frame.index for r in results] == list(range(24))
    assert all(r.mask.shape == (240, 320) for r in results)
    assert completed_before == 2 and failed >= 1
    assert rt.stats.reasoning_completed > completed_before  # resumed after the restart
    assert remote.stats.failures == failed and remote.stats.resent > 0  # the fresh replica lacked earlier frames
    assert results[-1].mask_source in ("reasoning", "tracked") and results[-1].anchor_index >= 13
    metrics = remote.get("/metrics")
    assert metrics["missing_answers"] >= 1 and metrics["answered"] >= 1
