import react from '@vitejs/plugin-react';
import { defineConfig } from 'vitest/config';

// Node's `process` (the config runs in Node; the app's types do not include Node's).
declare const process: { env: Record<string, string | undefined> };

// The gateway (api) listens on 8080 in development (scripts/run.sh); the dev server forwards REST and the
// WebSocket to it so the app talks to one origin, exactly as it does behind nginx in production.
const gateway = process.env.WARREN_GATEWAY ?? 'http://127.0.0.1:8080';

export default defineConfig({
  plugins: [react()],
  server: {
    host: '127.0.0.1',
    port: 5173,
    strictPort: true,
    proxy: {
      '/api': { target: gateway },
      '/ws': { target: gateway, ws: true },
    },
    // Under Vitest only: one unit test reads a message-service source file (the blank-text rule's table), outside
    // this folder. The dev server keeps Vite's default (this folder only).
    ...(process.env.VITEST ? { fs: { allow: ['..'] } } : {}),
  },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: true,
    target: 'es2022',
  },
  test: {
    environment: 'jsdom',
    setupFiles: ['./src/test/setup.ts'],
    include: ['src/**/*.test.{ts,tsx}'],
    restoreMocks: true,
  },
});
