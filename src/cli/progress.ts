/** Progress bars on stderr (cli-progress) when stderr is a terminal and --quiet is off. */
import cliProgress from "cli-progress";
import { isQuiet } from "./io.js";

export interface Progress {
  update(phase: string, done: number, total: number): void;
  stop(): void;
}

export function progressBars(): Progress {
  if (isQuiet() || !process.stderr.isTTY) return { update: () => undefined, stop: () => undefined };
  let bar: cliProgress.SingleBar | undefined;
  let current = "";
  const stop = (): void => {
    bar?.stop();
    bar = undefined;
  };
  return {
    update(phase, done, total) {
      if (phase !== current) {
        stop();
        current = phase;
        bar = new cliProgress.SingleBar(
          { stream: process.stderr, format: `${phase.padEnd(10)} {bar} {value}/{total} {percentage}% | {rate}/s | eta {eta_formatted}`, hideCursor: true },
          cliProgress.Presets.shades_classic,
        );
        bar.start(total, 0, { rate: "0" });
        (bar as unknown as { startedAt: number }).startedAt = Date.now();
      }
      const started = (bar as unknown as { startedAt: number }).startedAt;
      const rate = done / Math.max(0.001, (Date.now() - started) / 1000);
      bar!.update(done, { rate: rate.toFixed(0) });
      if (done >= total) stop();
    },
    stop,
  };
}
