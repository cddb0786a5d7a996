# Baton: one image for every role (worker, sink, alerts); the command picks the role.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY processors processors
COPY streams streams
COPY sinks sinks
COPY cli cli
RUN pip install --no-cache-dir .
# no embedded broker or chDB in the image: deployments use Kafka and a ClickHouse server
USER nobody
ENTRYPOINT ["baton"]
CMD ["--help"]
