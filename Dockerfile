# One image for every stocksync service; the command picks the service (see docker-compose.yml, deploy/k8s).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stocksync stocksync
COPY schemas schemas
COPY channels channels
COPY allocation allocation
COPY ingest ingest
COPY processor processor
COPY fanout fanout
COPY reconciler reconciler
COPY cli cli
# A fixed uid/gid (10001) so Kubernetes' runAsUser and volume permissions match the image.
RUN pip install . \
    && groupadd --system --gid 10001 stocksync \
    && useradd --system --uid 10001 --gid 10001 --no-create-home stocksync
USER 10001:10001
EXPOSE 8080 8081 8082 8083
CMD ["stocksync", "--help"]
