"""Launch the visa_edge node on a ROS 2 install (needs the `launch` package, i.e. a sourced ROS 2).

    LAUNCH=$(python -c "import visa_edge.ros_node.launch as l; print(l.__path__[0])")/visa_edge.launch.py
    ros2 launch $LAUNCH checkpoint:=VISA-7B clip:=clip-vit-large-patch14 image:=/camera/image_raw query:="the mug"

visa-edge is a pip package (not built by colcon), so the node runs as `visa-edge ros`, which
must be on PATH. Every node parameter is a launch argument; only the ones given (non-empty)
are passed, so the node's defaults (or ``params_file``) apply to the rest.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from visa_edge.ros_node.parameters import PARAMETERS, node_command

LAUNCH_ONLY = {
    "node_name": ("visa_edge", "node name"),
    "namespace": ("", "node namespace"),
    "image": ("image", "image topic to subscribe to (remaps `image`)"),
    "params_file": ("", "YAML parameter file (applied before the parameters given here)"),
    "log_level": ("info", "ROS log level"),
    "managed": ("false", "run as a managed (lifecycle) node: true | false"),
}


def _node(context) -> list:
    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    cmd = node_command({p.name: value(p.name) for p in PARAMETERS}, node_name=value("node_name"),
                       namespace=value("namespace"), image=value("image"), params_file=value("params_file"),
                       log_level=value("log_level"), managed=value("managed").lower() == "true")
    return [ExecuteProcess(cmd=cmd, name=value("node_name"), output="screen")]


def generate_launch_description() -> LaunchDescription:
    args = [DeclareLaunchArgument(name, default_value=default, description=description)
            for name, (default, description) in LAUNCH_ONLY.items()]
    args += [DeclareLaunchArgument(p.name, default_value="", description=f"{p.description} (default {p.default!r})")
             for p in PARAMETERS]
    return LaunchDescription([*args, OpaqueFunction(function=_node)])
