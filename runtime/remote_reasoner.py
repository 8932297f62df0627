"""Reasoning on a remote server (``visa-edge serve``): the wire protocol and the client ``RemoteReasoner``.

Protocol (HTTP/1.1, ``POST <url>/reason``, header ``Authorization: Bearer <token>``): the body is
a 4-byte big-endian length, a JSON header of that length, then the encoded images back to back::

    {"stream": "<id>", "queries": ["..."], "frames": [i0, ..., target], "shape": [H, W],
     "images": [{"index": i, "format": "jpeg"|"png", "size": n_bytes}, ...]}

``frames`` lists the window (references, then the target) by frame index; ``images`` carries only
the frames the server does not hold visual tokens for, plus the target (the SAM encoder needs its
pixels). The server keeps a bounded LRU of visual tokens per stream; when it lacks a frame that
was not sent (restart, eviction) it answers 409 ``{"status": "missing", "missing": [...]}`` and the
client resends those frames. 200 answers ``{"status": "ok", "shape": [Q, H, W], "masks":
base64(packbits), "timings": {...}}``; 400 (bad input), 401 (token), 413 (size) carry ``{"error": ...}``.

Images: JPEG (default, ~10x smaller) changes pixels, so a remote mask equals the local step's on
the JPEG-decoded frames (``decode_image(encode_image(f))``); PNG is lossless and gives the local
step's mask on the frames themselves.
"""

from __future__ import annotations

import base64
import http.client
import json
import struct
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from .errors import InputError, VisaEdgeError
from .reasoning import as_queries
from .reasoner_protocol import ReasonOutput
from .frames import Frame

IMAGE_FORMATS = ("jpeg", "png")
_HEADER_LEN = struct.Struct(">I")


class RemoteError(VisaEdgeError):
    """The reasoning server refused a request, failed, or could not be reached."""


@dataclass
class ReasonRequest:
    """One decoded request: the window by frame index and the images that came with it."""

    stream: str
    queries: tuple[str, ...]
    frames: list[int]  # references then the target
    shape: tuple[int, int]  # frame height, width
    images: dict[int, np.ndarray]  # frame index -> RGB uint8 [H,W,3]


def encode_image(image: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """An RGB uint8 frame as JPEG or PNG bytes."""
    if fmt not in IMAGE_FORMATS:
        raise InputError(f"image format {fmt!r}: expected one of {IMAGE_FORMATS}")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise InputError(f"could not encode a frame of shape {image.shape} as {fmt}")
    return buf.tobytes()


def decode_image(data: bytes, what: str) -> np.ndarray:
    """RGB uint8 [H,W,3] from JPEG/PNG bytes; InputError naming ``what`` if they are not an image."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"{what}: {len(data)} bytes that are not a JPEG or PNG image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_request(stream: str, queries: Sequence[str], frames: Sequence[Frame], send: set[int],
                   fmt: str = "jpeg", quality: int = 90) -> bytes:
    """The request body for ``frames`` (references, then the target), with images of the indices in ``send``."""
    shape = frames[-1].image.shape[:2]
    blobs, images = [], []
    for f in {f.index: f for f in frames if f.index in send}.values():
        data = encode_image(f.image, fmt, quality)
        blobs.append(data)
        images.append({"index": f.index, "format": fmt, "size": len(data)})
    header = json.dumps({"stream": stream, "queries": list(queries), "frames": [f.index for f in frames],
                         "shape": list(shape), "images": images}).encode()
    return _HEADER_LEN.pack(len(header)) + header + b"".join(blobs)


def decode_request(body: bytes) -> ReasonRequest:
    """Parse and check a request body; InputError saying what is wrong."""
    if len(body) < _HEADER_LEN.size:
        raise InputError(f"request body of {len(body)} bytes: expected a 4-byte header length first")
    (n,) = _HEADER_LEN.unpack_from(body)
    try:
        header = json.loads(body[_HEADER_LEN.size:_HEADER_LEN.size + n])
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"request header: not JSON ({e})") from None
    if not isinstance(header, dict):
        raise InputError("request header: expected a JSON object")
    stream, frames, shape, images = (header.get(k) for k in ("stream", "frames", "shape", "images"))
    if not isinstance(stream, str) or not stream:
        raise InputError(f"request header 'stream': {stream!r}; expected a non-empty string")
    queries = as_queries(header.get("queries", []))
    if not isinstance(frames, list) or not frames or not all(isinstance(i, int) for i in frames):
        raise InputError(f"request header 'frames': {frames!r}; expected a non-empty list of frame indices")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise InputError(f"request header 'shape': {shape!r}; expected [height, width]")
    if not isinstance(images, list):
        raise InputError(f"request header 'images': {images!r}; expected a list")
    offset, decoded = _HEADER_LEN.size + n, {}
    for item in images:
        if not (isinstance(item, dict) and isinstance(item.get("index"), int) and isinstance(item.get("size"), int)
                and item["size"] >= 0):
            raise InputError(f"request image entry {item!r}: expected {{'index': int, 'format': str, 'size': int}}")
        data = body[offset:offset + item["size"]]
        if len(data) != item["size"]:
            raise InputError(f"request image of frame {item['index']}: {len(data)} bytes; header says {item['size']}")
        offset += item["size"]
        image = decode_image(data, f"request image of frame {item['index']}")
        if image.shape[:2] != tuple(shape):
            raise InputError(f"request image of frame {item['index']}: {image.shape[:2]}; header shape is {shape}")
        decoded[item["index"]] = image
    if offset != len(body):
        raise InputError(f"request body: {len(body) - offset} bytes after the images the header lists")
    if frames[-1] not in decoded:
        raise InputError(f"request: no image of the target frame {frames[-1]} (the target is always sent)")
    return ReasonRequest(stream, queries, list(frames), (shape[0], shape[1]), decoded)


def encode_masks(masks: np.ndarray) -> dict:
    """uint8 [Q,H,W] 0/1 masks as JSON-able packed bits."""
    return {"shape": list(masks.shape), "masks": base64.b64encode(np.packbits(masks.astype(bool))).decode()}


def decode_masks(answer: dict) -> np.ndarray:
    """uint8 [Q,H,W] masks from ``encode_masks``' form."""
    shape = tuple(answer["shape"])
    bits = np.unpackbits(np.frombuffer(base64.b64decode(answer["masks"]), np.uint8), count=int(np.prod(shape)))
    return bits.reshape(shape)


@dataclass
class ClientStats:
    """What a RemoteReasoner sent and how its requests went."""

    requests: int = 0  # HTTP requests made (resends and retries included)
    steps: int = 0  # reasoning steps answered
    bytes_sent: int = 0  # request bodies
    frames_sent: int = 0  # images sent
    resent: int = 0  # frames resent after a "missing" answer
    retries: int = 0  # requests retried after a connection error or a 5xx/404 answer
    failures: int = 0  # steps that raised
    last_error: str | None = None
    step_bytes: list[int] = field(default_factory=list)  # bytes sent per answered step (resends included)


class RemoteReasoner:
    """A streaming ``Reasoner`` whose step runs on a ``visa-edge serve`` server.

    Sends each frame's image once (the server caches its visual tokens), resends what the server
    reports missing, retries connection errors and 5xx/404 answers with exponential backoff, and
    raises ``RemoteError`` when a step cannot be done (the streaming runtime counts it and keeps
    tracking). ``reset()`` starts a new stream id.
    """

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 30.0, retries: int = 3,
                 backoff_s: float = 0.2, image_format: str = "jpeg", jpeg_quality: int = 90,
                 known_frames: int = 64, stream: str | None = None):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InputError(f"reasoner URL {url!r}: expected http://HOST:PORT[/prefix]")
        if image_format not in IMAGE_FORMATS:
            raise InputError(f"image format {image_format!r}: expected one of {IMAGE_FORMATS}")
        self.url = url.rstrip("/")
        self._parsed = parsed
        self.token = token
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self.known_frames = known_frames
        self._base = stream or uuid.uuid4().hex[:12]
        self._generation = 0
        self._known: OrderedDict[int, None] = OrderedDict()  # frames the server should hold
        self._lock = threading.Lock()
        self.stats = ClientStats()

    @property
    def stream(self) -> str:
        return f"{self._base}-{self._generation}"

    def reset(self) -> None:
        """A new stream (frame indices restart): a fresh id, nothing known to be cached."""
        with self._lock:
            self._generation += 1
            self._known.clear()

    def check_query(self, query_or_queries: str | Sequence[str], n_frames: int = 12) -> None:
        """Check the query count and types here; the server checks prompt lengths (400 answers)."""
        as_queries(query_or_queries)

    def __call__(self, frames: Sequence[Frame], queries: str | Sequence[str]) -> ReasonOutput:
        """The target frame's masks from the server, for one query or several."""
        queries = as_queries(queries)
        if not frames:
            raise InputError("frames: none given; expected references then the target")
        try:
            return self._step(frames, queries)
        except BaseException as e:
            self.stats.failures += 1
            self.stats.last_error = f"{type(e).__name__}: {e}"
            raise

    def _step(self, frames: Sequence[Frame], queries: tuple[str, ...]) -> ReasonOutput:
        t0 = time.perf_counter()
        with self._lock:
            stream = self.stream
            send = {f.index for f in frames if f.index not in self._known} | {frames[-1].index}
        sent_bytes = 0
        for attempt in range(2):  # the second attempt resends what the server said it lacks
            body = encode_request(stream, queries, frames, send, self.image_format, self.jpeg_quality)
            sent_bytes += len(body)
            self.stats.frames_sent += len(send)
            status, answer = self._post("/reason", body)
            if status == 409 and answer.get("status") == "missing" and attempt == 0:
                missing = {int(i) for i in answer.get("missing", [])}
                self.stats.resent += len(missing)
                send |= missing
                continue
            break
        if status != 200:
            raise RemoteError(f"{self.url}/reason: HTTP {status}: {answer.get('error') or answer}")
        masks = decode_masks(answer)
        with self._lock:
            if stream == self.stream:
                for i in send:
                    self._known[i] = None
                for f in frames:
                    self._known.move_to_end(f.index)
                while len(self._known) > self.known_frames:
                    self._known.popitem(last=False)
        self.stats.steps += 1
        self.stats.step_bytes.append(sent_bytes)
        timings = {f"server_{k}": float(v) for k, v in answer.get("timings", {}).items()}
        timings["remote_total"] = time.perf_counter() - t0
        return ReasonOutput(masks[0], timings, masks=masks)

    def get(self, path: str) -> dict:
        """A GET endpoint's JSON (``/healthz``, ``/metrics``); RemoteError unless it answers 200."""
        status, answer = self._request("GET", path, None)
        if status != 200:
            raise RemoteError(f"{self.url}{path}: HTTP {status}: {answer}")
        return answer

    def _post(self, path: str, body: bytes) -> tuple[int, dict]:
        """POST with retries: connection errors and 404/5xx answers are retried with exponential backoff."""
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            self.stats.requests += 1
            self.stats.bytes_sent += len(body)
            try:
                status, answer = self._request("POST", path, body)
            except (OSError, http.client.HTTPException) as e:
                status, answer = None, {"error": f"{type(e).__name__}: {e}"}
            if status is not None and status != 404 and status < 500:
                return status, answer
            if attempt == self.retries:
                raise RemoteError(f"{self.url}{path}: failed after {attempt + 1} attempts; last: "
                                  f"{'HTTP ' + str(status) if status else ''} {answer.get('error', answer)}")
            self.stats.retries += 1
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _request(self, method: str, path: str, body: bytes | None) -> tuple[int, dict]:
        p = self._parsed
        cls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
        conn = cls(p.hostname, p.port, timeout=self.timeout_s)
        headers = {"Content-Type": "application/octet-stream"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, p.path.rstrip("/") + path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            answer = {"error": data[:200].decode(errors="replace")}
        return response.status, answer if isinstance(answer, dict) else {"answer": answer}


def read_token(path: str) -> str:
    """The shared token in file ``path`` (surrounding whitespace dropped); InputError if unreadable or empty."""
    try:
        token = open(path, encoding="utf-8").read().strip()
    except OSError as e:
        raise InputError(f"token file {path}: {e.strerror}; expected a readable file with the shared token") from None
    if not token:
        raise InputError(f"token file {path}: empty; expected the shared token")
    return token
