"""Bring up rosa on a machine with a full ROS 2 Jazzy install (after `colcon build`).

    ros2 launch rosa bringup.launch.py llm_url:=http://localhost:6000/v1 llm_model:=openai/gpt-oss-120b
    ros2 launch rosa bringup.launch.py audio_source:=file:/path/to/speech.wav   # stt from a WAV file

The reachy_driver expects a Reachy Mini daemon at `daemon_url` (config/rosa.yaml; `./rosa up` starts a
simulated one). Every node gets its parameters from config/rosa.yaml (installed to share/rosa/config) and is
respawned if it dies. `./rosa up` starts the same graph without launch_ros.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("rosa")
    params_file = LaunchConfiguration("params_file")
    llm_url = LaunchConfiguration("llm_url")
    llm_model = LaunchConfiguration("llm_model")
    robots_file = LaunchConfiguration("robots_file")

    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "rosa.yaml"),
                              description="ROS 2 parameters file for every rosa node"),
        DeclareLaunchArgument("llm_url", default_value="",
                              description="OpenAI-compatible base URL (empty = providers from params_file)"),
        DeclareLaunchArgument("llm_model", default_value="openai/gpt-oss-120b",
                              description="Model name, used with llm_url"),
        DeclareLaunchArgument("robots_file", default_value="robots.yaml",
                              description="Robots registry (YAML or drivers.json)"),
        DeclareLaunchArgument("audio_source", default_value="default",
                              description="stt: default, device:<name>, file:<wav>, topic:<name> or none"),
        DeclareLaunchArgument("stt_model", default_value="ggml-tiny.en.bin",
                              description="stt: a ggml whisper model (absolute, or in $ROSA_MODELS_DIR)"),
        DeclareLaunchArgument("with_stt", default_value="true", description="start the stt node"),
        DeclareLaunchArgument("with_llm_server", default_value="true",
                              description="start llm_server, the embedded local model (the last provider of llm.urls); "
                                          "not started when llm_url is given"),
    ]

    with_url = IfCondition(PythonExpression(["'", llm_url, "' != ''"]))
    without_url = IfCondition(PythonExpression(["'", llm_url, "' == ''"]))

    def node(executable, condition, extra):
        return Node(
            package="rosa",
            executable=executable,
            namespace="rosa",
            name=executable,
            output="screen",
            respawn=True,
            respawn_delay=2.0,
            condition=condition,
            parameters=[params_file, {"robots_file": robots_file}, *extra],
        )

    url_params = [{"llm.urls": [llm_url], "llm.models": [llm_model], "llm.key_envs": [""]}]
    nodes = []
    for exe in ("process_manager", "kernel", "reachy_driver"):
        nodes.append(node(exe, with_url, url_params))
        nodes.append(node(exe, without_url, []))
    # The embedded local model (llm_server): the last of llm.urls in the params file.
    nodes.append(Node(
        package="rosa", executable="llm_server", namespace="rosa", name="llm_server", output="screen",
        respawn=True, respawn_delay=2.0, parameters=[params_file],
        condition=IfCondition(PythonExpression(["'", llm_url, "' == '' and '", LaunchConfiguration("with_llm_server"), "' == 'true'"])),
    ))
    # The speech node: a missing model exits with code 78; respawning cannot fix that, but launch_ros
    # has no "do not respawn on this code", so stt is not respawned.
    nodes.append(Node(
        package="rosa", executable="stt", namespace="rosa", name="stt", output="screen",
        condition=IfCondition(LaunchConfiguration("with_stt")),
        parameters=[params_file, {"audio_source": LaunchConfiguration("audio_source"),
                                  "model": LaunchConfiguration("stt_model")}],
    ))
    return LaunchDescription(args + nodes)
