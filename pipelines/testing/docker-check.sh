#!/usr/bin/env bash
# Build the project's Dockerfile and run the image the way docs/workflow.md shows (`make docker-check`):
#
#   1. base image: $BASE_IMAGE, or (default) a Debian bookworm made here with `debootstrap --variant=minbase`
#      and imported as ghanet-base:bookworm (for machines that reach no container registry);
#   2. build: `build --build-arg CUDA_IMAGE=<base>`; pip inside the build uses this machine's pip indexes
#      (local file indexes are served on 127.0.0.1 for the build) and CA bundle, both given as build
#      secrets: mounted for the pip step only, never stored in the image;
#   3. run: `ghanet doctor`; then `segment` + `extract-features --weights random` on SLIDE mounted
#      read-only, as a non-root user, outputs on a mounted folder owned by that user;
#   4. the same two commands outside the container with this checkout's ghanet; the two bags must hold
#      equal datasets (coords and features, bit for bit) and the files made in the container must belong
#      to the calling user.
#
# Environment: SLIDE (required: a slide file, e.g. OpenSlide's CMU-1-Small-Region.svs), ENGINE (podman |
# docker; default podman when installed), BASE_IMAGE, IMAGE (default ghanet:check), WORK (default
# /var/tmp/ghanet-docker-check: base rootfs, podman storage, outputs), GHANET (host ghanet, default
# .venv/bin/ghanet), RUN_UID/RUN_GID (user in the container; default the caller, 1000 when that is root),
# THREADS (torch threads, default 2, same inside and outside).
# Root is needed for debootstrap and for podman without a rootless setup. Prints times and the image size.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

SLIDE=${SLIDE:-}
IMAGE=${IMAGE:-ghanet:check}
WORK=${WORK:-/var/tmp/ghanet-docker-check}
GHANET=${GHANET:-$REPO/.venv/bin/ghanet}
THREADS=${THREADS:-2}
RUN_UID=${RUN_UID:-$(id -u)}
RUN_GID=${RUN_GID:-$(id -g)}
if [ "$RUN_UID" = 0 ]; then RUN_UID=1000 RUN_GID=1000; fi   # the check is about a non-root user

die() { echo "docker-check: $*" >&2; exit 1; }
t0=$(date +%s)
step() { echo "== [$(($(date +%s) - t0)) s] $*"; }
[ -n "$SLIDE" ] || die "set SLIDE=/path/to/a/slide.svs (any OpenSlide slide; e.g. OpenSlide's CMU-1-Small-Region.svs)"
[ -f "$SLIDE" ] || die "no slide at $SLIDE"
SLIDE=$(cd "$(dirname "$SLIDE")" && pwd)/$(basename "$SLIDE")
[ -x "$GHANET" ] || GHANET=$(command -v ghanet) || die "no host ghanet (make setup, or set GHANET)"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

ENGINE=${ENGINE:-$(command -v podman >/dev/null 2>&1 && echo podman || echo docker)}
command -v "$ENGINE" >/dev/null 2>&1 || die "neither podman nor docker found (apt-get install podman runc)"
if [ "$ENGINE" = podman ]; then
    # runc (crun cannot set the rlimits in some sandboxes), explicit ulimits, storage in WORK; a user's own
    # containers.conf / storage.conf wins when set
    if [ -z "${CONTAINERS_CONF:-}" ]; then
        printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\n' \
            >"$WORK/containers.conf"
        export CONTAINERS_CONF=$WORK/containers.conf
    fi
    if [ -z "${CONTAINERS_STORAGE_CONF:-}" ] && [ "$(id -u)" = 0 ]; then
        printf '[storage]\ndriver = "overlay"\ngraphroot = "%s/storage"\nrunroot = "%s/run"\n' "$WORK" "$WORK" \
            >"$WORK/storage.conf"
        export CONTAINERS_STORAGE_CONF=$WORK/storage.conf
    fi
else
    export DOCKER_BUILDKIT=1   # RUN --mount=type=secret
fi
E() { "$ENGINE" "$@"; }

# ---- 1. base image --------------------------------------------------------------------------------------
if [ -z "${BASE_IMAGE:-}" ]; then
    BASE_IMAGE=ghanet-base:bookworm
    if ! E image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        step "making $BASE_IMAGE with debootstrap (no registry needed)"
        command -v debootstrap >/dev/null 2>&1 || die "debootstrap missing (apt-get install debootstrap)"
        rm -rf "$WORK/rootfs"
        debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
            || die "debootstrap failed, see $WORK/debootstrap.log"
        rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
        tar -C "$WORK/rootfs" -c . | E import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
        rm -rf "$WORK/rootfs"
    fi
fi
step "base image: $BASE_IMAGE"

# ---- 2. build -------------------------------------------------------------------------------------------
# This machine's pip configuration for the build: index-url / extra-index-url / find-links as pip sees
# them; local folders (file:// indexes, find-links dirs) are served read-only on 127.0.0.1 during the build.
SERVE=$WORK/serve
rm -rf "$SERVE" && mkdir -p "$SERVE"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
HOSTPIP=$(dirname "$GHANET")/python
[ -x "$HOSTPIP" ] || HOSTPIP=python3
pipval() {  # the value pip would use for KEY (env var wins over config files)
    local env="PIP_$(echo "$1" | tr 'a-z-' 'A-Z_')"
    if [ -n "${!env:-}" ]; then echo "${!env}"; return; fi
    "$HOSTPIP" -m pip config list 2>/dev/null | sed -n "s/^global\.$1='\(.*\)'$/\1/p" | tail -1
}
local_url() {  # file:///dir or /dir -> http URL served for the build; anything else unchanged
    local p=${1#file://} n
    case "$p" in
        /*) [ -e "$p" ] || return 0
            n=d$(find "$SERVE" -mindepth 1 -maxdepth 1 | wc -l)   # runs in $(...): count, not a variable
            if [ -d "$p" ] && [ "$(basename "$p")" = simple ]; then  # an index: its links point to ../../files
                ln -sn "$(dirname "$p")" "$SERVE/$n"; echo "http://127.0.0.1:$PORT/$n/simple/"
            else
                ln -sn "$p" "$SERVE/$n"; echo "http://127.0.0.1:$PORT/$n/"
            fi ;;
        *) echo "$1" ;;
    esac
}
{
    echo "[global]"
    v=$(pipval index-url); [ -n "$v" ] && echo "index-url = $(local_url "$v")"
    urls=""; for u in $(pipval extra-index-url); do urls="$urls $(local_url "$u")"; done
    [ -n "${urls// /}" ] && echo "extra-index-url =$urls"
    urls=""; for u in $(pipval find-links); do urls="$urls $(local_url "$u")"; done
    [ -n "${urls// /}" ] && echo "find-links =$urls"
    echo "trusted-host = 127.0.0.1"
    echo "timeout = 180"
} >"$WORK/pip.conf"
CA=$(pipval cert); CA=${CA:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
secrets=(--secret "id=pip.conf,src=$WORK/pip.conf")
[ -f "$CA" ] && secrets+=(--secret "id=ca.crt,src=$CA")
echo "pip configuration for the build:"; sed 's/^/    /' "$WORK/pip.conf"
python3 -m http.server --bind 127.0.0.1 --directory "$SERVE" "$PORT" >"$WORK/http.log" 2>&1 &
HTTP_PID=$!
trap 'kill "$HTTP_PID" 2>/dev/null || true' EXIT

step "building $IMAGE from $REPO/Dockerfile"
b0=$(date +%s)
fmt=(); [ "$ENGINE" = podman ] && fmt=(--format docker)   # podman's default OCI format drops HEALTHCHECK
E build "${fmt[@]}" --network host --build-arg "CUDA_IMAGE=$BASE_IMAGE" "${secrets[@]}" -t "$IMAGE" -f Dockerfile . \
    2>&1 | tee "$WORK/build.log" | grep --line-buffered -E '^(STEP|\[|#[0-9]+ \[)' || true
[ "${PIPESTATUS[0]}" = 0 ] || die "build failed, see $WORK/build.log"
build_s=$(($(date +%s) - b0))
kill "$HTTP_PID" 2>/dev/null || true
size=$(E image inspect "$IMAGE" --format '{{.Size}}')
step "built in ${build_s} s; image size $((size / 1000000)) MB"
# nothing of the build secrets in the image
E run --rm --entrypoint sh "$IMAGE" -c '! ls -A /run/secrets 2>/dev/null | grep -q . && ! pip config list | grep -q 127.0.0.1' \
    || die "build secrets (pip.conf, ca.crt) left in the image"

# ---- 3. run ---------------------------------------------------------------------------------------------
step "ghanet doctor (as shown in the Dockerfile header)"
r0=$(date +%s)
E run --rm "$IMAGE" doctor
doctor_s=$(($(date +%s) - r0))

OUT_C=$WORK/out-container OUT_H=$WORK/out-host
rm -rf "$OUT_C" "$OUT_H" && mkdir -p "$OUT_C" "$OUT_H"
chown "$RUN_UID:$RUN_GID" "$OUT_C"
DATA=$(dirname "$SLIDE") NAME=$(basename "$SLIDE")
run_as_user() {
    E run --rm --user "$RUN_UID:$RUN_GID" -v "$DATA":/data:ro -v "$OUT_C":/out "$IMAGE" "$@"
}
step "segment + extract-features in the container as uid $RUN_UID, slide mounted read-only"
r0=$(date +%s)
run_as_user segment "/data/$NAME" --out /out --no-progress
run_as_user extract-features "/data/$NAME" --out /out --weights random --device cpu --threads "$THREADS" --no-progress
container_s=$(($(date +%s) - r0))

step "the same outside the container ($GHANET)"
r0=$(date +%s)
"$GHANET" segment "$SLIDE" --out "$OUT_H" --no-progress
"$GHANET" extract-features "$SLIDE" --out "$OUT_H" --weights random --device cpu --threads "$THREADS" --no-progress
host_s=$(($(date +%s) - r0))

# ---- 4. compare -----------------------------------------------------------------------------------------
bad=$(find "$OUT_C" ! -uid "$RUN_UID" | head -3)
[ -z "$bad" ] || die "files in the output folder not owned by uid $RUN_UID: $bad"
"$(dirname "$GHANET")/python" - "$OUT_C" "$OUT_H" <<'PY'
import sys
from pathlib import Path

import h5py
import numpy as np

c, h = Path(sys.argv[1]), Path(sys.argv[2])
bags_c = sorted(c.glob("features/*/*.h5"))
bags_h = sorted(h.glob("features/*/*.h5"))
assert [b.relative_to(c) for b in bags_c] == [b.relative_to(h) for b in bags_h] and bags_c, (bags_c, bags_h)
for bc, bh in zip(bags_c, bags_h):
    with h5py.File(bc) as fc, h5py.File(bh) as fh:
        assert set(fc) == set(fh), (set(fc), set(fh))
        for k in fc:
            a, b = fc[k][()], fh[k][()]
            assert a.dtype == b.dtype and a.shape == b.shape, (k, a.dtype, b.dtype, a.shape, b.shape)
            if not np.array_equal(a, b):
                diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).max()
                sys.exit(f"docker-check: dataset {k} of {bc.name} differs (max abs diff {diff:.3g})")
        print(f"bag {bc.relative_to(c)}: " + ", ".join(f"{k} {fc[k].shape} {fc[k].dtype}" for k in fc)
              + " -> equal bit for bit inside and outside the container")
PY
step "done"
echo "docker-check: engine $ENGINE, base $BASE_IMAGE, image $IMAGE $((size / 1000000)) MB;" \
     "build ${build_s} s, doctor ${doctor_s} s, container segment+extract ${container_s} s, host ${host_s} s"
