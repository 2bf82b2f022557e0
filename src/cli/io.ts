/** Where the CLI writes: results on stdout, messages on stderr (silenced by --quiet). */
let quiet = false;

export function setQuiet(q: boolean): void {
  quiet = q;
}

export function isQuiet(): boolean {
  return quiet;
}

export function out(text: string): void {
  process.stdout.write(text.endsWith("\n") ? text : text + "\n");
}

export function info(text: string): void {
  if (!quiet) process.stderr.write(text + "\n");
}

/**
 * A note for options the user gave that a decoder does not use (classifier options), or
 * undefined. `names` are commander's option names (camelCase).
 */
export function classifierOnlyNote(cmd: { getOptionValueSource(name: string): string | undefined }, names: readonly string[], why: string): string | undefined {
  const given = names.filter((o) => cmd.getOptionValueSource(o) === "cli").map((o) => `--${o.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
  if (!given.length) return undefined;
  return `note: ${given.join(", ")} ${given.length > 1 ? "apply" : "applies"} to classifiers only: ${why}`;
}
