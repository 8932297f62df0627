"""The Ray Serve application: one HTTP deployment that batches reasoning requests across streams.

Routes: ``POST /reason`` (the protocol of ``runtime/remote_reasoner.py``), ``GET /metrics``
(this replica's counters) and ``GET /healthz`` (no token). Every other route checks the token
first (401, counted), then the body size (413, counted).
"""

from __future__ import annotations

import asyncio
import hmac
import os
from dataclasses import asdict, dataclass

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from visa_edge.runtime.errors import InputError
from visa_edge.runtime.remote_reasoner import decode_request

from .service import Answer, ReasonService


@dataclass(frozen=True)
class ServeOptions:
    """What a replica loads and how the deployment runs."""

    checkpoint: str
    clip: str
    engines: str | None = None
    backend: str | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    token: str | None = None  # shared token; None: no check (loopback only, see command.py)
    replicas: int = 1
    max_replicas: int | None = None  # autoscale between replicas and this many
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.01
    max_request_mb: float = 16.0
    cache_frames: int = 64  # visual tokens kept per stream
    max_streams: int = 64  # streams whose tokens are kept
    torch_threads: int | None = None  # torch intra-op threads in a replica (None: torch's default)


def load_service(opts: ServeOptions) -> ReasonService:
    """The model, engines and step a replica serves."""
    import torch

    from visa_edge.runtime.backends.loading import load_engines
    from visa_edge.runtime.visa_config import DTYPES
    from visa_edge.runtime.model import VisaModel
    from visa_edge.runtime.reasoning import ReasoningStep

    if opts.torch_threads:
        torch.set_num_threads(opts.torch_threads)
    model = VisaModel.from_pretrained(opts.checkpoint, clip=opts.clip, device=opts.device, dtype=DTYPES[opts.dtype])
    sources = {"checkpoint": opts.checkpoint, "clip": opts.clip}
    engines = load_engines(opts.engines, backend=opts.backend, device=opts.device, sources=sources) \
        if opts.engines else {}
    return ReasonService(ReasoningStep(model, engines), opts.cache_frames, opts.max_streams)


@serve.deployment(name="VisaReasoner")
class ReasonServer:
    """HTTP ingress: token and size checks, then requests batched into ``ReasonService.handle``."""

    def __init__(self, opts: ServeOptions):
        self.opts = opts
        self.service = load_service(opts)
        self.reason_batch.set_max_batch_size(opts.max_batch_size)
        self.reason_batch.set_batch_wait_timeout_s(opts.batch_wait_timeout_s)
        self.replica = f"{os.uname().nodename}:{os.getpid()}"

    def _authorised(self, request: Request) -> bool:
        if self.opts.token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.opts.token}".encode())

    async def __call__(self, request: Request) -> JSONResponse:
        path = request.url.path.rstrip("/")
        metrics = self.service.metrics
        if path.endswith("/healthz"):
            return JSONResponse({"status": "ok", "replica": self.replica})
        if not self._authorised(request):
            metrics.refused_unauthorized += 1
            return JSONResponse({"error": "missing or wrong token (header Authorization: Bearer <token>)"}, 401)
        if path.endswith("/metrics") and request.method == "GET":
            return JSONResponse({"replica": self.replica, "streams": self.service.streams(),
                                 "options": {k: v for k, v in asdict(self.opts).items() if k != "token"},
                                 **metrics.snapshot()})
        if not (path.endswith("/reason") and request.method == "POST"):
            return JSONResponse({"error": f"{request.method} {path}: expected POST /reason, GET /metrics or "
                                 "GET /healthz"}, 404)
        limit = int(self.opts.max_request_mb * 2**20)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            metrics.refused_too_large += 1
            return JSONResponse({"error": f"request of {declared} bytes; the limit is {limit}"}, 413)
        body = await request.body()
        if len(body) > limit:
            metrics.refused_too_large += 1
            return JSONResponse({"error": f"request of {len(body)} bytes; the limit is {limit}"}, 413)
        try:
            parsed = decode_request(body)
        except InputError as e:
            metrics.bad_requests += 1
            return JSONResponse({"error": str(e)}, 400)
        answer = await self.reason_batch(parsed)
        return JSONResponse(answer.body, answer.status)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def reason_batch(self, requests: list) -> list[Answer]:
        """Requests that arrived together (up to max_batch_size), answered off the event loop."""
        return await asyncio.to_thread(self.service.handle, requests)


def application(opts: ServeOptions):
    """The bound deployment with replica, autoscaling and resource options from ``opts``."""
    resources = {"num_cpus": opts.cpus_per_replica, "num_gpus": opts.gpus_per_replica}
    if opts.max_replicas:
        deployment = ReasonServer.options(
            num_replicas="auto", ray_actor_options=resources, max_ongoing_requests=4 * opts.max_batch_size,
            autoscaling_config={"min_replicas": opts.replicas, "max_replicas": opts.max_replicas,
                                "target_ongoing_requests": opts.max_batch_size})
    else:
        deployment = ReasonServer.options(num_replicas=opts.replicas, ray_actor_options=resources,
                                          max_ongoing_requests=4 * opts.max_batch_size)
    return deployment.bind(opts)


def start(opts: ServeOptions, host: str = "127.0.0.1", port: int = 8000, name: str = "visa"):
    """Start Serve's HTTP proxy on ``host:port`` (in the connected Ray cluster) and deploy the app."""
    serve.start(http_options={"host": host, "port": port})
    return serve.run(application(opts), name=name, route_prefix="/")
