#!/usr/bin/env bash
# edge_vlm environment setup (called by `make setup`).
#
#   1. .venv with Python 3.11 (python3 -m venv)
#   2. torch==2.13.0 FIRST (CPU build; any other torch spec pulls GBs of CUDA)
#   3. requirements.txt (pinned ROS 2 Kilted wheels, colcon, libraries, test tools)
#   4. CMake path fix for the ROS wheels (scripts/fix_cmake_paths.py)
#   5. the ROS 2 tools (launch, launch_ros, launch_pytest, the `ros2` command): those of a
#      system ROS 2 install when one is sourced (AMENT_PREFIX_PATH or /opt/ros/$ROS_DISTRO has
#      launch_ros and ros2cli), else the wheels of ../shared/ros2-tools (ROS2_TOOLS_DIR), installed
#      with --no-deps (PyPI's unrelated `launch` must never be pulled; their PyPI dependencies
#      are pinned in requirements.txt), and that folder's composition_interfaces (which
#      launch_ros imports) built by step 7 with the workspace
#   6. pip install -e ros2_ws/src/edge_vlm   (the `edge-vlm` console script)
#   7. colcon build --symlink-install in ros2_ws (every package under ros2_ws/src), after
#      removing what an earlier build left of packages no longer under ros2_ws/src and the
#      console scripts of the ament_python packages (rebuilt; a script that moved to another
#      package must not stay on PATH)
#   (first of all, outside the stamp: the native decode+bin kernel
#    ros2_ws/src/edge_vlm/edge_vlm/_native/libevbin.so, rebuilt when evbin.c is newer, and its
#    per-packet entry point as a CPython extension, _native/evbinext<EXT_SUFFIX>, rebuilt when
#    evbin.c or evbinext.c is newer, the sparse ViT's fused block kernel _native/libsparsevit.so,
#    rebuilt when sparsevit.c or svit_kernels.h is newer, and the change-mask net
#    _native/libconvnets.so, rebuilt when convnets.c or convnets_mask.h is newer)
#
# Idempotent. A stamp file (.setup-stamp) holds a hash of requirements.txt, this
# script, the fix script, every package.xml / CMakeLists.txt / setup.py /
# setup.cfg / .msg/.srv/.action file under ros2_ws/src (and under the tools' src/), and where
# the ROS 2 tools come from (the wheels' names): when nothing changed and the workspace is
# installed, the script exits at once.
#
# Environment knobs: PYTHON (interpreter used to create the venv, default
# python3.11 or python3), SETUP_FORCE=1 (ignore the stamp), COLCON_EXTRA_ARGS,
# ROS2_TOOLS_DIR (default ../shared/ros2-tools next to the checkout).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
WS="$ROOT/ros2_ws"
STAMP="$ROOT/.setup-stamp"
REQ="$ROOT/requirements.txt"
REQ_STAMP="$VENV/.edge_vlm-requirements.sha256"
TOOLS_DIR="${ROS2_TOOLS_DIR:-$ROOT/../shared/ros2-tools}"
TOOLS_STAMP="$VENV/.edge_vlm-ros2-tools.sha256"
T0=$SECONDS

STEP="start"
step() { STEP="$*"; printf '\n==> [setup %3ss] %s\n' "$((SECONDS - T0))" "$*"; }
die() { printf '\nsetup.sh: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; [ $rc -eq 0 ] || printf "\nsetup.sh: FAILED (exit %s) during step: %s\n" "$rc" "$STEP" >&2' EXIT

cd "$ROOT"
[ -f "$REQ" ] || die "requirements.txt not found in $ROOT"

# ---- native decode+bin kernel (edge_vlm/_native/libevbin.so) ---------------------
# Built in the source tree (colcon --symlink-install links it; edge_vlm/native.py finds it
# through its real path), before the stamp check: the stamp does not cover the C source and
# this is cheap. Rebuilt when evbin.c is newer than the library. Without gcc, or if it fails,
# edge_vlm keeps working on its numpy path (same results, slower).
# Then the extension evbinext<EXT_SUFFIX> (evbinext.c, which compiles evbin.c in: FrameBinner's
# per-packet call without ctypes' overhead), for the venv's Python (else python3.11 / python3:
# native.py only loads a build whose EXT_SUFFIX is its interpreter's). Without Python.h, or if
# it fails, FrameBinner calls the kernel through ctypes (same results, slower).
# build_c_lib SRC LIB FALLBACK CFLAGS [LIBS]: LIB from SRC when missing or older (FALLBACK: what
# edge_vlm does without it, for the notes)
build_c_lib() {
  # $6: headers the source includes (rebuilt when one of them is newer too)
  local src="$1" lib="$2" fallback="$3" cflags="$4" libs="${5:-}" deps="${6:-}" stale="" dep
  [ -f "$src" ] || return 0
  for dep in $src $deps; do
    if [ ! -f "$lib" ] || [ "$dep" -nt "$lib" ]; then stale=1; fi
  done
  [ -n "$stale" ] || return 0
  if ! command -v gcc >/dev/null 2>&1; then
    echo "setup.sh: note: gcc not found; $fallback (same results, slower)"
    return 0
  fi
  # shellcheck disable=SC2086  # word splitting of the flags is intended
  if gcc $cflags -shared -fPIC -o "$lib.tmp" "$src" $libs; then
    mv -f "$lib.tmp" "$lib"                 # atomic: a running process never sees half a library
    echo "setup.sh: built $lib"
  else
    rm -f "$lib.tmp"
    echo "setup.sh: WARNING: building $lib failed; $fallback" >&2
  fi
}
build_native() {
  local dir="$ROOT/ros2_ws/src/edge_vlm/edge_vlm/_native"
  build_c_lib "$dir/evbin.c" "$dir/libevbin.so" "edge_vlm uses its numpy decode+bin path" "-O2 -Wall"
}
build_native_ext() {
  local dir="$ROOT/ros2_ws/src/edge_vlm/edge_vlm/_native"
  local src="$dir/evbinext.c" py="" info inc suffix ext
  [ -f "$src" ] && [ -f "$dir/evbin.c" ] && command -v gcc >/dev/null 2>&1 || return 0
  if [ -x "$VENV/bin/python" ]; then
    py="$VENV/bin/python"
  else
    for py in "${PYTHON:-}" python3.11 python3; do
      [ -n "$py" ] && command -v "$py" >/dev/null 2>&1 && break
      py=""
    done
  fi
  [ -n "$py" ] || return 0
  info="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"]); print(sysconfig.get_config_var("EXT_SUFFIX") or "")' 2>/dev/null)" || return 0
  inc="$(printf '%s\n' "$info" | sed -n 1p)"
  suffix="$(printf '%s\n' "$info" | sed -n 2p)"
  ext="$dir/evbinext$suffix"
  if [ -z "$suffix" ] || [ ! -f "$inc/Python.h" ]; then
    echo "setup.sh: note: no Python.h for $py; FrameBinner calls the native kernel through ctypes (same results, slower)"
    return 0
  fi
  if [ -f "$ext" ] && [ ! "$src" -nt "$ext" ] && [ ! "$dir/evbin.c" -nt "$ext" ]; then
    return 0
  fi
  if gcc -O2 -Wall -shared -fPIC -I"$inc" -o "$ext.tmp" "$src"; then
    mv -f "$ext.tmp" "$ext"
    echo "setup.sh: built $ext"
  else
    rm -f "$ext.tmp"
    echo "setup.sh: WARNING: building $ext failed; FrameBinner calls the native kernel through ctypes" >&2
  fi
}
# Then the fused encoder-block kernel of the sparse ViT (_native/sparsevit.c -> libsparsevit.so,
# edge_vlm/model/native_vit.py): -O3, its AVX-512 and AVX2/FMA/F16C kernels compiled per function
# with target attributes (the library picks the widest set the CPU runs at run time; a CPU with
# neither is told apart then). Rebuilt when sparsevit.c or its kernels, svit_kernels.h, are newer.
# Without gcc, or if it fails, the encoder runs its PyTorch path (same results, slower).
build_native_vit() {
  local dir="$ROOT/ros2_ws/src/edge_vlm/edge_vlm/_native"
  build_c_lib "$dir/sparsevit.c" "$dir/libsparsevit.so" "the sparse ViT runs its PyTorch path" \
    "-O3 -Wall" "-lm" "$dir/svit_kernels.h"
}
# And the change-mask net in one call (_native/convnets.c -> libconvnets.so,
# edge_vlm/inference/native_convs.py): -O3, AVX2/FMA by target attributes. Rebuilt when convnets.c
# or the mask net's passes it includes, convnets_mask.h, are newer. Without gcc, or if it fails, the mask net runs its PyTorch forward (the same logits up
# to float rounding, slower).
build_native_convs() {
  local dir="$ROOT/ros2_ws/src/edge_vlm/edge_vlm/_native"
  build_c_lib "$dir/convnets.c" "$dir/libconvnets.so" "the change-mask net runs its PyTorch forward" \
    "-O3 -Wall" "-lm" "$dir/convnets_mask.h"
}
build_native
build_native_ext
build_native_vit
build_native_convs

# ---- where the ROS 2 tools come from ----------------------------------------------
# A system ROS 2 install (its prefix holds launch_ros and ros2cli) when one is sourced; else the
# wheels of TOOLS_DIR; else none (`ros2 launch` and the launch tests are then unavailable).
system_ros_prefix() {
  local p prefixes="${AMENT_PREFIX_PATH:-}"
  for p in ${prefixes//:/ } ${ROS_DISTRO:+/opt/ros/$ROS_DISTRO}; do
    [ "$p" = "$VENV" ] && continue
    if [ -f "$p/share/launch_ros/package.xml" ] && [ -f "$p/share/ros2cli/package.xml" ]; then
      echo "$p"
      return 0
    fi
  done
  return 1
}
if SYSTEM_ROS="$(system_ros_prefix)"; then
  TOOLS_FROM="system"
elif compgen -G "$TOOLS_DIR/wheels/launch_ros-*.whl" >/dev/null; then
  TOOLS_FROM="shared"
  TOOLS_DIR="$(cd "$TOOLS_DIR" && pwd)"
else
  TOOLS_FROM="none"
fi
# Folders whose packages colcon builds: the workspace's, plus the tools' interface sources
# (composition_interfaces) when the tools come from TOOLS_DIR.
PKG_DIRS=(ros2_ws/src)
if [ "$TOOLS_FROM" = shared ] && [ -d "$TOOLS_DIR/src" ]; then
  PKG_DIRS+=("$TOOLS_DIR/src")
fi

# ---- stamp: hash of everything that affects the environment / the build -----
compute_hash() {
  {
    for f in requirements.txt scripts/setup.sh scripts/fix_cmake_paths.py; do
      printf '%s\n' "$f"; cat "$f"
    done
    printf 'ros2 tools: %s\n' "$TOOLS_FROM"
    if [ "$TOOLS_FROM" = shared ]; then
      (cd "$TOOLS_DIR/wheels" && ls -- *.whl)
    fi
    if [ -d ros2_ws/src ]; then
      find "${PKG_DIRS[@]}" \( -name build -o -name install -o -name log -o -name '__pycache__' -o -name '*.egg-info' \) -prune -o \
        -type f \( -name package.xml -o -name CMakeLists.txt -o -name setup.py -o -name setup.cfg \
                   -o -name '*.msg' -o -name '*.srv' -o -name '*.action' \) -print | LC_ALL=C sort |
      while IFS= read -r f; do printf '%s\n' "$f"; cat "$f"; done
    fi
  } | sha256sum | cut -d' ' -f1
}

# Every package under ros2_ws/src and the tools' src/ (directory holding a package.xml).
list_packages() {
  find "${PKG_DIRS[@]}" -name package.xml -not -path '*/build/*' -not -path '*/install/*' -print 2>/dev/null |
    while IFS= read -r f; do
      sed -n 's:.*<name>[[:space:]]*\([^<[:space:]]*\)[[:space:]]*</name>.*:\1:p' "$f" | head -n1
    done | LC_ALL=C sort
}

# What an earlier build left that this one would not replace: build/ and install/ folders of
# packages no longer under ros2_ws/src, and each ament_python package's console scripts
# (install/<pkg>/lib/<pkg>/, written again by colcon's `setup.py develop`).
prune_stale() {
  local pkgs d name f
  pkgs=" $(list_packages | tr '\n' ' ') "
  for d in "$WS"/build/*/ "$WS"/install/*/; do
    [ -d "$d" ] || continue
    name="$(basename "$d")"
    case "$pkgs" in
      *" $name "*) ;;
      *) echo "setup.sh: removing ${d#"$ROOT"/} (no package $name under ros2_ws/src)"; rm -rf "$d" ;;
    esac
  done
  find ros2_ws/src -name package.xml -not -path '*/build/*' -not -path '*/install/*' -print |
    while IFS= read -r f; do
      grep -q '<build_type>ament_python</build_type>' "$f" || continue
      name="$(sed -n 's:.*<name>[[:space:]]*\([^<[:space:]]*\)[[:space:]]*</name>.*:\1:p' "$f" | head -n1)"
      if [ -n "$name" ]; then rm -rf "$WS/install/$name/lib/$name"; fi
    done
}

workspace_complete() {
  [ -f "$WS/install/local_setup.bash" ] || return 1
  [ -d "$WS/build" ] || return 1   # --symlink-install links into build/
  local p
  for p in $(list_packages); do
    [ -d "$WS/install/$p" ] || return 1
  done
  return 0
}

HASH="$(compute_hash)"
if [ "${SETUP_FORCE:-0}" != 1 ] && [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] \
   && [ "$(cat "$STAMP")" = "$HASH" ] && workspace_complete; then
  echo "setup.sh: environment up to date (stamp $HASH); nothing to do."
  echo "setup.sh: run 'source env.sh' to use it."
  exit 0
fi

# ---- 1. venv ------------------------------------------------------------------
step "1/7 Python 3.11 virtual environment at $VENV"
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif command -v python3.11 >/dev/null 2>&1; then
  PY=python3.11
else
  PY=python3
fi
command -v "$PY" >/dev/null 2>&1 || die "$PY not found (need Python 3.11)"
PYVER="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$PYVER" = "3.11" ] || die "$PY is Python $PYVER; edge_vlm needs Python 3.11 (set PYTHON=/path/to/python3.11)"

if [ -x "$VENV/bin/python" ]; then
  VENVVER="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo broken)"
  if [ "$VENVVER" != "3.11" ]; then
    echo "existing venv is '$VENVVER', recreating it"
    rm -rf "$VENV"
  else
    echo "reusing existing venv ($("$VENV/bin/python" -V 2>&1))"
  fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  rm -f "$REQ_STAMP"
  echo "created venv with $("$VENV/bin/python" -V 2>&1)"
fi

# Use the venv for everything below (same effect as activating it).
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
unset PYTHONHOME || true
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)

REQ_HASH="$(cat "$REQ" | sha256sum | cut -d' ' -f1)"
if [ -f "$REQ_STAMP" ] && [ "$(cat "$REQ_STAMP")" = "$REQ_HASH" ]; then
  step "2/7 torch==2.13.0: requirements unchanged since last install, skipping"
  step "3/7 requirements.txt: unchanged since last install, skipping"
else
  # ---- 2. torch first ---------------------------------------------------------
  step "2/7 torch==2.13.0 (CPU build; installed alone and first)"
  "${PIP[@]}" install "torch==2.13.0"
  "$VPY" -W ignore - <<'PYEOF'
import torch, sys
v = torch.__version__
print("torch", v, "cuda:", torch.version.cuda)
if not v.startswith("2.13.0"):
    sys.exit(f"unexpected torch version {v}")
PYEOF
  # ---- 3. requirements --------------------------------------------------------
  step "3/7 pinned requirements ($REQ)"
  "${PIP[@]}" install -r "$REQ"
  # torch must still be the one installed in step 2.
  "$VPY" -W ignore -c 'import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith("2.13.0") else "torch changed to %s" % v)'
  echo "$REQ_HASH" > "$REQ_STAMP"
fi

# ---- 4. CMake path fix --------------------------------------------------------
step "4/7 fixing build-host paths in the ROS wheels' CMake files"
"$VPY" "$ROOT/scripts/fix_cmake_paths.py" "$VENV"

# ---- 5. ROS 2 tools ---------------------------------------------------------------
install_ros2_tools() {
  local hash
  case "$TOOLS_FROM" in
    system)
      echo "using the ROS 2 tools of $SYSTEM_ROS (source its setup.bash before env.sh)"
      return 0 ;;
    none)
      echo "setup.sh: WARNING: no ROS 2 install and no $TOOLS_DIR/wheels: no \`ros2\` command," \
        "no launch (ros2 launch, launch_pytest tests); edge_vlm_run still starts the graph" >&2
      return 0 ;;
  esac
  hash="$(cat "$TOOLS_DIR"/wheels/*.whl | sha256sum | cut -d' ' -f1)"
  if [ -f "$TOOLS_STAMP" ] && [ "$(cat "$TOOLS_STAMP")" = "$hash" ] \
     && "$VPY" -c 'import launch, ros2cli' 2>/dev/null; then
    echo "ROS 2 tool wheels of $TOOLS_DIR already installed"
    return 0
  fi
  # --no-deps: the wheels' own names (launch, ...) must never be resolved on PyPI, where
  # `launch` is an unrelated program; a stray one is replaced by the wheel of the same name.
  "${PIP[@]}" install -q --no-deps --force-reinstall "$TOOLS_DIR"/wheels/*.whl
  # (launch_ros itself imports composition_interfaces: checked after step 7)
  "$VPY" -c 'from launch import LaunchDescription; import ros2cli, launch_pytest' \
    || die "the ROS 2 tool wheels of $TOOLS_DIR do not import"
  echo "$hash" > "$TOOLS_STAMP"
  echo "installed the ROS 2 tool wheels of $TOOLS_DIR (composition_interfaces: step 7)"
}
step "5/7 ROS 2 tools ($TOOLS_FROM)"
install_ros2_tools

# ---- 6. core library, editable --------------------------------------------------
step "6/7 pip install -e ros2_ws/src/edge_vlm (edge-vlm console script)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$WS/src/edge_vlm"
[ -x "$VENV/bin/edge-vlm" ] || die "edge-vlm console script missing from $VENV/bin"

# ---- 7. colcon build ------------------------------------------------------------
step "7/7 colcon build --symlink-install in ros2_ws ($(list_packages | tr '\n' ' '))"
prune_stale
# Build against the venv only (an already sourced workspace must not leak in).
echo "(colcon's warning that $VENV has no 'local_setup.*' files is expected: the ROS wheels live there)"
(
  cd "$WS"
  unset COLCON_PREFIX_PATH PYTHONPATH AMENT_CURRENT_PREFIX || true
  export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
  # shellcheck disable=SC2086
  colcon build --symlink-install --base-paths src "${PKG_DIRS[@]:1}" ${COLCON_EXTRA_ARGS:-} \
    --event-handlers desktop_notification- \
    --cmake-args -DBUILD_TESTING=OFF "-DPython3_EXECUTABLE=$VPY"
)
workspace_complete || die "colcon finished but ros2_ws/install lacks a package (see output above)"
if [ "$TOOLS_FROM" = shared ]; then
  # launch_ros imports composition_interfaces, built just now into ros2_ws/install
  (
    set +u
    # shellcheck disable=SC1091
    . "$WS/install/local_setup.bash"
    "$VPY" -c 'from launch_ros.actions import Node'
  ) || die "launch_ros does not import with ros2_ws/install (composition_interfaces)"
fi

echo "$HASH" > "$STAMP"
step "done in $((SECONDS - T0)) s. Use it with:  source env.sh"
