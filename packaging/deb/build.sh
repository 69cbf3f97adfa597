#!/usr/bin/env bash
# Builds the Debian package of mntreap for Docker hosts with dpkg-deb:
#   packaging/deb/build.sh [OUT_DIR]      prints the path of the .deb
#
#   /usr/sbin/mntreap                         the static binary (docker-plugin/build.sh --binary)
#   /lib/systemd/system/mntreap-agent.service the node agent, installed but not enabled
#   /etc/default/mntreap                      its options (a conffile)
#   /usr/share/man/man1/mntreap*.1.gz         man pages    } generated from the clap
#   bash, zsh and fish completions            completions  } definitions (examples/gen-docs.rs)
#
# The managed Docker plugin is built apart: docker-plugin/build.sh (docs/docker-plugin.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/target/deb}
mkdir -p "$out"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -1)
# docker-plugin/build.sh builds for x86_64 (a static musl-free glibc target): amd64 only.
arch=amd64
if [ "$(uname -m)" != x86_64 ]; then
    echo "packaging/deb/build.sh: the static binary is built for x86_64, this is $(uname -m)" >&2
    exit 1
fi
bin=$(bash "$repo/docker-plugin/build.sh" --binary)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
generated="$stage/generated"
(cd "$repo" && cargo run --quiet --locked --example gen-docs -- "$generated") >&2

root="$stage/root"
install -D -m 0755 "$bin" "$root/usr/sbin/mntreap"
# Line tables are for developers' backtraces; the package keeps the symbols only.
strip --strip-debug "$root/usr/sbin/mntreap"
install -D -m 0644 "$here/mntreap-agent.service" "$root/lib/systemd/system/mntreap-agent.service"
install -D -m 0644 "$here/default" "$root/etc/default/mntreap"
install -d "$root/usr/share/man/man1"
for page in "$generated"/man/*.1; do
    gzip -9n -c "$page" > "$root/usr/share/man/man1/$(basename "$page").gz"
done
install -D -m 0644 "$generated/completions/mntreap.bash" "$root/usr/share/bash-completion/completions/mntreap"
install -D -m 0644 "$generated/completions/_mntreap" "$root/usr/share/zsh/vendor-completions/_mntreap"
install -D -m 0644 "$generated/completions/mntreap.fish" "$root/usr/share/fish/vendor_completions.d/mntreap.fish"
install -D -m 0644 "$repo/README.md" "$root/usr/share/doc/mntreap/README.md"
cp -r "$repo/docs" "$root/usr/share/doc/mntreap/docs"

install -d "$root/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done
echo /etc/default/mntreap > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: mntreap
Version: $version
Architecture: $arch
Maintainer: mntreap maintainers <maintainers@users.noreply.r-seed-e76461a5.example>
Installed-Size: $size
Section: admin
Priority: optional
Recommends: docker.io | docker-ce | containerd | containerd.io
Description: release container mounts leaked into other mount namespaces
 mntreap finds every mount namespace that holds a container's mounts (overlay2
 layers, shm, containerd task roots, kubelet's pod volumes) and unmounts the
 copies there, so that container removal no longer fails with "device or
 resource busy". The package brings the command line (scan, release, reap,
 doctor, why) and the node agent's unit, installed but not enabled.
CONTROL
deb="$out/mntreap_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
echo "$deb"
