# backupmx: one image for every service; the command names the entry point.
#   docker run IMAGE                                   everything in one process (src/main.ts)
#   docker run IMAGE services/ingress/src/main.ts      one service (what docker-compose.yml does)
# TypeScript runs directly on Node 24 (type stripping): no build step, no dev dependencies.

FROM node:24-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
COPY shared/package.json shared/
COPY services/ingress/package.json services/ingress/
COPY services/spool/package.json services/spool/
COPY services/health/package.json services/health/
COPY services/deliverer/package.json services/deliverer/
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM node:24-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules node_modules
COPY package.json ./
COPY shared shared
COPY services services
COPY src src
# The backupmx command (admin CLI): docker compose exec spool node bin/backupmx.js queue
COPY bin bin
# The code stays root's (read-only to the service); only DATA_DIR is writable (SQLite spool and
# dead letters when no MONGODB_URL / AMQP_URL is given).
RUN mkdir -p /app/data && chown node:node /app/data
# The SQLite spool of `docker run IMAGE`: keep it with -v backupmx-data:/app/data (a named volume;
# a host folder must be writable by uid 1000), or it goes with the container.
VOLUME /app/data
USER node
EXPOSE 2525 8025
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.HTTP_PORT || 8025) + '/readyz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# Memory as npm start runs it (README: Memory): a young generation of 8 MiB semi-spaces (V8's
# default grows to 64 MiB ones under load, about 100 MiB of a process's peak), and buffers of 128 KiB
# and more handed back to the system when freed (glibc otherwise keeps them once one was freed).
ENV MALLOC_MMAP_THRESHOLD_=131072
ENTRYPOINT ["node", "--max-semi-space-size=8", "--heap-growing-percent=15"]
CMD ["src/main.ts"]
