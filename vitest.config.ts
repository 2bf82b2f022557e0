import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    // Two files at a time: most of a test's time is single-threaded JavaScript or a child process,
    // so on a 2-core machine two at once take 12-13 minutes against 16-17 one at a time.
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ["default"],
  },
});
