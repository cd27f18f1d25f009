# One image for every stocksync service; the command picks the service (see docker-compose.yml).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stocksync stocksync
COPY schemas schemas
COPY channels channels
COPY ingest ingest
COPY processor processor
COPY fanout fanout
COPY reconciler reconciler
RUN pip install . && useradd --system --no-create-home stocksync
USER stocksync
CMD ["stocksync", "--help"]
