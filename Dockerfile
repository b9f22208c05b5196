# The coordinator image: built TypeScript, production dependencies only, run as the
# image's unprivileged `node` user. Node 22 LTS here; package.json's engines keep Node
# 20.19+ working for those who run it outside a container.
FROM node:22-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY scripts ./scripts
RUN npm ci --no-audit --no-fund
COPY src ./src
# The build also writes the API description the coordinator serves (dist/openapi.json).
COPY openapi.yaml ./
RUN npm run build && npm prune --omit=dev

FROM node:22-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production TCX_HOST=0.0.0.0 TCX_PORT=7070 TCX_DATA_DIR=/var/lib/tcx
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
# The write-ahead log holds participants' passwords: its directory belongs to the
# coordinator's user alone (0700; the coordinator narrows anything wider at start). A new
# named volume takes this owner and mode. /var/lib/ledger is for the example HTTP
# participant (docker-compose.yml runs it from this image).
RUN mkdir -p /var/lib/tcx /var/lib/ledger \
  && chown node:node /var/lib/tcx /var/lib/ledger \
  && chmod 0700 /var/lib/tcx /var/lib/ledger
USER node
VOLUME /var/lib/tcx
EXPOSE 7070
# The slim image has no curl: Node's fetch asks /healthz (200 ok, 503 unhealthy), bounded.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.TCX_PORT || 7070) + '/healthz', { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.status === 200 ? 0 : 1), () => process.exit(1))"]
# SIGTERM stops gracefully: in-flight phase 2 finishes, the log is flushed.
STOPSIGNAL SIGTERM
CMD ["node", "dist/main.js"]
