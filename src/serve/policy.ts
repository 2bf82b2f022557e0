/**
 * Dispatch policies for a server with a queue, batching and per-request deadlines. At each
 * dispatch a policy sees the queue (earliest deadline first) and the profiled latency of every
 * (operating point, batch size), and picks the point and how many requests to take.
 *
 * - slackFit (SuperServe's SlackFit): the slack is the time left to the earliest deadline; take the
 *   most accurate operating point that can serve some batch within it, with the largest batch of
 *   that point that still fits (and by default, the same for every queued request, see below).
 *   When nothing fits (a request will be late whatever runs), take the fastest point at the
 *   largest batch, to drain the queue.
 * - fixedPoint: always one point (the plan's), the largest batch whose latency fits the slack, else
 *   the largest batch (to drain the queue).
 * - the original model is a fixedPoint over a table with the model's own latencies.
 */
import type { Plan } from "../plan/plan.js";

/** Latency of a call of `batch` rows at one operating point, in ms. */
export interface LatencyTable {
  /** Points, most accurate first (the original model, when listed, is point 0, planPoint null). */
  points: Array<{ name: string; maxDrop: number; planPoint: number | null }>;
  batches: number[];
  /** ms[p][b]: latency of one call at point p with batches[b] rows. */
  ms: number[][];
}

export interface Decision {
  point: number;
  /** The batch size it planned with (index into LatencyTable.batches). */
  batch: number;
  /** Requests to take from the head of the queue (at most that batch size). */
  take: number;
}

export interface Policy {
  name: string;
  decide(now: number, deadlines: readonly number[], table: LatencyTable): Decision;
}

/** The largest batch index whose batch size is at most `queued`, and its size. */
function batchesUpTo(table: LatencyTable, queued: number): number[] {
  const idx = table.batches.map((b, i) => ({ b, i })).filter((x) => x.b <= queued).map((x) => x.i);
  // A queue shorter than the smallest profiled batch is served at the smallest batch's latency.
  return idx.length ? idx : [table.batches.indexOf(Math.min(...table.batches))];
}

/**
 * SlackFit. Plain (`queue: false`, as SuperServe describes it): the most accurate point that can
 * serve some batch within the earliest deadline's slack, with its largest such batch. Queue-aware
 * (default): a point and batch size fit when draining the whole queue in batches of that size, at
 * the profiled latency, meets every queued request's deadline, not only the first one's; under
 * bursts this leaves the accurate points sooner, before the requests behind the first are late.
 * The queue-aware form also keeps a reserve before each deadline: by default the latency of the
 * slowest single-request call in the table, the wait a request can meet on arrival behind a call
 * already running (calls are not preempted).
 */
export function slackFit(o: { queue?: boolean; reserveMs?: number } = {}): Policy {
  const queueAware = o.queue ?? true;
  return {
    name: queueAware ? "slack-fit" : "slack-fit (head only)",
    decide(now, deadlines, table) {
      const usable = batchesUpTo(table, deadlines.length);
      const largest = (xs: number[]): number => xs.reduce((a, c) => (table.batches[c]! > table.batches[a]! ? c : a));
      const first = table.batches.indexOf(Math.min(...table.batches));
      const reserve = o.reserveMs ?? Math.max(...table.ms.map((r) => r[first]!));
      /** Whether draining the queue at point p in batches of batches[i] meets every deadline. */
      const fits = (p: number, i: number): boolean => {
        const b = table.batches[i]!;
        if (!queueAware) return table.ms[p]![i]! <= Math.min(...deadlines) - now;
        for (let start = 0, t = now + reserve; start < deadlines.length; start += b) {
          t += table.ms[p]![i]!;
          for (let r = start; r < Math.min(deadlines.length, start + b); r++) if (deadlines[r]! < t) return false;
        }
        return true;
      };
      for (let p = 0; p < table.points.length; p++) {
        const ok = usable.filter((i) => fits(p, i));
        if (ok.length) {
          const i = largest(ok);
          return { point: p, batch: i, take: Math.min(deadlines.length, table.batches[i]!) };
        }
      }
      // Nothing fits: the fastest point per row, at the largest batch.
      const i = largest(usable);
      let fastest = 0;
      for (let p = 1; p < table.points.length; p++) if (table.ms[p]![i]! < table.ms[fastest]![i]!) fastest = p;
      return { point: fastest, batch: i, take: Math.min(deadlines.length, table.batches[i]!) };
    },
  };
}

export function fixedPoint(point: number, name: string): Policy {
  return {
    name,
    decide(now, deadlines, table) {
      const slack = Math.min(...deadlines) - now;
      const usable = batchesUpTo(table, deadlines.length);
      const fits = usable.filter((i) => table.ms[point]![i]! <= slack);
      // The largest batch that fits the slack; when none does, the largest one, to drain the queue.
      const pick = (fits.length ? fits : usable).reduce((a, c) => (table.batches[c]! > table.batches[a]! ? c : a));
      return { point, batch: pick, take: Math.min(deadlines.length, table.batches[pick]!) };
    },
  };
}

/**
 * The latency table of a plan's operating points (most accurate first), with the original model
 * as point 0, from the plan's expected per-request latencies at each profiled batch size.
 */
export function latencyTable(plan: Plan): LatencyTable {
  const op = plan.points;
  if (!op) throw new Error("latencyTable needs a plan with operating points (plan --points)");
  const batches = Object.keys(op.points[0]!.latency).map(Number).sort((a, b) => a - b);
  const per = (p: (typeof op.points)[number], b: number): number => p.latency[String(b)]!.meanLatencyMs * b;
  // The model's own latency at each batch: any point's latency over (1 - its saving).
  const model = batches.map((b) => {
    const l = op.points[0]!.latency[String(b)]!;
    return (l.meanLatencyMs / (1 - l.saving)) * b;
  });
  const order = op.points.map((p, i) => ({ p, i })).sort((a, b) => a.p.maxDrop - b.p.maxDrop);
  return {
    points: [{ name: "model", maxDrop: 0, planPoint: null }, ...order.map(({ p, i }) => ({ name: `point ${i} (${(p.maxDrop * 100).toFixed(2)}%)`, maxDrop: p.maxDrop, planPoint: i }))],
    batches,
    ms: [model, ...order.map(({ p }) => batches.map((b) => per(p, b)))],
  };
}
