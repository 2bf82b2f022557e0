/** measure(): medians over sessions and differences against them, on a clock the items advance. */
import { describe, expect, it } from "vitest";
import { differenceName, measure, type TimedItem } from "../src/profile/timing.js";
import { Rng } from "../src/util/rng.js";
import { centralMean } from "../src/eval/paths.js";
import { median } from "../src/util/stats.js";

/** Items whose calls take `ms` plus a little seeded noise, shared within a round by `drift`. */
function fakeItems(spec: Record<string, number>): { items: TimedItem[]; clock: () => number } {
  let t = 0;
  const rng = new Rng(7);
  let calls = 0;
  const items = Object.entries(spec).map(([name, ms]) => ({
    name,
    run: async (): Promise<void> => {
      calls++;
      // The machine's speed drifts slowly (every item alike), and each call has its own jitter.
      const drift = 1 + 0.3 * Math.sin(calls / 200);
      t += ms * drift * (1 + 0.02 * (rng.next() - 0.5));
    },
  }));
  return { items, clock: () => t };
}

describe("measure", () => {
  it("takes the session of one graph with the middle median, so one that runs off moves neither it nor a difference against it", async () => {
    // Three sessions of one reference graph: the middle one 3% above the fastest, one 10% slow all
    // along; an exit that adds 0.1 ms to the middle one.
    const { items, clock } = fakeItems({ "ref#0": 2, "ref#1": 2.2, "ref#2": 2.06, exit: 2.16 });
    const stats = await measure(items, {
      clock, budgetMs: 1e9, minRuns: 30, maxRuns: 400, tolerance: 0.001, warmup: 1,
      medians: [{ name: "ref", of: ["ref#0", "ref#1", "ref#2"] }],
      differences: [{ item: "exit", reference: "ref" }, { item: "exit", reference: "ref#1" }],
    });
    const ref = stats.get("ref")!;
    expect(ref.runs).toBe(stats.get("ref#0")!.runs);
    // The middle session's own figures, not the fastest's, the slow one's or a mix of them.
    expect(ref).toEqual(stats.get("ref#2"));
    expect(ref.p50 / stats.get("ref#0")!.p50).toBeGreaterThan(1.02);
    expect(stats.get("ref#1")!.p50 / ref.p50).toBeGreaterThan(1.05);
    const d = stats.get(differenceName("exit", "ref"))!;
    expect(d.p50).toBeGreaterThan(0.08);
    expect(d.p50).toBeLessThan(0.12);
    // Against the slow session alone the exit would look free.
    expect(stats.get(differenceName("exit", "ref#1"))!.p50).toBeLessThan(0);
  });

  it("sessions taking turns run one per round, pooled into one item; a difference pairs each run with the reference's of the same round", async () => {
    // An exit in three sessions, one 15% slow, taking turns; the reference runs every round. The
    // machine's drift (30%) is far larger than the exit's 0.1 ms: pairing runs of different rounds would lose it.
    const { items, clock } = fakeItems({ ref: 2.06, "exit#0": 2.16, "exit#1": 2.48, "exit#2": 2.14 });
    const turns = items.map((it) => (it.name.startsWith("exit#") ? { ...it, turn: { of: 3, at: Number(it.name.slice(5)) } } : it));
    const stats = await measure(turns, {
      clock, budgetMs: 1e9, minRuns: 30, maxRuns: 600, tolerance: 0.0001, warmup: 1,
      pools: [{ name: "exit", of: ["exit#0", "exit#1", "exit#2"] }],
      differences: [{ item: "exit", reference: "ref" }, { item: "exit#0", reference: "ref" }],
    });
    expect(stats.get("ref")!.runs).toBe(600);
    // One session against the reference: its 200 runs, each paired with the reference's run of its round.
    const one = stats.get(differenceName("exit#0", "ref"))!;
    expect(one.runs).toBe(200);
    expect(one.p50).toBeGreaterThan(0.08);
    expect(one.p50).toBeLessThan(0.12);
    for (const k of [0, 1, 2]) expect(stats.get(`exit#${k}`)!.runs).toBe(200);
    // The pool holds every session's runs, as many as an item that runs every round.
    const pool = stats.get("exit")!;
    expect(pool.runs).toBe(600);
    expect(pool.p50).toBeGreaterThan(stats.get("exit#2")!.p50);
    expect(pool.p50).toBeLessThan(stats.get("exit#1")!.p50);
    // Paired by round: the drift cancels, leaving the sessions' mean excess over the reference
    // (0.1, 0.42 and 0.08 ms); the slow session holds a third of the pairs, so the median is near the others'.
    const d = stats.get(differenceName("exit", "ref"))!;
    expect(d.runs).toBe(600);
    expect(d.p50).toBeGreaterThan(0.08);
    expect(d.p50).toBeLessThan(0.16);
    await expect(measure([{ ...items[0]!, turn: { of: 2, at: 2 } }], { clock })).rejects.toThrow(/bad turn/);
    await expect(measure(items, { clock, pools: [{ name: "p", of: ["exit#0", "x"] }] })).rejects.toThrow(/pool p: no item x/);
  });

  it("refuses a median of items it does not time", async () => {
    const { items, clock } = fakeItems({ a: 1 });
    await expect(measure(items, { clock, medians: [{ name: "m", of: ["a", "b"] }] })).rejects.toThrow(/no item b/);
    await expect(measure(items, { clock, medians: [{ name: "a", of: ["a"] }] })).rejects.toThrow(/item's/);
  });
});

describe("path figures (plan's measurement)", () => {
  it("median is the middle value (the two middle ones' mean for an even count) and leaves its input as it was", () => {
    const xs = [3, 1, 2];
    expect(median(xs)).toBe(2);
    expect(xs).toEqual([3, 1, 2]);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([7])).toBe(7);
  });

  it("the rule measurePaths applies (middle of the sessions' central means) ignores one session that runs slow all along, where pooling does not", () => {
    const rng = new Rng(3);
    const calls = (level: number): number[] => Array.from({ length: 100 }, (_, i) => level * (1 + 0.02 * (rng.next() - 0.5)) + (i % 50 === 0 ? 5 : 0));
    const sessions = [calls(0.5), calls(0.52), calls(0.65)];
    // The outliers (two calls in a hundred, about 10x the path) are cut by the middle 80%.
    expect(centralMean(sessions[0]!)).toBeCloseTo(0.5, 2);
    const figure = median(sessions.map(centralMean));
    expect(figure).toBeCloseTo(0.52, 2);
    expect(centralMean(sessions.flat())).toBeGreaterThan(0.54);
  });
});
