# logwarden in a container: beside NGINX, reading the access log from a shared volume
# (examples/kubernetes/sidecar.yaml). Build: docker build -t logwarden .
# tests/test_service_files.py checks this file's structure (no docker needed).

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY logwarden ./logwarden
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# A user of its own; group 0 too, so an arbitrary UID (OpenShift) can still write its state.
RUN groupadd --system --gid 10001 logwarden \
 && useradd --system --uid 10001 --gid logwarden --groups 0 --no-create-home \
            --home-dir /var/lib/logwarden --shell /usr/sbin/nologin logwarden \
 && install -d -m 0770 -o logwarden -g 0 /var/lib/logwarden
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels logwarden && rm -rf /wheels
# Positions go to $STATE_DIRECTORY/positions-NAME.json; /metrics and /healthz must be reachable
# from outside the container (Prometheus, the kubelet's probes).
ENV STATE_DIRECTORY=/var/lib/logwarden \
    LOGWARDEN_METRICS_LISTEN=0.0.0.0:9145 \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/logwarden"]
EXPOSE 9145
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=3s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9145/healthz', timeout=2)"]
# SIGTERM drains queued refreshes for --shutdown-timeout (10 s): give the container more.
STOPSIGNAL SIGTERM
ENTRYPOINT ["logwarden"]
CMD ["run", "--help"]
