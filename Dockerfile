# syntax=docker/dockerfile:1
# octoconn operator image: build a virtualenv from uv.lock in one stage, copy only that into a clean runtime stage.
#   docker build -t octoconn:dev .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# uv comes from PyPI, so the build needs no registry besides the Python base image's and PyPI. Pinned to the
# version the lock file was written with.
RUN pip install --no-cache-dir uv==0.13.9
# UV_SYSTEM_CERTS: trust the build container's CA store, so that a network whose TLS passes through a proxy with
# its own CA works by mounting the host's bundle over it (hack/image.sh does); the bundle never enters the image.
ENV UV_SYSTEM_CERTS=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when the lock file changes, not on every code edit.
# README.md (the package's long description) joins the source below, so that editing it does not rebuild this layer.
COPY pyproject.toml uv.lock ./
# Bytecode is compiled at build time because the root file system is read-only at run time: without it every start
# compiles the kubernetes client again. unchecked-hash keeps it valid whatever mtimes COPY gives the sources.
# kubernetes/aio, an asyncio copy of the client that the operator never imports, stays source only (about 26 MB
# less; it would still import, only more slowly).
RUN uv sync --frozen --no-dev --no-install-project \
 && /app/.venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash -x '/kubernetes/aio/' /app/.venv/lib
COPY README.md ./
COPY operator ./operator
# --no-editable installs octoconn into the virtualenv itself, so the runtime stage needs no source tree.
RUN uv sync --frozen --no-dev --no-editable \
 && /app/.venv/bin/python -m compileall -q --invalidation-mode unchecked-hash /app/.venv/lib/python3.11/site-packages/octoconn

# The SBOM: cyclonedx-py (locked in uv.lock's "sbom" group, installed beside, never into, the operator's virtualenv)
# reads the installed distributions of /app/.venv itself, so it lists what the image really holds.
FROM build AS sbom
RUN uv export --frozen --only-group sbom --no-emit-project -o /tmp/sbom-requirements.txt \
 && uv venv --quiet /opt/sbom \
 && uv pip install --quiet --python /opt/sbom/bin/python --require-hashes -r /tmp/sbom-requirements.txt \
 && /opt/sbom/bin/cyclonedx-py environment --output-reproducible --spec-version 1.6 --output-format JSON \
      --pyproject pyproject.toml --mc-type application --output-file /app/sbom.cdx.json /app/.venv

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="octoconn" \
      org.opencontainers.image.description="Registers Octopus Deploy API keys held in Kubernetes Secrets as Infisical App Connections" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.octoconn.sbom="/app/sbom.cdx.json" \
      dev.octoconn.sbom.format="CycloneDX 1.6 JSON"
# A fixed, unprivileged uid/gid (65532, the distroless "nonroot" convention) so that the chart's runAsUser,
# runAsNonRoot and fsGroup line up with the image.
RUN groupadd --system --gid 65532 octoconn \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin octoconn
# Same path as in the build stage: the virtualenv's scripts carry its absolute path in their shebang lines.
COPY --from=build /app/.venv /app/.venv
COPY --from=sbom /app/sbom.cdx.json /app/sbom.cdx.json
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
# Kopf's liveness endpoint (see CMD).
EXPOSE 8080
ENTRYPOINT ["octoconn"]
CMD ["run", "--standalone", "--liveness", "http://0.0.0.0:8080/healthz"]
