# shellcheck shell=bash
# Find the speedrun checkout an app works in.
#
# Why: campaigns write results/ next to harness/ and tracks/, and contributors edit tracks in their
# clone, so the apps run the harness of the checkout they are started in (the pinned Python
# environment supplies everything else). Only verification may fall back to the flake's own
# read-only sources, so that `nix run <flake>#verify-record -- PATH` works from any folder.

# Print the checkout root: $SPEEDRUN_ROOT, else the nearest folder at or above $PWD holding
# harness/__init__.py and tracks/, else $1 (a fallback folder) when given; otherwise fail with one line.
speedrun_checkout_root() {
  local fallback="${1:-}"
  if [[ -n "${SPEEDRUN_ROOT:-}" ]]; then
    if [[ ! -f "$SPEEDRUN_ROOT/harness/__init__.py" ]]; then
      echo "error: SPEEDRUN_ROOT=$SPEEDRUN_ROOT is not a speedrun checkout (no harness/__init__.py)" >&2
      return 1
    fi
    echo "$SPEEDRUN_ROOT"
    return 0
  fi
  local dir="$PWD"
  while true; do
    if [[ -f "$dir/harness/__init__.py" && -d "$dir/tracks" ]]; then
      echo "$dir"
      return 0
    fi
    if [[ "$dir" == / ]]; then
      break
    fi
    dir="$(dirname -- "$dir")"
  done
  if [[ -n "$fallback" ]]; then
    echo "$fallback"
    return 0
  fi
  echo "error: run this inside a checkout of the speedrun repository (the folder with harness/ and" \
    "tracks/; results are written there), or set SPEEDRUN_ROOT to one" >&2
  return 1
}
