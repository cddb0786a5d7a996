# Baton: one image for every role (worker, sink, alerts); the command picks the role.
# The replay path's modules are compiled with mypyc in the build stage (gcc and the Python
# headers there; docs/replay.md "A compiled core"): the worker's batch step costs ~25 % less
# CPU and `baton replay` runs ~2x as fast. The build fails rather than ship pure Python;
# `--build-arg BATON_COMPILE=0` builds a pure-Python image. The image gets the wheel only,
# so every container of one image runs the same build.
FROM python:3.11-slim AS build
ARG BATON_COMPILE=1
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY build_backend build_backend
COPY schemas schemas
COPY processors processors
COPY streams streams
COPY sinks sinks
COPY cli cli
RUN BATON_COMPILE="$BATON_COMPILE" pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# no embedded broker or chDB in the image: deployments use Kafka and a ClickHouse server
# the compose files' baton-keys and baton-public volumes start as these folders: nobody's, the
# private keys' kept from others
RUN mkdir -p /var/lib/baton/keys /var/lib/baton/public \
    && chown nobody /var/lib/baton/keys /var/lib/baton/public && chmod 700 /var/lib/baton/keys
USER nobody
ENTRYPOINT ["baton"]
CMD ["--help"]
