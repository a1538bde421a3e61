# edge_vlm: source this file (do not run it):   source env.sh   (or . env.sh)
# Activates .venv and the colcon workspace ros2_ws/install, and selects Fast DDS. The ROS 2
# tools come with them: `ros2` (ros2cli and its verbs: launch, topic, param, node, ...) and
# launch/launch_ros in the venv, composition_interfaces in ros2_ws/install (scripts/setup.sh
# installs them from ../shared/ros2-tools; with a system ROS 2 install, source its setup.bash
# first and its tools are used).
# Build first with `make setup` (scripts/setup.sh).

# colcon's local_setup.* and the venv's activate are not `set -u` clean.
case $- in *u*) _edge_vlm_nounset=1; set +u ;; *) _edge_vlm_nounset=0 ;; esac

if [ -n "${BASH_VERSION:-}" ]; then
  _edge_vlm_root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
elif [ -n "${ZSH_VERSION:-}" ]; then
  # shellcheck disable=SC2296
  _edge_vlm_root="$(cd "$(dirname "${(%):-%x}")" && pwd)"
else
  _edge_vlm_root="$(pwd)"
fi

if [ ! -f "$_edge_vlm_root/.venv/bin/activate" ]; then
  echo "env.sh: $_edge_vlm_root/.venv missing: run 'make setup' (bash scripts/setup.sh) first" >&2
else
  # shellcheck disable=SC1091
  . "$_edge_vlm_root/.venv/bin/activate"
  # The ROS wheels' packages (std_msgs, sensor_msgs, ...) live in the venv prefix.
  case ":${AMENT_PREFIX_PATH:-}:" in
    *":$VIRTUAL_ENV:"*) ;;
    *) export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;;
  esac
  if [ -n "${ZSH_VERSION:-}" ] && [ -f "$_edge_vlm_root/ros2_ws/install/local_setup.zsh" ]; then
    . "$_edge_vlm_root/ros2_ws/install/local_setup.zsh"
  elif [ -f "$_edge_vlm_root/ros2_ws/install/local_setup.bash" ]; then
    . "$_edge_vlm_root/ros2_ws/install/local_setup.bash"
  else
    echo "env.sh: ros2_ws/install missing: run 'make setup' (bash scripts/setup.sh) to build the workspace" >&2
  fi
  export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
  # every package's executables (install/<pkg>/lib/<pkg>) on PATH: the nodes, edge_vlm_tools
  # (edge_vlm_run, edge_vlm_play, edge_vlm_record, edge_vlm_demo) and edge_vlm_cameras
  # (edge_vlm_camera_dv, edge_vlm_camera_rgb, edge_vlm_camera_metavision)
  for _d in "$_edge_vlm_root"/ros2_ws/install/*/; do
    _d="${_d%/}/lib/$(basename "$_d")"
    [ -d "$_d" ] || continue
    case ":$PATH:" in *":$_d:"*) ;; *) PATH="$_d:$PATH" ;; esac
  done
  unset _d
  export PATH
  export EDGE_VLM_ROOT="$_edge_vlm_root"
fi
[ "$_edge_vlm_nounset" = 1 ] && set -u
unset _edge_vlm_root _edge_vlm_nounset
