"""``visa-edge serve``: run the reasoning step as a Ray Serve HTTP application."""

from __future__ import annotations

import argparse
import ipaddress
import time

from visa_edge.runtime.commands.common import add_model_args, float_arg, int_arg
from visa_edge.runtime.errors import InputError


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the reasoning step over HTTP (Ray Serve) for robots running `run --reasoner URL`",
        description="Deploys VISA's reasoning step on Ray Serve: requests from several streams that arrive "
        "together are batched, visual tokens are cached per stream. Joins the Ray cluster at --address "
        "(or starts a local one) and listens on --host:--port.",
    )
    add_model_args(p)
    p.add_argument("--engines", metavar="DIR", help="engine folder from `visa-edge export`")
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt"], help="engine backend")
    g = p.add_argument_group("serving")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    g.add_argument("--port", type=int_arg(1), default=8000, help="HTTP port (default 8000)")
    g.add_argument("--address", help="Ray cluster to join (e.g. auto, or HEAD:6379 after `ray start --head`); "
                   "default: start a local Ray instance")
    g.add_argument("--replicas", type=int_arg(1), default=1, help="replicas (minimum when autoscaling; default 1)")
    g.add_argument("--max-replicas", type=int_arg(1), help="autoscale up to this many replicas")
    g.add_argument("--gpus-per-replica", type=float_arg(0), default=0.0, help="GPUs per replica (e.g. 0.5; default 0)")
    g.add_argument("--cpus-per-replica", type=float_arg(0), default=1.0, help="CPUs per replica (default 1)")
    g.add_argument("--max-batch-size", type=int_arg(1), default=8, help="requests batched together (default 8)")
    g.add_argument("--batch-wait-timeout-s", type=float_arg(0), default=0.01,
                   help="wait for more requests to fill a batch, s (default 0.01)")
    g.add_argument("--token-file", metavar="F", help="file holding the shared token clients must send "
                   "(required unless --host is loopback)")
    g.add_argument("--max-request-mb", type=float_arg(0, open_lo=True), default=16.0,
                   help="refuse larger requests with 413 (default 16)")
    g.add_argument("--torch-threads", type=int_arg(1), help="torch CPU threads per replica (default: Ray's "
                   "OMP_NUM_THREADS, the replica's CPUs)")
    g.add_argument("--cache-frames", type=int_arg(12), default=64, help="visual tokens cached per stream (default 64)")
    p.set_defaults(func=run)


def options_from(args: argparse.Namespace):
    """ServeOptions from the parsed arguments; InputError for a non-loopback host without a token."""
    from visa_edge.runtime.remote_reasoner import read_token

    from .app import ServeOptions

    if args.quantization != "none":
        raise InputError(f"--quantization {args.quantization}: not supported by `serve` (expected none)")
    if args.max_replicas is not None and args.max_replicas < args.replicas:
        raise InputError(f"--max-replicas {args.max_replicas} < --replicas {args.replicas}")
    token = read_token(args.token_file) if args.token_file else None
    if token is None and not _loopback(args.host):
        raise InputError(f"--host {args.host}: not loopback, so a --token-file is required")
    return ServeOptions(
        checkpoint=args.checkpoint, clip=args.clip, engines=args.engines, backend=args.backend, device=args.device,
        dtype=args.dtype, token=token, replicas=args.replicas, max_replicas=args.max_replicas,
        gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica,
        max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_timeout_s,
        max_request_mb=args.max_request_mb, cache_frames=args.cache_frames, torch_threads=args.torch_threads,
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    opts = options_from(args)
    import ray

    from .app import start

    ray.init(address=args.address, include_dashboard=False)
    start(opts, host=args.host, port=args.port)
    print(f"serving VISA reasoning on http://{args.host}:{args.port}/reason "
          f"({opts.replicas} replica(s), batches of up to {opts.max_batch_size}); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    finally:
        from ray import serve

        serve.shutdown()
