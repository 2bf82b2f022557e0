/**
 * An in-process server loop for replaying a trace: requests queue in arrival order (every request
 * has the same relative deadline, so this is earliest-deadline-first), a policy picks the operating
 * point and batch at each dispatch, and the batch really runs. The clock is event-driven: it jumps
 * to the next arrival when the queue is empty, and advances by each batch's measured run time, so a
 * replay takes only as long as the model's work while every latency is a measured one.
 *
 * The latency table starts as profiled and learns as the server runs: each cell becomes a running
 * mean of the measured call times plus twice their running mean deviation (weights 0.05), so that
 * a policy plans with what calls cost on this machine now, tails included, as a server would.
 */
import type { TraceRequest } from "./trace.js";
import type { LatencyTable, Policy } from "./policy.js";

export interface Executor {
  /** Run the samples as one batch at a point of the latency table; their predictions. */
  run(point: number, samples: number[]): Promise<Int32Array>;
}

export interface Served {
  id: number;
  sample: number;
  arrival: number;
  finish: number;
  deadline: number;
  point: number;
  batch: number;
  pred: number;
}

export interface ReplayResult {
  policy: string;
  served: Served[];
  /** Share of requests answered by their deadline. */
  sloAttainment: number;
  p50: number;
  p99: number;
  meanLatency: number;
  /** Requests per second over the replay. */
  throughput: number;
  /** Requests served at each point of the table. */
  pointUse: number[];
  meanBatch: number;
}

function quantile(sorted: number[], q: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! : 0;
}

export interface ReplayOptions {
  /** Learn the latency table from measured calls (default true); off: plan with the profile's figures throughout. */
  learn?: boolean;
}

export async function replay(trace: readonly TraceRequest[], policy: Policy, profiled: LatencyTable, exec: Executor, o: ReplayOptions = {}): Promise<ReplayResult> {
  const table: LatencyTable = { ...profiled, ms: profiled.ms.map((r) => [...r]) };
  const mean = profiled.ms.map((r) => [...r]);
  const dev = profiled.ms.map((r) => r.map(() => 0));
  const W = 0.05;
  const served: Served[] = [];
  const queue: TraceRequest[] = [];
  let next = 0;
  let clock = 0;
  let batches = 0;
  while (next < trace.length || queue.length) {
    if (!queue.length) clock = Math.max(clock, trace[next]!.arrival);
    while (next < trace.length && trace[next]!.arrival <= clock) queue.push(trace[next++]!);
    const d = policy.decide(clock, queue.map((r) => r.deadline), table);
    const take = queue.splice(0, Math.max(1, d.take));
    const t0 = performance.now();
    const preds = await exec.run(d.point, take.map((r) => r.sample));
    const took = performance.now() - t0;
    clock += took;
    if (o.learn !== false) {
      const m = mean[d.point]!;
      const v = dev[d.point]!;
      v[d.batch] = (1 - W) * v[d.batch]! + W * Math.abs(took - m[d.batch]!);
      m[d.batch] = (1 - W) * m[d.batch]! + W * took;
      table.ms[d.point]![d.batch] = m[d.batch]! + 2 * v[d.batch]!;
    }
    batches++;
    take.forEach((r, i) => served.push({ id: r.id, sample: r.sample, arrival: r.arrival, finish: clock, deadline: r.deadline, point: d.point, batch: take.length, pred: preds[i]! }));
  }
  served.sort((a, b) => a.id - b.id);
  const lat = served.map((s) => s.finish - s.arrival).sort((a, b) => a - b);
  const pointUse = table.points.map(() => 0);
  for (const s of served) pointUse[s.point]!++;
  return {
    policy: policy.name,
    served,
    sloAttainment: served.filter((s) => s.finish <= s.deadline).length / served.length,
    p50: quantile(lat, 0.5),
    p99: quantile(lat, 0.99),
    meanLatency: lat.reduce((a, b) => a + b, 0) / lat.length,
    throughput: (served.length / Math.max(1e-9, clock - trace[0]!.arrival)) * 1000,
    pointUse,
    meanBatch: served.length / batches,
  };
}
