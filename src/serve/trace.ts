/**
 * Arrival traces for replaying a workload: Poisson arrivals whose rate jumps to `burstFactor`
 * times the base rate for `burstMs` out of every `periodMs` (a bursty, serverless-like load),
 * generated from a seed, each request with a relative deadline and the sample it asks about.
 */
import { Rng } from "../util/rng.js";

export interface TraceRequest {
  id: number;
  /** Arrival time (ms from the start). */
  arrival: number;
  /** Absolute deadline (ms). */
  deadline: number;
  /** Index of the input sample. */
  sample: number;
}

export interface TraceOptions {
  requests: number;
  /** Base arrival rate, requests per ms. */
  rate: number;
  burstFactor: number;
  /** A burst of burstMs at the start of every periodMs. */
  burstMs: number;
  periodMs: number;
  /** Relative deadline of every request (the SLO), ms. */
  deadlineMs: number;
  /** Samples to draw inputs from (in order, wrapping). */
  samples: number;
  seed: number;
}

export function burstyTrace(o: TraceOptions): TraceRequest[] {
  const rng = new Rng(o.seed);
  const out: TraceRequest[] = [];
  let t = 0;
  for (let id = 0; id < o.requests; id++) {
    const inBurst = t % o.periodMs < o.burstMs;
    const rate = o.rate * (inBurst ? o.burstFactor : 1);
    t += -Math.log(1 - rng.next()) / rate;
    out.push({ id, arrival: t, deadline: t + o.deadlineMs, sample: id % o.samples });
  }
  return out;
}

/** Mean arrival rate of the trace options (requests per ms), bursts included. */
export function meanRate(o: Pick<TraceOptions, "rate" | "burstFactor" | "burstMs" | "periodMs">): number {
  const share = o.burstMs / o.periodMs;
  return o.rate * (share * o.burstFactor + (1 - share));
}
