/**
 * Latency per row and rows per second at several batch sizes, for the original model, the one-call
 * early-exit runtime (every row of a batch waits for the call) and Apparate's release-early mode
 * (the batch runs to the end, each row is answered when its exit fires). The three run on the same
 * batches, interleaved, in an order that alternates, so machine drift hits them alike.
 */
import type { Plan } from "../plan/plan.js";
import type { CalibrationSet } from "../data/calib.js";
import type { RunnableSession } from "../ort/sync.js";
import type { EarlyExitSession } from "../runtime/early-exit.js";
import { ReleaseEarlySession } from "../runtime/release.js";
import type { SessionSettings } from "../ort/ort.js";

export interface ModeThroughput {
  /** Mean over rows of the time from the call's start to the row's answer (ms). */
  rowLatencyMs: number;
  /** Rows answered per second of calls. */
  rowsPerSecond: number;
}

export interface BatchThroughput {
  batch: number;
  /** Calls timed (each mode). */
  calls: number;
  model: ModeThroughput;
  earlyExit: ModeThroughput;
  /** Null when the plan has no exit (nothing to release early). */
  releaseEarly: ModeThroughput | null;
}

export async function measureThroughput(
  plan: Plan, modelPath: string, data: CalibrationSet, batches: readonly number[], base: RunnableSession, ee: EarlyExitSession,
  settings: SessionSettings, onProgress?: (phase: string, done: number, total: number) => void,
): Promise<BatchThroughput[]> {
  const release = plan.exits.length ? await ReleaseEarlySession.fromPlan(plan, modelPath, settings) : null;
  const out: BatchThroughput[] = [];
  try {
    for (const b of batches) {
      const calls = Math.floor(data.size / b);
      // Per mode: the sum over rows of their latency, and the sum of the calls' times.
      const acc = { model: { row: 0, call: 0 }, earlyExit: { row: 0, call: 0 }, releaseEarly: { row: 0, call: 0 } };
      // One warm-up batch for each mode (sessions for a new batch form are made on first use).
      const warm = data.feeds(0, b);
      await base.run(warm, [plan.model.output]);
      await ee.run(warm);
      await release?.run(warm);
      for (let c = 0; c < calls; c++) {
        const feeds = data.feeds(c * b, (c + 1) * b);
        const runs: Array<() => Promise<void>> = [
          async () => {
            const t0 = performance.now();
            await base.run(feeds, [plan.model.output]);
            const ms = performance.now() - t0;
            acc.model.row += ms * b;
            acc.model.call += ms;
          },
          async () => {
            const r = await ee.run(feeds);
            acc.earlyExit.row += r.timings.totalMs * b;
            acc.earlyExit.call += r.timings.totalMs;
          },
          ...(release ? [async () => {
            const r = await release.run(feeds);
            acc.releaseEarly.row += r.releaseMs.reduce((a, x) => a + x, 0);
            acc.releaseEarly.call += r.totalMs;
          }] : []),
        ];
        for (let i = 0; i < runs.length; i++) await runs[(i + c) % runs.length]!();
        onProgress?.(`throughput b=${b}`, c + 1, calls);
      }
      const mode = (m: { row: number; call: number }): ModeThroughput => ({ rowLatencyMs: m.row / (calls * b), rowsPerSecond: (calls * b) / (m.call / 1000) });
      out.push({ batch: b, calls, model: mode(acc.model), earlyExit: mode(acc.earlyExit), releaseEarly: release ? mode(acc.releaseEarly) : null });
    }
  } finally {
    await release?.release();
  }
  return out;
}
