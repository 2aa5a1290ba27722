#!/usr/bin/env bash
# Build the infaas images on this host from nothing: `docker/images.sh [api] [worker] [gpu-worker]` (default: all).
#
# Every step is skipped when its result is already there, so a second run only rebuilds changed layers:
#   1. a Docker engine: `apt-get install docker.io` when `dockerd` is missing, and `dockerd` started in the
#      background when nothing answers on its socket (CI machines run as root without systemd);
#   2. the base image: when INFAAS_BASE_IMAGE is unset or not present and cannot be pulled (no registry
#      reachable), a Debian bookworm made by `debootstrap --variant=minbase` with Python 3.11 and imported as
#      infaas-base:bookworm (about 1.5 min and 300 MB, once);
#   3. wheels: all the project's dependencies built on the host (`pip wheel`) into .cache/wheels/<extra>-py<V>,
#      once per pyproject.toml, and the project's own wheel every time; images install from them with
#      `pip --no-index`, so no image build and no container start needs a package registry (the air-gapped
#      build: run this where PyPI is reachable once, then copy .cache/wheels across);
#   4. `docker build` of each image with BASE_IMAGE set, tagged infaas-<name>:${INFAAS_IMAGE_TAG:-local}.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${INFAAS_IMAGE_CACHE:-$ROOT/.cache}"
TAG="${INFAAS_IMAGE_TAG:-local}"
LOCAL_BASE="infaas-base:bookworm"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3
IMAGES=("$@")
[[ ${#IMAGES[@]} -gt 0 ]] || IMAGES=(api worker gpu-worker)

# pip, without the noise of this host's pip.conf (missing local index folders) and of the resolver's progress.
pip_quiet() { "$PYTHON" -m pip "$@" 2> >(grep -v -e '^WARNING: Location' -e '^INFO: pip is looking' >&2); }

log() { printf '[images %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    }
}

ensure_engine() {
    command -v dockerd >/dev/null || { log "installing docker.io"; apt_install docker.io; }
    command -v docker >/dev/null || apt_install docker.io
    command -v docker-compose >/dev/null || { log "installing docker-compose"; apt_install docker-compose; }
    docker info >/dev/null 2>&1 && return 0
    log "starting dockerd (log: /var/log/infaas-dockerd.log)"
    setsid nohup dockerd >>/var/log/infaas-dockerd.log 2>&1 </dev/null &
    local pid=$!
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || break  # it exited: no point waiting
        sleep 1
    done
    echo "docker/images.sh: the Docker engine did not start; last lines of /var/log/infaas-dockerd.log:" >&2
    tail -n 20 /var/log/infaas-dockerd.log >&2 || true
    exit 1
}

base_image() {
    # The public image when it is here or can be pulled; the local Debian base otherwise.
    local wanted="${INFAAS_BASE_IMAGE:-}"
    if [[ -n "$wanted" ]]; then
        docker image inspect "$wanted" >/dev/null 2>&1 || docker pull -q "$wanted" >/dev/null
        echo "$wanted"
        return
    fi
    if ! docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
        command -v debootstrap >/dev/null || { log "installing debootstrap"; apt_install debootstrap; }
        local dir="$CACHE/rootfs-bookworm"
        rm -rf "$dir"
        mkdir -p "$dir"
        log "debootstrap Debian bookworm with Python 3.11 (once, ~1.5 min)"
        # python3-venv brings pip's wheel for ensurepip: the images' virtual environments need no python3-pip.
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$dir" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
        rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
        tar -C "$dir" -c . | docker import -c 'ENV LANG=C.UTF-8' - "$LOCAL_BASE" >/dev/null
        rm -rf "$dir"
    fi
    echo "$LOCAL_BASE"
}

wheels() {
    # The build context: wheels/ (every dependency of .[extra], for the image's Python; built once per
    # pyproject.toml into .cache/wheels/<extra>-py<X.Y.Z>), project/ (this checkout's infaas wheel, built every
    # time: seconds) and the migrations. Images install the dependencies in one layer and the project in
    # another, so a code change rebuilds only the small one. The full Python version matters: dependencies
    # carry markers on it (redis needs async-timeout below 3.11.3; Debian bookworm has 3.11.2).
    local extra="$1" pyver="$2" base="$3" dir stamp context="$CACHE/context-$extra"
    dir="$CACHE/wheels/$extra-py$pyver"
    stamp="$dir/.pyproject-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
    CONTEXT="$context"
    [[ -n "${PREPARED[$context]:-}" ]] && return  # api and worker share one per run
    rm -rf "$context" && mkdir -p "$context/project"
    # A fixed timestamp makes the wheel's bytes depend on the sources only: unchanged code, cached layer. No build
    # isolation: the virtual environment's setuptools builds it, so this step needs no index (air-gapped hosts).
    SOURCE_DATE_EPOCH=315532800 pip_quiet wheel -q --no-deps --no-build-isolation --wheel-dir "$context/project" "$ROOT"
    if [[ ! -e "$stamp" ]]; then
        log "building wheels for .[$extra] (Python $pyver) into $dir"
        rm -rf "$dir" && mkdir -p "$dir"
        local host project
        project="$(ls "$context"/project/infaas-*.whl)"
        host="$("$PYTHON" -c 'import platform; print(platform.python_version())')"
        if [[ "$host" == "$pyver" ]]; then
            pip_quiet wheel -q --wheel-dir "$dir" "$project[$extra]"
        else  # another interpreter in the image: binary wheels for it
            pip_quiet download -q --dest "$dir" --only-binary=:all: --python-version "$pyver" \
                --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
                "$project[$extra]"
        fi
        rm -f "$dir"/infaas-*.whl
        # pip evaluates environment markers on the host's interpreter, not the target's: add what the image's
        # own pip finds missing (`pip install --dry-run` against these wheels, in the base image) until none is.
        local missing
        for _ in 1 2 3 4 5; do
            missing="$(docker run --rm -v "$dir:/wheels:ro" -v "$context/project:/project:ro" --entrypoint sh \
                "$base" -c "python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --dry-run --no-index \
                --find-links /wheels --find-links /project 'infaas[$extra]' 2>&1" \
                | sed -n 's/.*No matching distribution found for \([^;]*\).*/\1/p' | head -n 1)" || true
            [[ -z "$missing" ]] && break
            log "adding $missing (a dependency only for Python $pyver)"
            pip_quiet download -q --no-deps --dest "$dir" --only-binary=:all: --python-version "$pyver" \
                --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 "$missing"
        done
        touch "$stamp"
    fi
    cp -al "$dir" "$context/wheels" 2>/dev/null || cp -a "$dir" "$context/wheels"
    cp -a "$ROOT/migrations" "$context/migrations"
    PREPARED[$context]=1
}

build() {
    local name="$1" extra="$2" base="$3" pyver context
    pyver="$(docker run --rm --entrypoint python3 "$base" -c 'import platform; print(platform.python_version())')"
    wheels "$extra" "$pyver" "$base"
    context="$CONTEXT"
    log "docker build infaas-$name:$TAG (base $base)"
    local old
    old="$(docker image inspect -f '{{.Id}}' "infaas-$name:$TAG" 2>/dev/null || true)"
    docker build -q --build-arg "BASE_IMAGE=$base" -f "$ROOT/docker/Dockerfile.$name" -t "infaas-$name:$TAG" \
        "$context" >/dev/null
    # The image this build replaced, unless a container still uses it (the build stages stay: they are the cache).
    if [[ -n "$old" && "$old" != "$(docker image inspect -f '{{.Id}}' "infaas-$name:$TAG")" ]]; then
        docker rmi "$old" >/dev/null 2>&1 || true
    fi
    log "infaas-$name:$TAG $(docker image inspect -f '{{.Size}}' "infaas-$name:$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
}

declare -A PREPARED=()
CONTEXT=""
mkdir -p "$CACHE"
ensure_engine
BASE="$(base_image)"
# PostgreSQL and Redis (apt-get in a container: mostly waiting on the mirror) build beside the infaas images.
service_build() {
    docker build -q --build-arg "BASE_IMAGE=$BASE" -f "$ROOT/docker/Dockerfile.$1" -t "infaas-$1:$TAG" \
        "$ROOT/docker" >/dev/null
    log "infaas-$1:$TAG $(docker image inspect -f '{{.Size}}' "infaas-$1:$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
}
BACKGROUND=()
for image in "${IMAGES[@]}"; do
    case "$image" in
        base) log "base image $BASE" ;;
        api | worker) build "$image" cpu "$BASE" ;;
        gpu-worker) build gpu-worker gpu "${INFAAS_GPU_BASE_IMAGE:-$BASE}" ;;
        postgres | redis)  # only for a host without a registry: compose uses the public images by default
            service_build "$image" &
            BACKGROUND+=($!) ;;
        *) echo "docker/images.sh: unknown image $image (base, api, worker, gpu-worker, postgres, redis)" >&2; exit 2 ;;
    esac
done
for pid in "${BACKGROUND[@]}"; do
    wait "$pid" || { echo "docker/images.sh: building the PostgreSQL or Redis image failed" >&2; exit 1; }
done
