"""Procedural video scenes with ground truth: the toy domain of the tiny trained VISA.

A scene is 2-4 coloured shapes (ball, square, triangle) moving in straight lines over a
textured background, occluding each other (fixed depth order) and possibly leaving the
frame. Every object has a distinct colour and a distinct direction of motion; sizes differ
by a clear margin. Queries in VISA's style name an object by colour and shape ("the red
ball"), by motion ("the shape moving to the left"), by relation ("what is above the blue
square?"), by order ("the largest object") or by position at each frame ("the leftmost
shape", whose answer changes as the shapes move). Everything is a pure function of a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 200, 50),
    "blue": (35, 70, 235),
    "yellow": (240, 220, 30),
}
SHAPES = ("ball", "square", "triangle")
DIRECTIONS: dict[str, tuple[float, float]] = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
MOTION_WORDS = {"right": "moving to the right", "left": "moving to the left", "down": "moving down", "up": "moving up"}
KINDS = ("colour_shape", "motion", "relation", "ordering", "position")


@dataclass(frozen=True)
class SceneObject:
    """One shape: appearance, size (radius in pixels), start centre and velocity (pixels per frame)."""

    colour: str
    shape: str
    radius: float
    start: tuple[float, float]  # (x, y) at frame 0
    velocity: tuple[float, float]
    direction: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def centre(self, t: int) -> tuple[float, float]:
        return self.start[0] + self.velocity[0] * t, self.start[1] + self.velocity[1] * t


@dataclass(frozen=True)
class Query:
    """A query and its answer: the object index at every frame (-1 where no object answers)."""

    text: str
    kind: str
    targets: tuple[int, ...]


@dataclass
class Scene:
    """A generated clip: frames, the visible mask of every object at every frame, and its objects."""

    seed: int
    frames: list[np.ndarray]  # RGB uint8 [H,W,3]
    masks: np.ndarray  # uint8 [T, n_objects, H, W], visible (after occlusion) 0/1
    objects: list[SceneObject]  # back to front

    def target_mask(self, query: Query, t: int) -> np.ndarray:
        """Ground-truth mask [H,W] of ``query`` at frame ``t`` (empty where nothing answers)."""
        k = query.targets[t]
        return self.masks[t, k] if k >= 0 else np.zeros(self.masks.shape[2:], np.uint8)

    def area(self, k: int, t: int) -> int:
        return int(self.masks[t, k].sum())


def generate(seed: int, n_frames: int = 24, size: int = 160) -> Scene:
    """The scene of ``seed``: ``n_frames`` frames of ``size`` x ``size`` pixels."""
    if n_frames < 1 or size < 64:
        raise InputError(f"scene: n_frames={n_frames}, size={size}; expected n_frames >= 1 and size >= 64")
    rng = np.random.default_rng(seed)
    objects = _objects(rng, size, n_frames)
    background = _background(rng, size)
    frames, masks = [], np.zeros((n_frames, len(objects), size, size), np.uint8)
    for t in range(n_frames):
        img = background.copy()
        full = [_shape_mask(o, t, size) for o in objects]
        for k, (o, m) in enumerate(zip(objects, full)):
            shade = np.asarray(COLOURS[o.colour], np.float32)
            img[m] = shade * (0.92 + 0.08 * _grain(size, seed + k)[m])[:, None]
            above = np.zeros_like(m)
            for m2 in full[k + 1 :]:
                above |= m2
            masks[t, k] = m & ~above
        frames.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    return Scene(seed, frames, masks, objects)


def queries(scene: Scene) -> list[Query]:
    """Every query the scene answers unambiguously, of all kinds (see ``KINDS``)."""
    objs, n_frames = scene.objects, len(scene.frames)
    out = [Query(f"the {o.name}", "colour_shape", (k,) * n_frames) for k, o in enumerate(objs)]
    out += [Query(f"the shape {MOTION_WORDS[o.direction]}", "motion", (k,) * n_frames) for k, o in enumerate(objs)]
    radii = [o.radius for o in objs]
    out.append(Query("the largest object", "ordering", (int(np.argmax(radii)),) * n_frames))
    out.append(Query("the smallest object", "ordering", (int(np.argmin(radii)),) * n_frames))
    out += _relations(scene)
    out += _positions(scene)
    return out


def _relations(scene: Scene) -> list[Query]:
    """'what is above/below/left of/right of the X?' where exactly one object is on that side at every frame."""
    out = []
    n_frames = len(scene.frames)
    sides = {"above": (1, -1), "below": (1, 1), "left of": (0, -1), "right of": (0, 1)}
    for r, ref in enumerate(scene.objects):
        for word, (axis, sign) in sides.items():
            answer = None
            for t in range(n_frames):
                c = ref.centre(t)
                hits = [k for k, o in enumerate(scene.objects) if k != r and sign * (o.centre(t)[axis] - c[axis]) > o.radius + ref.radius]
                if len(hits) != 1 or (answer is not None and hits[0] != answer):
                    answer = None
                    break
                answer = hits[0]
            if answer is not None:
                out.append(Query(f"what is {word} the {ref.name}?", "relation", (answer,) * n_frames))
    return out


def _positions(scene: Scene) -> list[Query]:
    """'the leftmost/rightmost/highest/lowest shape' at each frame, among the visible objects."""
    out = []
    for word, (axis, sign) in {"leftmost": (0, -1), "rightmost": (0, 1), "highest": (1, -1), "lowest": (1, 1)}.items():
        targets = []
        for t in range(len(scene.frames)):
            visible = [k for k in range(len(scene.objects)) if scene.area(k, t) > 0]
            targets.append(max(visible, key=lambda k: sign * scene.objects[k].centre(t)[axis]) if visible else -1)
        out.append(Query(f"the {word} shape", "position", tuple(targets)))
    return out


def _objects(rng: np.random.Generator, size: int, n_frames: int) -> list[SceneObject]:
    n = int(rng.integers(2, 5))
    colours = rng.permutation(list(COLOURS))[:n]
    directions = rng.permutation(list(DIRECTIONS))[:n]
    radii = rng.permutation(np.linspace(0.09, 0.17, 4) * size)[:n] + rng.uniform(-1, 1, n)
    objects = []
    for colour, direction, radius in zip(colours, directions, radii):
        speed = rng.uniform(0.6, 1.6) * size / 100
        dx, dy = DIRECTIONS[str(direction)]
        travel = speed * (n_frames - 1)
        # Start so that the object is inside at frame 0 and may leave near the end.
        lo, hi = radius, size - radius
        x0 = rng.uniform(lo, hi) if dx == 0 else (rng.uniform(lo, max(lo, hi - 0.6 * travel)) if dx > 0 else rng.uniform(min(hi, lo + 0.6 * travel), hi))
        y0 = rng.uniform(lo, hi) if dy == 0 else (rng.uniform(lo, max(lo, hi - 0.6 * travel)) if dy > 0 else rng.uniform(min(hi, lo + 0.6 * travel), hi))
        objects.append(SceneObject(str(colour), str(rng.choice(SHAPES)), float(radius), (float(x0), float(y0)),
                                   (dx * speed, dy * speed), str(direction)))
    return objects


def _shape_mask(o: SceneObject, t: int, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    cx, cy = o.centre(t)
    dx, dy, r = x - cx, y - cy, o.radius
    if o.shape == "ball":
        return dx * dx + dy * dy <= r * r
    if o.shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    # Upward triangle inscribed in the circle of radius r.
    return (dy <= 0.5 * r) & (dy >= -r + 1.732 * np.abs(dx))


def _grain(size: int, salt: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.sin(0.9 * x + 0.4 * y + salt) * np.sin(0.3 * x - 0.8 * y + 2 * salt)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted colour gradient + two sinusoidal textures + noise: no saturated object colours."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(70, 150, 3)
    tilt = rng.uniform(-40, 40, (3, 2))
    img = np.empty((size, size, 3), np.float32)
    f1, f2 = rng.uniform(4, 14, 2), rng.uniform(10, 30, 2)
    p1, p2 = rng.uniform(0, 2 * np.pi, 2)
    texture = 14 * np.sin(f1[0] * x + f1[1] * y + p1) + 9 * np.sin(f2[0] * x - f2[1] * y + p2)
    for c in range(3):
        img[..., c] = base[c] + tilt[c, 0] * x + tilt[c, 1] * y + texture * (0.7 + 0.15 * c)
    img = 0.5 * img + 0.5 * img.mean(-1, keepdims=True)  # desaturate: objects stand out by colour
    img += rng.normal(0, 5, (size, size, 1)).astype(np.float32)
    return np.clip(img, 20, 200)
