# The wallet page's scripts, bundled from the npm packages pinned by package-lock.json.
FROM node:20-slim AS assets
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY web web
RUN npm run --silent build

FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock
COPY gateway gateway
COPY chains chains
COPY sessions sessions
COPY store store
COPY static static
COPY --from=assets /src/static/build static/build
RUN pip install --no-cache-dir --no-deps -e .
EXPOSE 8402
ENTRYPOINT ["tollgate"]
CMD ["serve", "-c", "/etc/tollgate/tollgate.toml"]
