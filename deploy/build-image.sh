#!/usr/bin/env bash
# Builds the portico image (default tag portico:latest) FROM scratch, out of
# a statically linked release binary. No registry is used: nothing is pulled.
#   deploy/build-image.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-portico:latest}
target=x86_64-unknown-linux-gnu
# glibc, linked statically: the image has no libc to load. (Portico resolves
# no host names at run time: upstreams and Docker endpoints are addresses.)
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" -p portico
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "target/$target/release/portico" "$ctx/portico"
cp deploy/Dockerfile "$ctx/Dockerfile"
docker build -t "$tag" "$ctx"
echo "built $tag: $(docker run --rm "$tag" --version)"
