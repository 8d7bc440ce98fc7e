# One Dockerfile for every image of the workspace; the build arguments pick which:
#   PACKAGE  the workspace package (uv) to install: platform-db, web-service or trading-service
#   COMMAND  what the container runs (its CMD), e.g. "platform-db migrate" or "web serve"
#   PORT     the port a service listens on (its PORT variable); left out for the init container,
#            which has none (so no EXPOSE: compose publishes the services' ports itself)
# docker-compose.yml sets them per service. By hand, from the repository root:
#   docker build --build-arg PACKAGE=web-service --build-arg COMMAND="web serve" \
#     --build-arg PORT=8001 -t shared-auth/web .
# The image holds one virtualenv with that package, the workspace packages it depends on
# (service-kit, platform-db, and platform-auth for a service; never platform-dev) and their locked third-party dependencies (uv.lock), nothing else: no other
# service, no uv, no build tools, no sources.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: uv resolves nothing here, it installs exactly what uv.lock pins ---------------
FROM ${PYTHON_IMAGE} AS build
ENV UV_VERSION=0.13.9 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install "uv==${UV_VERSION}"
WORKDIR /src
# Third-party dependencies first, from the lock and the members' metadata only. Nothing above
# depends on a build argument, so this layer is one cache entry for all three images (the
# services add only workspace packages) and survives source edits.
COPY pyproject.toml uv.lock ./
COPY service_kit/pyproject.toml service_kit/
COPY platform_db/pyproject.toml platform_db/
COPY platform_auth/pyproject.toml platform_auth/
COPY platform_dev/pyproject.toml platform_dev/
COPY services/web/pyproject.toml services/web/
COPY services/trading/pyproject.toml services/trading/
RUN uv sync --locked --no-dev --no-install-workspace --package platform-auth
# Then the package and the workspace packages it depends on, installed as wheels (not
# editable): only the virtualenv leaves this stage, so the other members' sources never reach
# the image.
COPY service_kit/ service_kit/
COPY platform_db/ platform_db/
COPY platform_auth/ platform_auth/
COPY services/ services/
ARG PACKAGE
RUN uv sync --locked --no-dev --no-editable \
      --package "${PACKAGE:?set the build argument PACKAGE (platform-db, web-service or trading-service)}"

# --- final: the interpreter, the virtualenv, a non-root user; no uv, no pip cache, no sources --
FROM ${PYTHON_IMAGE}
ARG COMMAND
ARG PORT=
RUN : "${COMMAND:?set the build argument COMMAND, e.g. platform-db migrate or web serve}" \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin app
COPY --from=build /app/.venv /app/.venv
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_COMMAND="${COMMAND}" \
    HOST=0.0.0.0 \
    PORT="${PORT}"
WORKDIR /app
USER 10001:10001
# exec: the command replaces the shell as PID 1, so `docker stop`'s SIGTERM reaches uvicorn.
CMD ["sh", "-c", "exec $APP_COMMAND"]
