"""Bring up rosa on a machine with a full ROS 2 Jazzy install (after building it, see README.md).

    ros2 launch rosa bringup.launch.py llm_url:=http://localhost:6000/v1 llm_model:=openai/gpt-oss-120b
    ros2 launch rosa bringup.launch.py audio_source:=file:/path/to/speech.wav   # stt from a WAV file
    ros2 launch rosa bringup.launch.py --show-args                             # every argument

(Not from the checkout's root: there `ros2 launch` takes the file `./rosa` for a launch file. From
there, give the path instead: `ros2 launch launch/bringup.launch.py …`.)

The reachy_driver expects a Reachy Mini daemon at `daemon_url` (config/rosa.yaml; `./rosa up` starts
a simulated one). Every node gets its parameters from `params_file` (config/rosa.yaml, installed to
share/rosa/config), then from the launch arguments given, and is respawned if it dies, unless it
exits with code 78: a configuration error (a bad parameter, a missing speech model) that
respawning cannot fix. `./rosa up` starts the same graph without launch_ros.

The launch arguments become typed ROS parameters in a parameters file of their own (`llm.urls` a
list of strings, …), written by `launch_overrides()` below: nothing of launch_ros's substitution
rules is involved.
"""

import os
import tempfile

import yaml

# A node that exits with this code has a configuration error: it is not respawned (rosa::EXIT_CONFIG).
EXIT_CONFIG = 78
NAMESPACE = "rosa"
RESPAWN_DELAY_SEC = 2.0

# name: (default, description). An empty default leaves the value of params_file.
ARGUMENTS = {
    "params_file": (None, "ROS 2 parameters file for every rosa node (default: the installed config/rosa.yaml)"),
    "llm_url": ("", "OpenAI-compatible base URL of the LLM (kernel and workers); empty: the providers of params_file"),
    "llm_model": ("", "model name at llm_url (default: the first of params_file's llm.models)"),
    "llm_key_env": ("", "environment variable holding llm_url's API key (empty: no key)"),
    "robots_file": ("", "robots registry, YAML or drivers.json (empty: params_file's robots_file)"),
    "daemon_url": ("", "reachy_driver: the Reachy Mini daemon (empty: params_file's daemon_url)"),
    "audio_source": ("", "stt: default, device:<name>, file:<wav>, topic:<name> or none (empty: params_file's)"),
    "stt_model": ("", "stt: a ggml whisper model, absolute or in $ROSA_MODELS_DIR (empty: params_file's)"),
    "with_stt": ("true", "start the stt node"),
    "with_reachy": ("true", "start the reachy_driver node"),
    "with_llm_server": ("true", "start llm_server, the embedded local model (the last provider of llm.urls); "
                                "not started when llm_url is given"),
    "with_web": ("true", "start rosa_web (the browser UI at http://127.0.0.1:8765/, rosbridge v2 and Foxglove WebSocket on :9090 and :8765)"),
    "record": ("false", "start the bag_recorder node: the session as a rosbag2 MCAP bag"),
    "record_dir": ("", "bag_recorder: the bag directory (empty: rosbag2_<date>-<time> in the current directory)"),
    "with_bridge": ("false", "start the mcp_bridge node (serves the robots_file's robots that have a ros: section)"),
}

# The nodes, in start order, and the launch argument that turns each off.
NODES = [("bag_recorder", "record"), ("llm_server", "with_llm_server"), ("process_manager", None), ("kernel", None),
         ("reachy_driver", "with_reachy"), ("stt", "with_stt"), ("rosa_web", "with_web"),
         ("mcp_bridge", "with_bridge")]


def default_params_file():
    from ament_index_python.packages import get_package_share_directory

    return os.path.join(get_package_share_directory("rosa"), "config", "rosa.yaml")


def launch_overrides(args, default_model="openai/gpt-oss-120b"):
    """The parameters the launch arguments set: {"/rosa/<node>": {"ros__parameters": {...}}}.

    Values are typed as the nodes declare them (lists of strings for llm.*). Each node's own
    section, so that they win over both params_file's `/**` and its node sections.
    """
    llm = {}
    if args.get("llm_url"):
        llm = {
            "llm.urls": [args["llm_url"]],
            "llm.models": [args.get("llm_model") or default_model],
            "llm.key_envs": [args.get("llm_key_env") or ""],
        }
    elif args.get("llm_model"):
        llm["llm.models"] = [args["llm_model"]]
    if args.get("llm_key_env") and not args.get("llm_url"):
        llm["llm.key_envs"] = [args["llm_key_env"]]
    robots = {"robots_file": args["robots_file"]} if args.get("robots_file") else {}
    per_node = {
        "process_manager": {**llm, **robots},
        "kernel": {**llm, **robots},
        "mcp_bridge": robots,
        "reachy_driver": {"daemon_url": args["daemon_url"]} if args.get("daemon_url") else {},
        "stt": {k: args[a] for k, a in (("audio_source", "audio_source"), ("model", "stt_model")) if args.get(a)},
        "bag_recorder": {"output": args["record_dir"]} if args.get("record_dir") else {},
    }
    return {f"/{NAMESPACE}/{n}": {"ros__parameters": p} for n, p in per_node.items() if p}


class _PlainDumper(yaml.SafeDumper):
    """Plain YAML: no anchors and aliases for values shared between nodes (rcl refuses them)."""

    def ignore_aliases(self, data):
        return True


def write_overrides(overrides):
    """`launch_overrides()` as a parameters file (plain YAML), or None when there is nothing."""
    if not overrides:
        return None
    with tempfile.NamedTemporaryFile("w", prefix="rosa_launch_", suffix=".yaml", delete=False) as f:
        yaml.dump(overrides, f, Dumper=_PlainDumper, default_flow_style=False)
        return f.name


def generate_launch_description():
    # Imported here so that tests can use the helpers above without launch installed.
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, OpaqueFunction, RegisterEventHandler
    from launch.conditions import IfCondition
    from launch.event_handlers import OnProcessExit
    from launch.events import matches_action
    from launch.events.process import ShutdownProcess
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    def node(executable, files, condition):
        """One rosa node: respawned RESPAWN_DELAY_SEC after it dies, unless with code 78."""
        action = Node(
            package="rosa", executable=executable, namespace=NAMESPACE, name=executable,
            output="screen", respawn=True, respawn_delay=RESPAWN_DELAY_SEC, parameters=files,
            condition=condition,
        )

        def on_exit(event, _context):
            if event.returncode != EXIT_CONFIG:
                return None
            # Ends the respawn delay at once: the process is not started again.
            return [
                LogInfo(msg=f"{executable} exited with code {EXIT_CONFIG} (a configuration error, see its log): "
                            "not respawned; fix it and launch again"),
                EmitEvent(event=ShutdownProcess(process_matcher=matches_action(action))),
            ]

        return [action, RegisterEventHandler(OnProcessExit(target_action=action, on_exit=on_exit))]

    def nodes(context):
        args = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
        files = [args["params_file"] or default_params_file()]
        extra = write_overrides(launch_overrides(args))
        if extra:
            files.append(extra)
        actions = []
        for executable, switch in NODES:
            if executable == "llm_server" and args["llm_url"]:
                continue  # an explicit provider: the embedded model is not loaded
            condition = IfCondition(LaunchConfiguration(switch)) if switch else None
            actions += node(executable, files, condition)
        return actions

    declared = [DeclareLaunchArgument(name, default_value=default if default is not None else "", description=text)
                for name, (default, text) in ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=nodes)])
