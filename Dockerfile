# The coordinator image: built TypeScript, production dependencies only.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY scripts ./scripts
RUN npm ci --no-audit --no-fund
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production TCX_HOST=0.0.0.0 TCX_PORT=7070 TCX_DATA_DIR=/var/lib/tcx
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
VOLUME /var/lib/tcx
EXPOSE 7070
# SIGTERM stops gracefully: in-flight phase 2 finishes, the log is flushed.
STOPSIGNAL SIGTERM
CMD ["node", "dist/main.js"]
