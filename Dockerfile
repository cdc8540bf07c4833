# curvscope images. Two targets:
#   server (default): the dashboard server only: curvscope[server,postgres], no torch.
#   demo:             the trainer that streams the digits demo into the server (CPU-only torch).
# Build: docker build -t curvscope-server .   |   docker build --target demo -t curvscope-demo .

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY probe ./probe
COPY server ./server
COPY web ./web
RUN groupadd --system --gid 10001 curvscope \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/curvscope --create-home curvscope \
    && mkdir -p /data \
    && chown 10001:10001 /data

FROM base AS demo
# CPU-only torch first, so that the probe's dependency on torch does not pull a CUDA build.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.5.1
ARG TORCHVISION_VERSION=0.20.1
# The project itself is installed from this source tree; its own pins live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
        "torchvision==${TORCHVISION_VERSION}" \
    && pip install ".[demo]"
USER 10001:10001
WORKDIR /home/curvscope
ENTRYPOINT ["curvscope", "demo"]
CMD ["--url", "http://server:8000", "--no-serve"]

FROM base AS server
# hadolint ignore=DL3013
RUN pip install ".[server,postgres]" \
    && python -c "import curvscope.server.app" \
    && ! python -c "import torch" 2>/dev/null
USER 10001:10001
WORKDIR /home/curvscope
ENV CURVSCOPE_HOST=0.0.0.0 \
    CURVSCOPE_PORT=8000 \
    CURVSCOPE_DB=/data/curvscope.sqlite
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=2)"]
# The token comes from the environment (CURVSCOPE_TOKEN); without one the server refuses to
# listen on 0.0.0.0 unless CURVSCOPE_INSECURE=true (see docker-compose.yml).
CMD ["curvscope", "serve"]
