# One image for every LLM Observer component: `observer <subcommand>` (simulate, engine-exporter,
# gpu-exporter, serve, analytics, load). The GPU exporter needs the NVIDIA container runtime to
# see libnvidia-ml; everything else runs on any CPU.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY observer ./observer
COPY exporters ./exporters
COPY dashboards ./dashboards
COPY alerts ./alerts
RUN pip install ".[postgres]"
RUN useradd --system --uid 10001 observer && mkdir /data && chown observer /data
USER observer
WORKDIR /data
ENTRYPOINT ["observer"]
CMD ["--help"]
