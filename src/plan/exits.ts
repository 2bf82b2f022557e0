/** The exits of a plan as the early-exit model holds them. */
import type { Plan } from "./plan.js";
import type { ActiveExit } from "../stages/exit-graph.js";

/**
 * The exits the runtime model holds, with their default thresholds: the plan's, or with operating
 * points every point's exits, at the plan's own point (+Infinity where it does not use one).
 */
export function runtimeExits(plan: Plan): ActiveExit[] {
  const op = plan.points;
  if (op) return op.exits.map((e, i) => ({ ramp: e.ramp, output: e.output, threshold: op.points[op.default]!.thresholds[i] ?? Infinity }));
  return [...plan.exits].sort((a, b) => a.stage - b.stage).map((e) => ({ ramp: e.ramp, output: e.output, threshold: e.threshold }));
}
