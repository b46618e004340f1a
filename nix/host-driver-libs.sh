# shellcheck shell=bash
# Expose the host's NVIDIA driver libraries (and only those) to a Nix-built program.
#
# Why: nixpkgs' CUDA torch, Triton and nvidia-ml-py look for libcuda.so.1 / libnvidia-ml.so.1 under
# /run/opengl-driver/lib, which exists only on NixOS. On any other Linux (most rented GPU nodes) the
# driver lives in a host folder such as /usr/lib/x86_64-linux-gnu next to the host's own glibc, so
# putting that folder on LD_LIBRARY_PATH would also pull the host glibc into Nix programs and break them.
# Instead we link only the driver's libraries into a private folder and put that folder first on
# LD_LIBRARY_PATH. Triton links its launcher stubs with `-lcuda`, so the folder also gets an unversioned
# libcuda.so and TRITON_LIBCUDA_PATH points at it.
#
# Use: source this file, then `speedrun_expose_host_driver required` (GPU apps: no driver is an error)
# or `speedrun_expose_host_driver optional` (CPU apps, dev shell: no driver is fine).
#
# Knobs (all optional; the tests use them to stand in a fake host):
#   SPEEDRUN_HOST_DRIVER_DIR  the folder holding libcuda.so.1; skips the search
#   SPEEDRUN_HOST_ROOT        prefix for every host path looked at (/etc/NIXOS, the usual folders)
#   SPEEDRUN_LDCONFIG         the ldconfig to ask (`none` to skip asking ldconfig)
#   SPEEDRUN_DRIVER_LINKS     where the private folders of links are kept

# Folders where distributions and container runtimes put the driver's user-space libraries.
SPEEDRUN_USUAL_DRIVER_DIRS=(
  /usr/lib/x86_64-linux-gnu
  /usr/lib/aarch64-linux-gnu
  /usr/lib64
  /usr/lib/nvidia
  /usr/lib64/nvidia
  /usr/local/nvidia/lib64
  /usr/local/nvidia/lib
  /usr/lib/wsl/lib
  /usr/lib
)

speedrun_is_nixos() {
  local root="${SPEEDRUN_HOST_ROOT:-}"
  [[ -e "$root/etc/NIXOS" ]]
}

# The ldconfig architecture tag of this machine's libraries, as `ldconfig -p` prints it.
speedrun_ldconfig_arch() {
  case "$(uname -m)" in
    x86_64) echo "x86-64" ;;
    aarch64) echo "AArch64" ;;
    *) echo "" ;;
  esac
}

# Print the folder of libcuda.so.1 according to the linker cache, or nothing.
speedrun_driver_dir_from_ldconfig() {
  local ldconfig="${SPEEDRUN_LDCONFIG:-}"
  if [[ "$ldconfig" == none ]]; then
    return 0
  fi
  if [[ -z "$ldconfig" ]]; then
    # The host's own ldconfig reads the host's cache; prefer it over any ldconfig on PATH.
    local candidate
    for candidate in /sbin/ldconfig /usr/sbin/ldconfig /usr/bin/ldconfig; do
      if [[ -x "$candidate" ]]; then
        ldconfig="$candidate"
        break
      fi
    done
  fi
  if [[ -z "$ldconfig" ]]; then
    ldconfig="$(command -v ldconfig || true)"
  fi
  if [[ -z "$ldconfig" ]]; then
    return 0
  fi
  local arch line name tag path
  arch="$(speedrun_ldconfig_arch)"
  # Lines look like "	libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1";
  # the tag in parentheses may hold spaces ("(libc6,x86-64, OS ABI: Linux 3.2.0)").
  while read -r line; do
    if [[ "$line" != *" => "* ]]; then
      continue
    fi
    path="${line##* => }"
    tag="${line%% => *}"
    name="${tag%% *}"
    if [[ "$name" != libcuda.so.1 || -z "$path" ]]; then
      continue
    fi
    if [[ -n "$arch" && "$tag" != *"$arch"* ]]; then
      continue  # e.g. a 32-bit libcuda next to the 64-bit one
    fi
    if [[ -e "$path" ]]; then
      dirname -- "$path"
      return 0
    fi
  done < <("$ldconfig" -p 2>/dev/null || true)
}

# Print the folder holding the host's libcuda.so.1, or nothing when there is none.
speedrun_find_driver_dir() {
  if [[ -n "${SPEEDRUN_HOST_DRIVER_DIR:-}" ]]; then
    echo "$SPEEDRUN_HOST_DRIVER_DIR"
    return 0
  fi
  local dir
  dir="$(speedrun_driver_dir_from_ldconfig)"
  if [[ -n "$dir" ]]; then
    echo "$dir"
    return 0
  fi
  local root="${SPEEDRUN_HOST_ROOT:-}"
  for dir in "${SPEEDRUN_USUAL_DRIVER_DIRS[@]}"; do
    if [[ -e "$root$dir/libcuda.so.1" ]]; then
      echo "$root$dir"
      return 0
    fi
  done
}

# Print the private folder of links to the driver libraries found in $1, creating it if needed.
# The folder's name is a hash of what it holds, so concurrent runs share it and a driver update
# (different files) gets a new folder instead of half-updated links.
speedrun_driver_links_dir() {
  local driver_dir="$1"
  local base="${SPEEDRUN_DRIVER_LINKS:-${XDG_RUNTIME_DIR:-${TMPDIR:-/tmp}}/speedrun-host-driver-$(id -u)}"
  local -a libs=()
  local lib
  shopt -s nullglob
  # libcuda, libcudadebugger, libnvidia-ml, libnvidia-ptxjitcompiler, libnvidia-nvvm, ... and the
  # video decoder: the driver's own user-space libraries, nothing of the host's system libraries.
  for lib in "$driver_dir"/libcuda.so* "$driver_dir"/libcudadebugger.so* \
    "$driver_dir"/libnvidia-*.so* "$driver_dir"/libnvcuvid.so*; do
    libs+=("$lib")
  done
  shopt -u nullglob
  local listing="" target
  for lib in "${libs[@]}"; do
    target="$(readlink -f -- "$lib")"
    listing+="$(basename -- "$lib") $target"$'\n'
  done
  local key
  key="$(printf '%s' "$driver_dir"$'\n'"$listing" | sha256sum | cut -c1-16)"
  local final="$base/$key"
  if [[ -d "$final" ]]; then
    echo "$final"
    return 0
  fi
  local tmp
  # callers run this in $(...) or under `|| exit`, where set -e does not act: stop here ourselves
  if ! mkdir -p -- "$base" 2>/dev/null || ! tmp="$(mktemp -d "$base/.new.XXXXXX" 2>/dev/null)"; then
    echo "error: cannot create the driver links folder under $base (set SPEEDRUN_DRIVER_LINKS to a writable folder)" >&2
    return 1
  fi
  for lib in "${libs[@]}"; do
    ln -s -- "$lib" "$tmp/$(basename -- "$lib")"
  done
  # Triton links with -lcuda and some tools open libnvidia-ml.so: make sure the unversioned names exist.
  if [[ ! -e "$tmp/libcuda.so" ]]; then
    ln -s -- "$driver_dir/libcuda.so.1" "$tmp/libcuda.so"
  fi
  if [[ ! -e "$tmp/libnvidia-ml.so" && -e "$driver_dir/libnvidia-ml.so.1" ]]; then
    ln -s -- "$driver_dir/libnvidia-ml.so.1" "$tmp/libnvidia-ml.so"
  fi
  # Publish atomically; if another run published the same folder first, use theirs.
  if ! mv -T -- "$tmp" "$final" 2>/dev/null; then
    rm -rf -- "$tmp"
  fi
  echo "$final"
}

# Set LD_LIBRARY_PATH and TRITON_LIBCUDA_PATH so that Nix programs find the host driver.
# $1: `required` (return 1 with a one-line error when no driver is found) or `optional`.
speedrun_expose_host_driver() {
  local mode="${1:-required}"
  if speedrun_is_nixos; then
    # NixOS: the driver is in /run/opengl-driver/lib, where nixpkgs looks already.
    return 0
  fi
  local driver_dir
  driver_dir="$(speedrun_find_driver_dir)"
  if [[ -z "$driver_dir" || ! -e "$driver_dir/libcuda.so.1" ]]; then
    if [[ "$mode" == required ]]; then
      if [[ -n "${SPEEDRUN_HOST_DRIVER_DIR:-}" ]]; then
        echo "error: SPEEDRUN_HOST_DRIVER_DIR=$SPEEDRUN_HOST_DRIVER_DIR has no libcuda.so.1" >&2
      else
        echo "error: no NVIDIA driver found on this host (no libcuda.so.1 in \`ldconfig -p\` or in" \
          "${SPEEDRUN_USUAL_DRIVER_DIRS[*]}); install the NVIDIA datacenter driver," \
          "or set SPEEDRUN_HOST_DRIVER_DIR to the folder that holds libcuda.so.1" >&2
      fi
      return 1
    fi
    return 0
  fi
  local links
  links="$(speedrun_driver_links_dir "$driver_dir")" || return 1
  export LD_LIBRARY_PATH="$links${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export TRITON_LIBCUDA_PATH="$links"
  return 0
}
