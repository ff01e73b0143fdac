FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py beat_schedule.py ./
COPY ultra_tasks ./ultra_tasks
COPY workers ./workers
RUN pip install --no-cache-dir . && useradd --create-home ultra && mkdir -p /var/lib/ultra && chown ultra /var/lib/ultra
USER ultra
ENV PYTHONUNBUFFERED=1
CMD ["ultra", "--help"]
