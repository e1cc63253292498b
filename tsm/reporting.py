"""Tables and claim tests over seeds, shared by the studies under ``experiments/``.

Why one module of this length: the paired and Welch comparisons, the exact sign-flip
test, Holm and the verdict rule are one statistical engine whose parts decide together.

A study trains each variant (a loss, a margin schedule, ...) under several seeds; this
module turns the per-seed numbers into mean ± std cells, writes them as Markdown and CSV,
and decides paper claims from the numbers with a significance test.

The decision rule (one rule for every study). A claim "A is better than B on metric m" is
tested from the per-seed values of A and B by :func:`compare`:

* **Paired** (the default): runs of both arms that share a seed share the initialisation,
  the split and the batches, so the per-seed differences ``d_k = A_k − B_k`` (sign chosen so
  that ``d > 0`` favours the claim) remove the seed effect. Only the seeds with a value in
  both arms count (the complete pairs, :func:`complete_pairs`); the arms' cells of a
  verdict table summarise the same pairs. Two tests of ``mean(d) > 0``, both one-sided:
  the paired t-test (``scipy.stats.t`` with ``n − 1`` degrees of freedom;
  ``Comparison.p_t``), which assumes roughly normal differences, and the exact sign-flip
  permutation test (``Comparison.p_permutation``, :func:`sign_flip_p_value`), which needs
  only symmetry of ``d`` about 0 under the null. The claim's p-value is the larger of the
  two (``p_value = max(p_t, p_permutation)``; a valid p-value, since it is at most
  ``alpha`` only when both are), so a claim is decided only where the distribution-free
  test agrees: equal differences (zero spread, where the t statistic is undefined, e.g.
  integer metrics such as epoch counts) read by the sign-flip test alone, whose p-value
  is at least ``2^-n`` — two seeds can never show a claim at 0.05, five can (1/32).
  With 10 seeds and a true difference of one standard deviation the combined test loses
  about half a percentage point of power against the t-test alone
  (``tests/test_compare_power.py``). Interval: the two-sided 95 % t interval of
  ``mean(d)``.
* **Unpaired** (``paired=False``, arms that do not share seeds): Welch's t-test (unequal
  variances, Welch–Satterthwaite degrees of freedom) and its 95 % interval, with the
  two-sample permutation test of the difference of means (``scipy.stats.permutation_test``,
  exact up to :data:`MAX_EXACT_SPLITS` relabellings, else that many random ones from a
  fixed seed) in the role of the sign-flip test.
* **Verdict**: ``"held"`` when the one-sided test of the claim rejects at ``alpha``;
  ``"contradicted"`` when the one-sided test of the reverse claim rejects at ``alpha``;
  ``"inconclusive"`` otherwise (also with fewer than two values per arm or pair). For the
  claims of one study use :func:`decide`, which applies Holm's step-down correction
  (:func:`holm`) to the claims' p-values and, separately, to the reverse claims' p-values,
  so that the chance of any false "held" in the family is at most ``alpha`` (and likewise
  for any false "contradicted"), whatever the dependence between the claims.
* **Minimum detectable effect** (``Comparison.mde``): the smallest true difference in the
  claim's favour that the one-sided test at ``alpha`` detects with 80 % power, given the
  observed spread: ``mde = λ · se`` where ``se`` is the standard error of the mean
  difference and ``λ`` solves ``P(T' > t_{1−α, df}) = 0.8`` for ``T'`` noncentral t with
  ``df`` degrees of freedom and noncentrality ``λ`` (``scipy.stats.nct``; exact for the
  paired test under normality, the usual approximation for Welch). A difference below the
  MDE that reads "inconclusive" says "too few seeds", not "no difference". Where the
  permutation test cannot reach ``alpha`` at all (``2^-n > alpha`` paired) the MDE is
  infinite.
* **Edge cases**: ``None`` and NaN values are dropped (pairwise when paired; ``n`` counts
  what is left); when every difference is equal (zero spread, e.g. deterministic runs)
  the t-test's limit is taken (``p_t = 0`` in the direction of a non-zero difference,
  ``1`` against it and both ways when all differences are 0; interval of width 0) and
  the permutation p-value decides.

With 10 paired seeds a true difference of one standard deviation of the per-seed
difference reads "held" in about 90 % of studies and a null difference in 5 % (tested by
Monte Carlo in ``tests/test_compare_power.py``).

References:
  Holm, S. (1979). A simple sequentially rejective multiple test procedure. Scandinavian
  Journal of Statistics, 6(2), 65–70.
  Welch, B. L. (1947). The generalization of "Student's" problem when several different
  population variances are involved. Biometrika, 34(1–2), 28–35.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from tsm import _extras

_extras.require(__name__, "scipy")   # else one line naming tsm[train]

from scipy import optimize
from scipy import stats as sps

from tsm import artifacts

HELD = "held"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
VERDICTS = (HELD, CONTRADICTED, INCONCLUSIVE)

CONFIDENCE = 0.95
POWER = 0.8
# Sign patterns are counted exactly up to this many pairs (meet in the middle: two halves
# of at most 2^20 sums); beyond it PERMUTATION_DRAWS random patterns.
MAX_EXACT_PERMUTATION = 40
# Two-sample relabellings enumerated exactly up to this many; beyond, that many random.
MAX_EXACT_SPLITS = 100_000
PERMUTATION_DRAWS = 100_000
PERMUTATION_SEED = 0


@dataclasses.dataclass(frozen=True)
class Summary:
  """Mean and sample standard deviation of one quantity over seeds."""
  mean: float
  std: float
  n: int

  def format(self, digits: int = 4) -> str:
    if self.n == 0 or not math.isfinite(self.mean):
      return "n/a"
    if self.n == 1:
      return f"{self.mean:.{digits}f}"
    return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def summarize(values: Iterable[float | None]) -> Summary:
  """Mean and sample std (ddof=1; 0 for one value) of the finite values given.

  Args:
    values: per-seed values; ``None`` and non-finite entries are dropped.

  Returns:
    A :class:`Summary` (``n == 0`` and NaN mean when nothing finite was given).
  """
  x = np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))],
                 dtype=np.float64)
  if x.size == 0:
    return Summary(float("nan"), float("nan"), 0)
  std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
  return Summary(float(np.mean(x)), std, int(x.size))


# ----------------------------------------------------------------------------- claim tests


@dataclasses.dataclass(frozen=True)
class Comparison:
  """The test of one claim "A is better than B" (rule in the module docstring).

  Attributes:
    mean_diff: mean difference in the claim's favour (A − B, or B − A when lower is
      better); paired: mean of the per-seed differences.
    ci_low: lower end of the two-sided 95 % interval of ``mean_diff``.
    ci_high: upper end of that interval.
    p_value: one-sided p-value of the claim (small: evidence that A is better): the
      larger of ``p_t`` and ``p_permutation``.
    p_reverse: one-sided p-value of the reverse claim (small: evidence that B is better):
      the larger of ``p_t_reverse`` and ``p_permutation_reverse``.
    n: pairs used (paired) or the smaller arm's count (unpaired), after dropping
      missing values.
    n_a: values of A used.
    n_b: values of B used.
    mde: smallest true difference the one-sided test at ``alpha`` detects with 80 % power
      given the observed spread (NaN with fewer than two values per arm).
    verdict: ``"held"``, ``"contradicted"`` or ``"inconclusive"``.
    paired: whether the paired t-test (else Welch's) was used.
    se: standard error of ``mean_diff``.
    df: degrees of freedom of the t distribution used.
    p_permutation: permutation p-value of the claim: sign-flip (paired,
      :func:`sign_flip_p_value`) or two-sample (unpaired); NaN under two values.
    alpha: level the verdict was decided at.
    p_adjusted: Holm-adjusted ``p_value`` within the family (``p_value`` when alone).
    p_reverse_adjusted: Holm-adjusted ``p_reverse`` within the family.
    p_t: the t-test's one-sided p-value of the claim (paired t or Welch).
    p_t_reverse: the t-test's one-sided p-value of the reverse claim.
    p_permutation_reverse: the permutation p-value of the reverse claim.
    n_given: seeds given (paired: the length of each arm, complete or not; unpaired:
      the values given in both arms together).
  """
  mean_diff: float
  ci_low: float
  ci_high: float
  p_value: float
  p_reverse: float
  n: int
  n_a: int
  n_b: int
  mde: float
  verdict: str
  paired: bool
  se: float
  df: float
  p_permutation: float
  alpha: float
  p_adjusted: float
  p_reverse_adjusted: float
  p_t: float = float("nan")
  p_t_reverse: float = float("nan")
  p_permutation_reverse: float = float("nan")
  n_given: int = 0

  def seeds_cell(self) -> str:
    """``"20"``, or ``"18 of 20"`` when seeds without a value in both arms were dropped
    (paired)."""
    if self.paired and self.n_given > self.n:
      return f"{self.n} of {self.n_given}"
    return str(self.n)

  def cells(self, digits: int = 3) -> list[str]:
    """The claim's cells under :data:`COMPARISON_HEADER`, for a verdict table (an MDE
    the permutation test cannot reach with this many seeds reads ``"∞"``)."""
    def num(x: float) -> str:
      return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"
    def prob(x: float) -> str:
      return "n/a" if not math.isfinite(x) else f"{x:.2g}" if x < 0.001 else f"{x:.3f}"
    return [self.format(digits), self.seeds_cell(), prob(self.p_value),
            prob(self.p_adjusted),
            "∞" if self.mde == math.inf else num(self.mde), self.verdict]

  def format(self, digits: int = 3) -> str:
    """Table cell: ``"+0.012 [0.004, 0.020]"`` (``"n/a"`` with no data)."""
    if not math.isfinite(self.mean_diff):
      return "n/a"
    text = f"{self.mean_diff:+.{digits}f}"
    if math.isfinite(self.ci_low) and math.isfinite(self.ci_high):
      return f"{text} [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"
    return f"{text} (n={self.n})"


COMPARISON_HEADER = ("A better by [95% CI]", "seeds", "p (one-sided)", "p (Holm)",
                     "MDE (80% power)", "verdict")


def _finite_or_nan(values: Iterable[float | None], name: str) -> np.ndarray:
  """Values as float64 with ``None`` and inf mapped to NaN (missing)."""
  if not isinstance(values, (str, bytes, np.ndarray)):
    values = list(values)   # generators too
  if isinstance(values, (str, bytes)) or np.ndim(values) != 1:
    raise ValueError(f"{name} must be a 1-D sequence of per-seed values, got "
                     f"{type(values).__name__}; pass one number (or None) per seed.")
  x = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
  return np.where(np.isfinite(x), x, np.nan)


@functools.lru_cache(maxsize=512)
def _noncentrality(df: float, alpha: float, power: float = POWER) -> float:
  """Noncentrality λ at which the one-sided t-test at ``alpha`` has the given power."""
  t_crit = sps.t.isf(alpha, df)
  power_at = lambda lam: sps.nct.sf(t_crit, df, lam) - power  # noqa: E731
  hi = t_crit + 4.0
  while power_at(hi) < 0.0:   # heavy tails at small df need a larger bracket
    hi *= 2.0
  return float(optimize.brentq(power_at, 0.0, hi, xtol=1e-10))


def _signed_sums(d: np.ndarray) -> np.ndarray:
  """The ``2^n`` sums ``sum(s_k d_k)`` over sign patterns ``s`` (the all-plus one last)."""
  sums = np.zeros(1)
  for value in d:
    sums = np.concatenate([sums - value, sums + value])
  return sums


def complete_pairs(a: Iterable[float | None], b: Iterable[float | None]
                   ) -> tuple[np.ndarray, np.ndarray]:
  """The values of the seeds with a finite value in both arms, as two float64 arrays.

  Args:
    a: per-seed values of one arm (``None``/NaN/inf: missing).
    b: per-seed values of the other, in the same seed order and of the same length.

  Returns:
    ``(a_complete, b_complete)``, each ``[n]``, in seed order: the pairs a paired test
    uses (and a verdict table's cells summarise).
  """
  xa, xb = _finite_or_nan(a, "a"), _finite_or_nan(b, "b")
  if xa.size != xb.size:
    raise ValueError(f"a and b have {xa.size} and {xb.size} values; paired=True needs "
                     "one value per seed in each (same seed order), or pass "
                     "paired=False.")
  keep = np.isfinite(xa) & np.isfinite(xb)
  return xa[keep], xb[keep]


def sign_flip_p_value(differences: Iterable[float]) -> float:
  """One-sided sign-flip permutation p-value of ``mean(differences) > 0``.

  Under the null the differences are symmetric about 0, so each of the ``2^n`` sign
  patterns is equally likely; the p-value is the share of patterns whose sum is at least
  the observed sum (the observed pattern included, so it is never 0; sums within
  ``1e-12 * sum(|d|)`` of the observed one count as ties).

  Exact for ``n <=`` :data:`MAX_EXACT_PERMUTATION` (40): the sums of each half's
  ``2^(n/2)`` patterns are enumerated, one half sorted, and the patterns of the whole
  counted by binary search (meet in the middle: ``O(2^(n/2) n)`` time and memory instead
  of ``O(2^n n)``), so real-valued differences need no rounding. For more
  seeds: :data:`PERMUTATION_DRAWS` random patterns from
  ``default_rng(PERMUTATION_SEED)``, ``p = (1 + hits) / (1 + draws)`` (a valid p-value;
  its Monte Carlo standard error is at most ``0.5 / sqrt(draws)``, 0.0016).

  Args:
    differences: ``n >= 1`` finite per-seed differences (claim's favour positive).

  Returns:
    The p-value in ``[2^-n, 1]``.

  References:
    Fisher, R. A. (1935). The Design of Experiments, section 21.
    Horowitz, E., Sahni, S. (1974). Computing partitions with applications to the
    knapsack problem. Journal of the ACM, 21(2), 277–292 (meet in the middle).
  """
  d = np.asarray(list(differences), dtype=np.float64)
  if d.ndim != 1 or d.size == 0:
    raise ValueError(f"differences must hold at least one value, got shape {d.shape}; "
                     "pass one difference per seed.")
  if not np.all(np.isfinite(d)):
    raise ValueError("differences contain NaN or inf; drop missing seeds first.")
  tol = 1e-12 * float(np.sum(np.abs(d)))
  if d.size > MAX_EXACT_PERMUTATION:
    rng = np.random.default_rng(PERMUTATION_SEED)
    hits = 0
    observed = float(np.sum(d))
    for start in range(0, PERMUTATION_DRAWS, 10_000):
      signs = rng.choice((-1.0, 1.0), size=(min(10_000, PERMUTATION_DRAWS - start), d.size))
      hits += int(np.sum(signs @ d >= observed - tol))
    return (1 + hits) / (1 + PERMUTATION_DRAWS)
  half = d.size // 2
  first, second = _signed_sums(d[:half]), np.sort(_signed_sums(d[half:]))
  observed = _signed_sums(d[:half])[-1] + _signed_sums(d[half:])[-1]
  # For each sum of the first half, the second-half sums that reach the observed one.
  below = np.searchsorted(second, observed - tol - first, side="left")
  return float(np.sum(second.size - below)) / 2.0 ** d.size


def two_sample_p_value(a: np.ndarray, b: np.ndarray) -> float:
  """One-sided two-sample permutation p-value of ``mean(a) - mean(b) > 0``.

  ``scipy.stats.permutation_test`` over relabellings of the pooled values: all of them
  when there are at most :data:`MAX_EXACT_SPLITS`, else that many random ones from
  ``default_rng(PERMUTATION_SEED)``.

  Args:
    a: finite values of one arm (at least one).
    b: finite values of the other (at least one).

  Returns:
    The p-value.
  """
  exact = math.comb(a.size + b.size, a.size) <= MAX_EXACT_SPLITS
  result = sps.permutation_test(
      (a, b), lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
      permutation_type="independent", alternative="greater", vectorized=True,
      n_resamples=np.inf if exact else MAX_EXACT_SPLITS,
      rng=np.random.default_rng(PERMUTATION_SEED))
  return float(result.pvalue)


def _rounding_tolerance(xa: np.ndarray, xb: np.ndarray) -> float:
  """Spreads below this are rounding of the inputs, not seed variation (so 0.7 − 0.6 and
  0.8 − 0.7 count as equal differences, and the zero-spread answer is exact)."""
  values = np.abs(np.concatenate([xa, xb]))
  values = values[np.isfinite(values)]
  return 1e-12 * float(np.max(values)) if values.size else 0.0


def _t_result(mean: float, se: float, df: float, alpha: float
              ) -> tuple[float, float, float, float, float]:
  """(p_value, p_reverse, ci_low, ci_high, mde) of a t statistic ``mean / se``.

  The t distribution is scipy's; the statistic is formed here rather than by
  ``scipy.stats.ttest_rel`` / ``ttest_ind(equal_var=False)`` because the rule needs what
  those do not give: the exact answer for equal differences (zero spread up to the
  inputs' rounding, where scipy gives NaN, or a huge t with a precision-loss warning:
  0.7 - 0.6 and 0.8 - 0.7 differ in their last bits), and ``se`` and
  ``df`` for the MDE. Over 3,000 random paired and Welch cases the two agree to 5e-13
  (relative) in p-values and interval ends, but not to the last bit in a quarter of
  them, so the studies' stored numbers would change.
  """
  if se == 0.0:   # every difference equal: the answer is exact
    p = 0.0 if mean > 0 else 1.0
    p_rev = 0.0 if mean < 0 else 1.0
    return p, p_rev, mean, mean, 0.0
  t = mean / se
  half = float(sps.t.ppf(0.5 + CONFIDENCE / 2.0, df)) * se
  return (float(sps.t.sf(t, df)), float(sps.t.cdf(t, df)), mean - half, mean + half,
          _noncentrality(float(df), float(alpha)) * se)


def compare(a: Iterable[float | None], b: Iterable[float | None], *, paired: bool = True,
            higher_is_better: bool = True, alpha: float = 0.05) -> Comparison:
  """Tests the claim "A is better than B" from per-seed values (rule in the module doc).

  Args:
    a: per-seed values of the variant the claim favours (``None``/NaN: missing).
    b: per-seed values of the variant it is compared with; when ``paired``, in the same
      seed order as ``a``.
    paired: paired t-test over seeds shared by both arms (default); ``False``: Welch.
    higher_is_better: whether larger values of the metric are better.
    alpha: one-sided level of the verdict, in ``(0, 0.5)``.

  Returns:
    A :class:`Comparison`. For the claims of one study pass all of them to
    :func:`decide`, which replaces each verdict by the Holm-corrected one.

  References:
    Student (1908). The probable error of a mean. Biometrika, 6(1), 1–25.
    Welch, B. L. (1947). Biometrika, 34(1–2), 28–35.
  """
  if not 0.0 < alpha < 0.5:
    raise ValueError(f"alpha={alpha} must be in (0, 0.5); it is the one-sided level, "
                     "e.g. 0.05.")
  a, b = _finite_or_nan(a, "a"), _finite_or_nan(b, "b")
  sign = 1.0 if higher_is_better else -1.0
  nan = float("nan")
  if paired:
    xa, xb = complete_pairs(a, b)
    n_given = int(a.size)
    d = sign * (xa - xb)
    n = n_a = n_b = int(d.size)
    mean = float(np.mean(d)) if n else nan
    df = float(n - 1)
    if n >= 2:
      tol = _rounding_tolerance(xa, xb)
      if np.ptp(d) <= tol:   # equal differences, up to the rounding of the inputs
        if abs(mean) <= tol:
          mean, d = 0.0, np.zeros_like(d)
        else:
          d = np.full_like(d, mean)
        se = 0.0
      else:
        se = float(np.std(d, ddof=1) / math.sqrt(n))
      p_perm, p_perm_rev = sign_flip_p_value(d), sign_flip_p_value(-d)
      reachable = 2.0 ** -n <= alpha
  else:
    xa, xb = a[np.isfinite(a)], b[np.isfinite(b)]
    n_a, n_b = int(xa.size), int(xb.size)
    n, n_given = min(n_a, n_b), n_a + n_b
    mean = sign * float(np.mean(xa) - np.mean(xb)) if n else nan
    if n >= 2:
      tol = _rounding_tolerance(xa, xb)
      va, vb = (0.0 if np.ptp(x) <= tol else float(np.var(x, ddof=1)) / x.size
                for x in (xa, xb))
      se = math.sqrt(va + vb)
      if se == 0.0 and abs(mean) <= tol:
        mean = 0.0
      df = (float((va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1)))
            if se > 0.0 else float(n_a + n_b - 2))
      first, second = (xa, xb) if sign > 0 else (xb, xa)
      p_perm = two_sample_p_value(first, second)
      p_perm_rev = two_sample_p_value(second, first)
      reachable = 1.0 / math.comb(n_a + n_b, n_a) <= alpha
  if n < 2:
    return Comparison(mean, nan, nan, nan, nan, n, n_a, n_b, nan, INCONCLUSIVE, paired,
                      nan, nan, nan, alpha, nan, nan, nan, nan, nan, n_given)
  p_t, p_t_rev, lo, hi, mde = _t_result(mean, se, df, alpha)
  p, p_rev = max(p_t, p_perm), max(p_t_rev, p_perm_rev)
  if not reachable:   # no data of this size can reach alpha by the permutation test
    mde = math.inf
  decision = HELD if p <= alpha else CONTRADICTED if p_rev <= alpha else INCONCLUSIVE
  return Comparison(mean, lo, hi, p, p_rev, n, n_a, n_b, mde, decision, paired, se, df,
                    p_perm, alpha, p, p_rev, p_t, p_t_rev, p_perm_rev, n_given)


def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
  """Holm's step-down correction of a family of p-values.

  Sort the ``m`` p-values ascending, ``p_(1) <= ... <= p_(m)``; reject ``H_(1) ... H_(k)``
  for the largest ``k`` with ``p_(j) <= alpha / (m − j + 1)`` for every ``j <= k``. The
  adjusted p-value is ``max_{j <= i} min(1, (m − j + 1) p_(j))``. The chance of any false
  rejection is at most ``alpha`` under any dependence between the tests. NaN p-values
  (claims that could not be tested) stay in the family (they count in ``m``), are
  ordered last, never rejected, and keep a NaN adjusted p-value.

  Args:
    p_values: ``[m]`` p-values in ``[0, 1]`` (NaN allowed).
    alpha: family-wise error rate.

  Returns:
    ``(adjusted, reject)``: float ``[m]`` adjusted p-values and bool ``[m]`` rejections,
    in the input order.

  References:
    Holm, S. (1979). Scandinavian Journal of Statistics, 6(2), 65–70.
  """
  p = np.asarray(p_values, dtype=np.float64)
  if p.ndim != 1:
    raise ValueError(f"p_values must be 1-D, got shape {p.shape}; pass one per claim.")
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha={alpha} must be in (0, 1), e.g. 0.05.")
  missing = np.isnan(p)
  if np.any((p[~missing] < 0.0) | (p[~missing] > 1.0)):
    raise ValueError("p_values must lie in [0, 1]; pass p-values, not statistics.")
  m = p.size
  order = np.argsort(np.where(missing, np.inf, p), kind="stable")
  ps = np.where(missing, 1.0, p)[order]
  k = m - np.arange(m)               # m, m - 1, ..., 1
  adjusted = np.empty(m)
  reject = np.empty(m, dtype=bool)
  adjusted[order] = np.minimum(1.0, np.maximum.accumulate(ps * k))
  reject[order] = np.logical_and.accumulate(ps <= alpha / k)
  adjusted[missing] = np.nan
  reject[missing] = False
  return adjusted, reject


def decide(comparisons: Sequence[Comparison], alpha: float = 0.05) -> list[Comparison]:
  """Final verdicts of the claims of one study, Holm-corrected over the family.

  "held" where Holm over the claims' one-sided p-values rejects; "contradicted" where
  Holm over the reverse claims' one-sided p-values rejects; "inconclusive" otherwise.

  Args:
    comparisons: the study's claims, each from :func:`compare`.
    alpha: family-wise level of each kind of verdict.

  Returns:
    The comparisons in the same order with ``verdict``, ``alpha``, ``p_adjusted`` and
    ``p_reverse_adjusted`` replaced.
  """
  adj, held = holm([c.p_value for c in comparisons], alpha)
  adj_rev, contradicted = holm([c.p_reverse for c in comparisons], alpha)
  out = []
  for c, pa, pr, h, x in zip(comparisons, adj, adj_rev, held, contradicted):
    decision = HELD if h and not x else CONTRADICTED if x and not h else INCONCLUSIVE
    out.append(dataclasses.replace(c, verdict=decision, alpha=alpha, p_adjusted=float(pa),
                                   p_reverse_adjusted=float(pr)))
  return out


def tar_cell(values: Iterable[float | None], num_different: int, far: float, *,
             digits: int = 4) -> str:
  """Table cell of TAR at ``far`` over seeds: mean ± std, or "—" and why not measured.

  Args:
    values: per-seed ``tar@far=...`` values (NaN where it was not measured).
    num_different: different-class pairs each seed was evaluated on
      (``verification_metrics``' ``num_different``; the smallest over seeds).
    far: the false accept rate.
    digits: decimals of the mean and std.

  Returns:
    ``Summary.format`` of the values, or ``"— (500 different pairs < 10/FAR = 10,000)"``
    when the pairs cannot resolve ``far`` (``tsm.metrics.verification``'s rule).
  """
  # Imported here: tsm.metrics pulls in jax, which reading run directories never needs.
  from tsm.metrics import verification  # pylint: disable=import-outside-toplevel
  reason = verification.tar_unmeasurable_reason(num_different, far)
  if reason is not None:
    return f"— ({reason})"
  return summarize(values).format(digits)


def best_index(summaries: Sequence[Summary], *, higher_is_better: bool) -> int | None:
  """Index of the best mean among ``summaries`` (None if none is finite)."""
  means = [s.mean if s.n else float("nan") for s in summaries]
  finite = [i for i, m in enumerate(means) if math.isfinite(m)]
  if not finite:
    return None
  key = (lambda i: means[i]) if higher_is_better else (lambda i: -means[i])
  return max(finite, key=key)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub-flavoured Markdown table; cells are converted with ``str``."""
  def line(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
  out = [line(header), "|" + "|".join("---" for _ in header) + "|"]
  out += [line(r) for r in rows]
  return "\n".join(out) + "\n"


def write_table(header: Sequence[str], rows: Sequence[Sequence[Any]], md_path: str,
                csv_path: str, *, title: str | None = None) -> str:
  """Writes one table as Markdown and CSV (atomically) and returns the Markdown.

  Args:
    header: column names.
    rows: rows of cells (strings or numbers).
    md_path: Markdown file to write.
    csv_path: CSV file to write.
    title: optional heading line above the Markdown table.

  Returns:
    The Markdown text written.
  """
  md = (f"## {title}\n\n" if title else "") + markdown_table(header, rows)
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(header)
  writer.writerows(rows)
  artifacts.write_atomic(md_path, md)
  artifacts.write_atomic(csv_path, buf.getvalue())
  return md


def per_seed(results: Sequence[Mapping[str, Any]], key: str) -> list[float | None]:
  """Values of a dotted key (``"test.map@r"``) across per-seed result dicts."""
  out = []
  for r in results:
    value: Any = r
    for part in key.split("."):
      value = value.get(part) if isinstance(value, Mapping) else None
    out.append(None if value is None else float(value))
  return out
