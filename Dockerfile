# The tuner image, for the init, worker and dashboard services of docker-compose.yml.
# It holds no credentials: the database URL and password come from the environment at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SCIKIT_LEARN_DATA=/opt/scikit_learn_data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY tuner ./tuner
RUN pip install '.[postgres]'

# Fetched once here, instead of by every worker at once on first use.
RUN python -c "from sklearn.datasets import fetch_california_housing as f; f(data_home='/opt/scikit_learn_data')"

COPY studies ./studies
RUN useradd --create-home --uid 1000 tuner && mkdir -p /app/artifacts && chown tuner /app/artifacts
USER tuner

ENTRYPOINT ["tuner"]
CMD ["--help"]
