#!/usr/bin/env bash
# Builds mntreap as a static binary, lays out the plugin (config.json + rootfs/) and runs
# `docker plugin create NAME` against the daemon in DOCKER_HOST.
#   docker-plugin/build.sh NAME        build and create the plugin NAME
#   docker-plugin/build.sh --binary    only build; print the static binary's path
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
target=x86_64-unknown-linux-gnu
# A target directory of its own: the static build must not wait on (or invalidate) the
# normal one, e.g. when a test runs this script under `cargo test`.
target_dir="$top/target/plugin"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --quiet --target "$target" --target-dir "$target_dir" \
  --manifest-path "$top/Cargo.toml" --bin mntreap
bin="$target_dir/$target/release/mntreap"
if [ "${1:-}" = "--binary" ]; then
  echo "$bin"
  exit 0
fi
name=${1:?usage: docker-plugin/build.sh NAME | --binary}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/run/docker/plugins" "$work/rootfs/proc" "$work/rootfs/tmp"
cp "$bin" "$work/rootfs/mntreap"
strip "$work/rootfs/mntreap" 2>/dev/null || true
cp "$here/config.json" "$work/config.json"
# Two plugins with byte-identical rootfs collide in the daemon's content store.
echo "$name" > "$work/rootfs/.plugin-name"
docker plugin create "$name" "$work"
