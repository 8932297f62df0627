"""The ROS 2 node with the embedded tiny trained VISA publishes masks of the object the query names.

Same loopback-only DDS setup and probe process as tests/test_ros_node.py (its fixtures and
helpers are reused); the node runs the real pipeline (build_runtime) on a held-out scene.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_ros_node import context, probe, ros_env, running_node, set_query  # noqa: F401 (fixtures)
from visa_edge.runtime import scenes
from visa_edge.runtime.commands.demo import TINY_VISA
from visa_edge.runtime.streaming.build import PipelineConfig, build_runtime
from visa_edge.training.evaluate import stream_config
from visa_edge.training.samples import HELD_OUT_SEED0

pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")


def box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def box_iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def test_node_publishes_the_named_object(context, probe):
    scene = scenes.generate(HELD_OUT_SEED0 + 202)
    query = next(q for q in scenes.queries(scene) if q.kind == "colour_shape")
    runtime = build_runtime(PipelineConfig(str(TINY_VISA / "visa"), str(TINY_VISA / "clip"), stream=stream_config()))
    with running_node(context, probe, runtime):
        set_query(probe, query.text)
        h, w = scene.frames[0].shape[:2]
        for i, frame in enumerate(scene.frames):
            probe.call("publish_raw", index=i, encoding="rgb8", height=h, width=w, step=3 * w, data=frame.tobytes())
        masks = probe.call("wait_masks", indices=list(range(len(scene.frames))), timeout=180.0)
    ious = [box_iou(masks[i].box, box(scene.target_mask(query, i))) if masks[i].area else 0.0
            for i in range(len(scene.frames)) if scene.target_mask(query, i).any()]
    assert np.mean(ious) >= 0.7, np.round(ious, 2)
