/**
 * How many intra-op threads the profile (and so the plan, plan's path measurement, eval and the
 * runtime) runs with when the user does not say: one thread or onnxruntime's default (one per
 * core), whichever runs the full model faster at each batch size, timed both ways on this machine.
 *
 * Why: on a 2-core machine one thread ran the fixtures' models 15-36% faster at batch 1 than the
 * default, and its times barely moved when another process took a core, where the default's moved
 * by -11% to +41% and took the paths' ratios to the model with them (docs/profile.md, Threads). Large
 * convolutions gain from a second core at batch 8 (the CNN fixture, a ResNet-18); there the
 * default is kept.
 */
import type { ort, SessionSettings } from "../ort/ort.js";
import { createRunnable, type RunnableSession } from "../ort/sync.js";
import { median } from "../util/stats.js";

/** One thread is chosen when the full model is at least this much faster with it than with the default. */
export const ONE_THREAD_GAIN = 0.03;

/** True when the one-thread time beats the default's by ONE_THREAD_GAIN. */
export function oneThreadWins(oneThreadMs: number, defaultMs: number): boolean {
  return oneThreadMs < defaultMs * (1 - ONE_THREAD_GAIN);
}

/** Whether to choose at all: only on the CPU, with more than one core, when the user set no thread count. */
export function shouldChooseThreads(settings: SessionSettings, cores: number): boolean {
  return settings.threads === undefined && (settings.ep ?? "cpu") === "cpu" && cores > 1;
}

/**
 * A classifier's choice, made at each profiled batch size (a plan is for one batch size, and one
 * thread can win at batch 1 and lose at 8): the full model's median call each way, and the threads
 * that batch size's latencies were then measured with (1, or null: onnxruntime's default).
 */
export interface ClassifierThreadChoice {
  batches: Record<string, { threads: number | null; oneThreadMs: number; defaultMs: number }>;
}

/** The batch sizes in groups that share their threads, in the given order within each, groups by first appearance. */
export function groupByThreads(batches: readonly number[], choice: ClassifierThreadChoice | undefined, settings: SessionSettings): { settings: SessionSettings; batches: number[] }[] {
  const groups: { settings: SessionSettings; batches: number[] }[] = [];
  for (const b of batches) {
    const threads = choice?.batches[String(b)]?.threads ?? settings.threads ?? null;
    let g = groups.find((x) => (x.settings.threads ?? null) === threads);
    if (!g) groups.push((g = { settings: threads === null ? settings : { ...settings, threads }, batches: [] }));
    g.batches.push(b);
  }
  return groups;
}

/** Calls of each session per batch size, after WARMUP, in blocks that alternate which goes first. */
const CALLS = 64;
const BLOCK = 8;
const WARMUP = 4;

/**
 * Time the full model (`bytes`, one output) with one thread and with the default at each batch
 * size (`feeds` gives that batch's inputs), in alternating blocks so that both see the same
 * machine state, and choose at each.
 */
export async function chooseClassifierThreads(
  bytes: Uint8Array,
  output: string,
  feeds: ReadonlyMap<number, Record<string, ort.Tensor>>,
  settings: SessionSettings,
): Promise<ClassifierThreadChoice> {
  const one = await createRunnable(bytes, { ...settings, threads: 1 }, [output]);
  let dflt: RunnableSession | undefined;
  try {
    dflt = await createRunnable(bytes, settings, [output]);
    const batches: ClassifierThreadChoice["batches"] = {};
    for (const [b, f] of feeds) {
      const times = new Map<RunnableSession, number[]>([[one, []], [dflt, []]]);
      const call = async (s: RunnableSession, keep: boolean): Promise<void> => {
        const t0 = performance.now();
        await s.run(f, [output]);
        if (keep) times.get(s)!.push(performance.now() - t0);
      };
      for (let i = 0; i < WARMUP; i++) {
        await call(one, false);
        await call(dflt, false);
      }
      for (let k = 0; k < CALLS / BLOCK; k++) {
        for (const s of k % 2 ? [dflt, one] : [one, dflt]) for (let i = 0; i < BLOCK; i++) await call(s, true);
      }
      const oneThreadMs = median(times.get(one)!);
      const defaultMs = median(times.get(dflt)!);
      batches[String(b)] = { threads: oneThreadWins(oneThreadMs, defaultMs) ? 1 : null, oneThreadMs, defaultMs };
    }
    return { batches };
  } finally {
    await one.release();
    await dflt?.release();
  }
}
