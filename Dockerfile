# The wallet page's scripts, bundled from the npm packages pinned by package-lock.json.
FROM node:20-slim AS assets
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY web web
RUN npm run --silent build

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
# Exact versions from the lock file first (a layer that changes only with the lock).
COPY requirements.lock ./
RUN pip install --no-cache-dir --disable-pip-version-check -r requirements.lock
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY chains chains
COPY sessions sessions
COPY store store
COPY static static
COPY --from=assets /src/static/build static/build
# Editable: the package finds static/ and chains/evm/build/ next to its source in /app.
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps -e . \
    && useradd --system --uid 10001 --home-dir /var/lib/tollgate --shell /usr/sbin/nologin tollgate \
    && mkdir -p /var/lib/tollgate /etc/tollgate \
    && chown tollgate:tollgate /var/lib/tollgate && chmod 0700 /var/lib/tollgate
# Never root: the gateway needs no privilege. /var/lib/tollgate is the master-key volume
# (a fresh named volume takes this directory's owner and mode).
USER tollgate
VOLUME ["/var/lib/tollgate"]
EXPOSE 8402 9402
ENTRYPOINT ["tollgate"]
CMD ["serve", "-c", "/etc/tollgate/tollgate.toml"]
