/**
 * Certifying a plan on samples the search never saw (Learn-then-Test with fixed-sequence testing
 * along the tuned Pareto frontier, as in Pareto Testing). For each configuration, H0: its true
 * accuracy drop exceeds the maximum. Configurations are tested from the safest to the most
 * aggressive; testing stops at the first that is not rejected at level delta = 1 - confidence,
 * and the last rejected one is certified. Fixed-sequence testing needs no multiplicity correction:
 * with probability at least 1 - delta the certified configuration's true drop is within the bound.
 *
 * p-values: losses in {0,1} (agreement with the model) use the exact binomial tail. Losses in
 * {-1,0,1} (against labels: -1 where an exit fixes a mistake of the model) get two valid p-values,
 * combined by Bonferroni: the binomial tail of the losses equal to 1 (their rate bounds the mean
 * loss from above) and Hoeffding-Bentkus on the losses mapped to [0,1].
 */

/** log of the binomial coefficient via lgamma. */
function logChoose(n: number, k: number): number {
  return lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1);
}

/** Lanczos approximation of log Gamma (accurate to ~1e-13 for x > 0). */
export function lgamma(x: number): number {
  const g = 7;
  const c = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
    12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];
  if (x < 0.5) return Math.log(Math.PI / Math.abs(Math.sin(Math.PI * x))) - lgamma(1 - x);
  const xx = x - 1;
  let a = c[0]!;
  const t = xx + g + 0.5;
  for (let i = 1; i < g + 2; i++) a += c[i]! / (xx + i);
  return 0.5 * Math.log(2 * Math.PI) + (xx + 0.5) * Math.log(t) - t + Math.log(a);
}

/** P(Binomial(n, p) <= k). */
export function binomialCdf(k: number, n: number, p: number): number {
  if (k < 0) return 0;
  if (k >= n) return 1;
  if (p <= 0) return 1;
  if (p >= 1) return 0;
  let sum = 0;
  for (let i = 0; i <= k; i++) sum += Math.exp(logChoose(n, i) + i * Math.log(p) + (n - i) * Math.log1p(-p));
  return Math.min(1, sum);
}

/** p-value of H0: risk >= alpha, for k losses of 1 among n (exact binomial). */
export function binomialPValue(k: number, n: number, alpha: number): number {
  return binomialCdf(k, n, alpha);
}

/** Hoeffding-Bentkus p-value of H0: risk >= alpha, for losses in [0, 1] with mean rhat over n. */
export function hoeffdingBentkusPValue(rhat: number, n: number, alpha: number): number {
  const h1 = (a: number, b: number): number => {
    const x = Math.min(a, b);
    const t1 = x > 0 ? x * Math.log(x / b) : 0;
    const t2 = x < 1 ? (1 - x) * Math.log((1 - x) / (1 - b)) : 0;
    return t1 + t2;
  };
  const hoeffding = Math.exp(-n * h1(Math.min(rhat, alpha), alpha));
  const bentkus = Math.E * binomialCdf(Math.ceil(n * rhat), n, alpha);
  return Math.min(1, hoeffding, bentkus);
}

/** Clopper-Pearson upper confidence bound on a binomial rate at level delta (bisection). */
export function binomialUpperBound(k: number, n: number, delta: number): number {
  if (k >= n) return 1;
  let lo = k / n;
  let hi = 1;
  for (let i = 0; i < 60; i++) {
    const mid = (lo + hi) / 2;
    if (binomialCdf(k, n, mid) > delta) lo = mid;
    else hi = mid;
  }
  return hi;
}

export interface Certificate {
  method: "binomial" | "bonferroni(binomial, hoeffding-bentkus)";
  /** Certification samples. */
  n: number;
  /** Observed drop on them. */
  observedDrop: number;
  pValue: number;
  /** Upper confidence bound on the true drop at this confidence (binomial losses only). */
  bound: number | null;
  confidence: number;
  maxDrop: number;
  /** Configurations tested along the frontier before the sequence stopped. */
  tested: number;
}

/** p-value for one configuration's per-sample losses on the certification set. */
export function pValueOf(losses: Int8Array, maxDrop: number, signed: boolean): { p: number; method: Certificate["method"]; observed: number } {
  const n = losses.length;
  let sum = 0;
  let positives = 0;
  for (const l of losses) {
    sum += l;
    if (l > 0) positives++;
  }
  const observed = sum / Math.max(1, n);
  if (!signed) return { p: binomialPValue(sum, n, maxDrop), method: "binomial", observed };
  // Map {-1, 0, 1} to [0, 1]: L' = (L + 1) / 2, threshold (maxDrop + 1) / 2.
  const hb = hoeffdingBentkusPValue((observed + 1) / 2, n, (maxDrop + 1) / 2);
  const bin = binomialPValue(positives, n, maxDrop);
  return { p: Math.min(1, 2 * Math.min(hb, bin)), method: "bonferroni(binomial, hoeffding-bentkus)", observed };
}

/** Smallest certification set that could certify any configuration with zero observed losses. */
export function minimumCertifiable(maxDrop: number, delta: number): number {
  return Math.ceil(Math.log(delta) / Math.log1p(-maxDrop));
}

/**
 * Betting p-value (Waudby-Smith & Ramdas) of H0: mean loss >= alpha, for losses in [0, 1] taken
 * in the given order (fix the order before looking at the losses). The capital
 * K_t = prod (1 + lambda_i (alpha - x_i)) is a nonnegative supermartingale under H0, so by Ville's
 * inequality 1 / max_t K_t is a valid p-value. lambda_i is predictable (from x_1..x_{i-1}: the
 * plug-in rate sqrt(2 log(1/delta) / (n var)), capped below 1 / (1 - alpha)). For losses whose
 * spread is small against [0, 1] (the share of differing tokens in a sequence) it is far tighter
 * than Hoeffding-Bentkus, which must assume the worst variance.
 */
export function bettingPValue(losses: ArrayLike<number>, alpha: number, delta: number): number {
  const n = losses.length;
  if (n === 0) return 1;
  if (alpha >= 1) return 0;
  const cap = 0.9 / (1 - alpha);
  let logK = 0;
  let best = 0;
  let mean = 0.5;
  let sumSq = 0.25;
  const logInvDelta = Math.log(1 / delta);
  for (let i = 0; i < n; i++) {
    const variance = sumSq / (i + 1);
    const lambda = Math.min(cap, Math.sqrt((2 * logInvDelta) / (n * Math.max(variance, 1e-8))));
    const x = Math.min(1, Math.max(0, losses[i]!));
    logK += Math.log1p(lambda * (alpha - x));
    if (logK > best) best = logK;
    sumSq += (x - mean) ** 2;
    mean = (mean * (i + 1) + x) / (i + 2);
  }
  return Math.min(1, Math.exp(-best));
}

/** Smallest alpha the betting test rejects at level delta: an upper confidence bound on the mean loss. */
export function bettingUpperBound(losses: ArrayLike<number>, delta: number): number {
  let lo = 0;
  let hi = 1;
  for (let i = 0; i < 40; i++) {
    const mid = (lo + hi) / 2;
    if (bettingPValue(losses, mid, delta) <= delta) hi = mid;
    else lo = mid;
  }
  return hi;
}
