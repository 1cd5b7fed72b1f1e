FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock
COPY gateway gateway
COPY chains chains
COPY sessions sessions
COPY store store
COPY static static
RUN pip install --no-cache-dir --no-deps -e .
EXPOSE 8402
ENTRYPOINT ["tollgate"]
CMD ["serve", "-c", "/etc/tollgate/tollgate.toml"]
