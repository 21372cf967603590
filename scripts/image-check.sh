#!/usr/bin/env bash
# Build the container image from the project's Dockerfile and start the service in
# it, on a machine with no Docker engine (buildah + podman + debootstrap, as root;
# see ../shared/container-builds.md). Checks: hadolint is clean; the image builds;
# it runs as a non-root user with a HEALTHCHECK; the service inside answers
# /healthz and /readyz against a real PostgreSQL; the HEALTHCHECK command passes
# inside the container; SIGTERM stops it with exit 0.
#
# The Debian base image is made once with debootstrap and cached in the machine's
# image store (later runs reuse it). Env: IMAGE_CHECK_DATABASE (a PostgreSQL server
# URL on which a throwaway database is created; default the local server),
# BASE_IMAGE (default localhost/debian-python:bookworm), DEBIAN_MIRROR.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE="${BASE_IMAGE:-localhost/debian-python:bookworm}"
IMAGE="localhost/storefront:check"
SERVER_URL="${IMAGE_CHECK_DATABASE:-postgresql://postgres@127.0.0.1:5432/postgres}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PY="${VENV:-.venv}/bin/python"
[ -x "$PY" ] || PY=python3

step() { printf '\n== %s\n' "$*"; }

for tool in buildah podman debootstrap; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install buildah podman debootstrap)"; exit 2; }
done

step "hadolint"
hadolint="$(command -v hadolint || echo "${VENV:-.venv}/bin/hadolint")"
"$hadolint" Dockerfile
echo "hadolint: clean"

if ! podman image exists "$BASE_IMAGE"; then
    step "base image $BASE_IMAGE (debootstrap, once)"
    rootfs="$(mktemp -d)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$MIRROR" >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
fi
echo "base image: $BASE_IMAGE"

step "build"
started=$(date +%s)
buildah bud --quiet --format docker --isolation chroot --network host \
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE" . >/dev/null
echo "built $IMAGE in $(( $(date +%s) - started )) s; size $(podman image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"

step "image configuration"
user="$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")"
entrypoint="$(buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}' "$IMAGE")"
healthcheck="$(buildah inspect --type image --format '{{.Docker.Config.Healthcheck}}' "$IMAGE")"
echo "user=$user entrypoint=$entrypoint"
echo "healthcheck=$healthcheck"
[ -n "$user" ] && [ "${user%%:*}" != "0" ] && [ "$user" != "root" ] || { echo "the image must run as a non-root user"; exit 1; }
case "$healthcheck" in *healthz*) ;; *) echo "the image has no HEALTHCHECK"; exit 1 ;; esac

step "run"
db="image_check_$$"
admin_url="$SERVER_URL"
"$PY" scripts/pgdb.py create "$admin_url" "$db"
database_url="${SERVER_URL%/*}/$db"
port="$("$PY" -m server.runtime.ports)"
ctr="$(buildah from "$IMAGE")"
cleanup() {
    [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
    buildah rm "$ctr" >/dev/null 2>&1 || true
    "$PY" scripts/pgdb.py drop "$admin_url" "$db" || true
}
trap cleanup EXIT
log="$(mktemp)"
# The configured entry point and command (`python3 -m server serve`), as the image's user.
buildah run --isolation chroot --network host \
    --env DATABASE_URL="$database_url" --env PORT="$port" --env HOST=127.0.0.1 --env WORKERS=1 \
    --env JWT_SECRET="image-check-secret-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
    "$ctr" -- python3 -m server serve >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 150); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "the service exited"; exit 1; }
    sleep 0.2
done
echo "GET /healthz -> $(curl -fsS "http://127.0.0.1:$port/healthz")"
echo "GET /readyz  -> $(curl -fsS "http://127.0.0.1:$port/readyz")"
echo "POST /api/users/register -> $(curl -sS -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    -d '{"email":"image@example.com","password":"password-123","name":"Image"}' "http://127.0.0.1:$port/api/users/register")"
whoami_inside="$(buildah run --isolation chroot --network host "$ctr" -- id -u)"
echo "runs as uid $whoami_inside"
[ "$whoami_inside" != "0" ] || { echo "runs as root"; exit 1; }
buildah run --isolation chroot --network host --env PORT="$port" "$ctr" -- \
    python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"
echo "HEALTHCHECK command: passes inside the container"
# SIGTERM to the service itself (buildah would SIGKILL it if signalled).
server_pid="$(pgrep -n -f "^/opt/venv/bin/python3 -m server serve")"
kill -TERM "$server_pid"
wait "$pid" && code=0 || code=$?
pid=""
echo "SIGTERM -> exit $code"
[ "$code" = 0 ] || { cat "$log"; exit 1; }
step "image check passed"
