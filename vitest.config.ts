import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    // One file at a time on a 2-core machine (vitest's default there). Two at once took 13-14
    // minutes against 16-17, but the second file's load made the profile test's timing bounds and
    // the long tests' timeouts fail in two of three clean runs.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ["default"],
  },
});
