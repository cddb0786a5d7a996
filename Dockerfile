# Baton: one image for every role (worker, sink, alerts); the command picks the role.
# The replay path is compiled with mypyc in a build stage (BATON_COMPILE=1: gcc and the Python
# headers there, docs/replay.md "A compiled core"); the image gets the wheel only.
FROM python:3.11-slim AS build
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
RUN BATON_COMPILE=1 pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# no embedded broker or chDB in the image: deployments use Kafka and a ClickHouse server
USER nobody
ENTRYPOINT ["baton"]
CMD ["--help"]
