#!/usr/bin/env bash
# STAND-IN, for machines that cannot pull images: builds an image from Debian bookworm's `haproxy`
# package (2.6, not the 3.2 that docker-compose.haproxy.yml pins) and tags it with the pinned name,
# so that the override runs on a Docker engine without a registry. Not for production: pull the
# official image there. Usage: test/support/haproxy-standin.sh   (needs root, debootstrap, docker)
set -euo pipefail
tag=${HAPROXY_IMAGE:-haproxy:3.2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if docker image inspect "$tag" >/dev/null 2>&1 && [ "$(docker image inspect -f '{{index .Config.Labels "backupmx.standin"}}' "$tag")" = "debian-haproxy" ]; then
  echo "standin: $tag is already the Debian stand-in"; exit 0
fi
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v security | head -n 1)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null)
echo "standin: debootstrap bookworm with haproxy from $mirror" >&2
debootstrap --variant=minbase --include=haproxy bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
tar -C "$work/rootfs" -c . | docker import - backupmx-standin-haproxy-root:bookworm >/dev/null
printf 'FROM backupmx-standin-haproxy-root:bookworm\nLABEL backupmx.standin=debian-haproxy\nRUN mkdir -p /usr/local/etc/haproxy\nUSER haproxy\nCMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]\n' > "$work/Dockerfile"
docker build -q -t "$tag" "$work" >/dev/null
echo "standin: $tag is Debian's haproxy $(docker run --rm "$tag" haproxy -v | sed -n 's/^HAProxy version \([^ ]*\).*/\1/p') (a stand-in, labelled backupmx.standin=debian-haproxy)" >&2
