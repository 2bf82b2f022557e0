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
