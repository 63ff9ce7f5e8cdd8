# medkg-pdf image: the Dagster code server (default CMD), the Dagster run
# workers launched by the K8sRunLauncher, and the embedded CPU engine
# (`medkg-pdf serve-local --host 0.0.0.0 --port 8001`).
#   docker build -t ghcr.io/medkg/medkg-pdf:0.1.0 .
FROM python:3.11-slim-bookworm

# MALLOC_ARENA_MAX=2: glibc's per-thread malloc arenas keep freed memory apart; two arenas cut the
# peak of a many-threaded run by ~65 MB (bench/memory_cli.py), as `medkg-pdf run` sets for itself
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    MALLOC_ARENA_MAX=2

# opencv-python (pulled in by rapidocr-onnxruntime) loads libGL and libgthread
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 medkg \
    && useradd --system --uid 10001 --gid medkg --home-dir /home/medkg --create-home \
       --shell /usr/sbin/nologin medkg

WORKDIR /opt/medkg-pdf

# project metadata first, then the package; installed from these files only
COPY pyproject.toml README.md ./
COPY deploy/constraints.txt ./deploy/constraints.txt
COPY medkg_pdf ./medkg_pdf
# pinned: every package at the version deploy/constraints.txt names, so two builds of a commit agree
RUN pip install --no-cache-dir --constraint deploy/constraints.txt '.[prod]'

# DAGSTER_HOME (the instance's dagster.yaml is mounted here by Helm/Compose)
# and the local data directory used when MEDKG_ENV=local
RUN mkdir -p /opt/dagster/dagster_home/storage /var/lib/medkg/data \
    && chown -R 10001:10001 /opt/dagster /var/lib/medkg

USER 10001:10001

EXPOSE 4000 8001

CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "medkg_pdf.definitions"]
