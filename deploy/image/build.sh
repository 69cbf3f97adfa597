#!/usr/bin/env bash
# Builds the agent's container image from the static binary, without a registry or a
# Docker daemon: a `docker save`-format archive (manifest.json, config, one layer holding
# /mntreap), loadable with `docker load -i` and `ctr -n k8s.io images import`.
#   deploy/image/build.sh [OUT.tar] [TAG]     default: target/mntreap-agent.tar, mntreap/agent:<version>
# Reproducible: fixed timestamps and owners, so the same binary gives the same image id.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
bin=$(bash "$top/docker-plugin/build.sh" --binary)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$top/Cargo.toml" | head -n1)
out=${1:-$top/target/mntreap-agent.tar}
tag=${2:-mntreap/agent:$version}
python3 - "$bin" "$out" "$tag" <<'PY'
import hashlib, io, json, sys, tarfile

binary, out, tag = sys.argv[1:4]
EPOCH = 0


def add(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar, name, mode=0o755):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, EPOCH
    tar.addfile(info)


# The one layer: the static binary at /mntreap, and an empty /tmp.
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as t:
    add_dir(t, "tmp", mode=0o1777)
    add(t, "mntreap", open(binary, "rb").read(), mode=0o755)
layer = layer.getvalue()
diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
config = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Entrypoint": ["/mntreap"],
            "Cmd": ["agent"],
            "Labels": {"org.opencontainers.image.title": "mntreap agent"},
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "deploy/image/build.sh"}],
    },
    sort_keys=True,
    separators=(",", ":"),
).encode()
config_name = hashlib.sha256(config).hexdigest() + ".json"
layer_dir = diff_id.split(":")[1]
manifest = json.dumps(
    [{"Config": config_name, "RepoTags": [tag], "Layers": [layer_dir + "/layer.tar"]}]
).encode()
with tarfile.open(out, mode="w", format=tarfile.USTAR_FORMAT) as t:
    add(t, config_name, config)
    add_dir(t, layer_dir)
    add(t, layer_dir + "/layer.tar", layer)
    add(t, "manifest.json", manifest)
print(out)
PY
