/** Per-ramp summaries of per-sample data: agreement overall and as a function of the threshold. */
import type { SampleData } from "./samples.js";

export interface ThresholdPoint {
  threshold: number;
  /** Fraction of samples whose max-probability is at least the threshold. */
  coverage: number;
  /** Agreement with the final prediction among those samples (null when none). */
  agreement: number | null;
}

export interface RampSummary {
  id: number;
  agreement: number;
  accuracy: number | null;
  meanMaxprob: number;
  curve: ThresholdPoint[];
}

export const CURVE_THRESHOLDS = [0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999];

const round = (x: number): number => Math.round(x * 1e6) / 1e6;

export function summarizeSamples(d: SampleData): { finalAccuracy: number | null; ramps: RampSummary[] } {
  const n = d.count;
  const hasLabels = n > 0 && d.label[0]! >= 0;
  let finalCorrect = 0;
  if (hasLabels) for (let i = 0; i < n; i++) if (d.final[i] === d.label[i]) finalCorrect++;
  return {
    finalAccuracy: hasLabels ? round(finalCorrect / n) : null,
    ramps: d.ramps.map((r, id) => {
      let agree = 0;
      let correct = 0;
      let conf = 0;
      for (let i = 0; i < n; i++) {
        if (r.pred[i] === d.final[i]) agree++;
        if (hasLabels && r.pred[i] === d.label[i]) correct++;
        conf += r.maxprob[i]!;
      }
      const curve = CURVE_THRESHOLDS.map((t) => {
        let covered = 0;
        let ok = 0;
        for (let i = 0; i < n; i++) {
          if (r.maxprob[i]! >= t) {
            covered++;
            if (r.pred[i] === d.final[i]) ok++;
          }
        }
        return { threshold: t, coverage: round(covered / n), agreement: covered ? round(ok / covered) : null };
      });
      return { id, agreement: round(agree / n), accuracy: hasLabels ? round(correct / n) : null, meanMaxprob: round(conf / n), curve };
    }),
  };
}
