"""tsm.reporting: summaries, tables, claim tests against scipy and hand-computed cases."""

import csv
import dataclasses
import itertools
import math

import numpy as np
import pytest
from scipy import stats

from tsm import reporting


def test_summarize_hand_computed():
  s = reporting.summarize([1.0, 2.0, 3.0, None, float("nan")])
  assert s.n == 3 and s.mean == pytest.approx(2.0) and s.std == pytest.approx(1.0)
  assert s.format(2) == "2.00 ± 1.00"
  assert reporting.summarize([5.0]).format(1) == "5.0"
  empty = reporting.summarize([None])
  assert empty.n == 0 and math.isnan(empty.mean) and empty.format() == "n/a"


def test_best_index():
  s = [reporting.summarize(v) for v in ([1.0], [3.0], [None], [2.0])]
  assert reporting.best_index(s, higher_is_better=True) == 1
  assert reporting.best_index(s, higher_is_better=False) == 0
  assert reporting.best_index([reporting.summarize([None])], higher_is_better=True) is None


def test_write_table(tmp_path):
  md = reporting.write_table(["a", "b|c"], [[1, "x"], [2, "y"]], str(tmp_path / "t.md"),
                             str(tmp_path / "t.csv"), title="T")
  assert md.splitlines()[0] == "## T"
  assert "| a | b\\|c |" in md and "| 2 | y |" in md
  with open(tmp_path / "t.csv") as f:
    assert list(csv.reader(f)) == [["a", "b|c"], ["1", "x"], ["2", "y"]]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.md"]


def test_per_seed():
  results = [{"test": {"map@r": 0.5}}, {"test": {}}, {"test": {"map@r": 0.7}}]
  assert reporting.per_seed(results, "test.map@r") == [0.5, None, 0.7]


# ----------------------------------------------------------------------------- compare


def _arms(seed, n=8, shift=0.3):
  rng = np.random.default_rng(seed)
  shared = rng.normal(size=n)   # the seed's own effect, common to both arms
  return shared + shift + rng.normal(0, 0.5, n), shared + rng.normal(0, 0.5, n)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("higher", [True, False])
def test_paired_matches_scipy_ttest_rel(seed, higher):
  a, b = _arms(seed)
  c = reporting.compare(a, b, higher_is_better=higher)
  x, y = (a, b) if higher else (b, a)   # the claim's favour first
  greater = stats.ttest_rel(x, y, alternative="greater")
  less = stats.ttest_rel(x, y, alternative="less")
  ci = stats.ttest_rel(x, y).confidence_interval(0.95)
  assert c.paired and c.n == c.n_a == c.n_b == len(a)
  assert c.mean_diff == pytest.approx(np.mean(x - y), rel=1e-12)
  assert c.p_t == pytest.approx(greater.pvalue, rel=1e-9)
  assert c.p_t_reverse == pytest.approx(less.pvalue, rel=1e-9)
  assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
  assert c.df == greater.df and c.se == pytest.approx(np.std(x - y, ddof=1) / np.sqrt(8))
  # The claim's p-value: the larger of the t-test's and the exact sign-flip test's.
  flip = stats.permutation_test((x - y,), np.mean, permutation_type="samples",
                                alternative="greater", n_resamples=np.inf)
  flip_rev = stats.permutation_test((x - y,), np.mean, permutation_type="samples",
                                    alternative="less", n_resamples=np.inf)
  assert c.p_permutation == pytest.approx(flip.pvalue, rel=1e-12)
  assert c.p_permutation_reverse == pytest.approx(flip_rev.pvalue, rel=1e-12)
  p = max(greater.pvalue, flip.pvalue)
  p_rev = max(less.pvalue, flip_rev.pvalue)
  assert c.p_value == pytest.approx(p, rel=1e-9)
  assert c.p_reverse == pytest.approx(p_rev, rel=1e-9)
  expected = ("held" if p <= 0.05 else "contradicted" if p_rev <= 0.05 else
              "inconclusive")
  assert c.verdict == expected and c.p_adjusted == c.p_value


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_welch_matches_scipy_ttest_ind(seed):
  rng = np.random.default_rng(seed)
  a, b = rng.normal(0.4, 1.0, 7), rng.normal(0.0, 0.3, 5)
  c = reporting.compare(a, b, paired=False)
  greater = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
  less = stats.ttest_ind(a, b, equal_var=False, alternative="less")
  ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
  assert not c.paired and (c.n_a, c.n_b, c.n) == (7, 5, 5)
  assert c.p_t == pytest.approx(greater.pvalue, rel=1e-9)
  assert c.p_t_reverse == pytest.approx(less.pvalue, rel=1e-9)
  assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
  assert c.df == pytest.approx(greater.df, rel=1e-12)
  # Two-sample permutation test, exact (792 relabellings), by brute force.
  pooled = np.concatenate([a, b])
  observed = a.mean() - b.mean()
  splits = [np.array(i) for i in itertools.combinations(range(12), 7)]
  diffs = np.array([pooled[i].mean() - np.delete(pooled, i).mean() for i in splits])
  assert c.p_permutation == pytest.approx(np.mean(diffs >= observed - 1e-12), rel=1e-9)
  assert c.p_permutation_reverse == pytest.approx(np.mean(diffs <= observed + 1e-12),
                                                  rel=1e-9)
  assert c.p_value == max(c.p_t, c.p_permutation)
  assert c.p_reverse == max(c.p_t_reverse, c.p_permutation_reverse)


def test_mde_definition_and_scaling():
  # 80 % power of the one-sided paired test at the MDE, by the noncentral t distribution.
  a, b = _arms(5, n=10)
  c = reporting.compare(a, b)
  t_crit = stats.t.ppf(0.95, 9)
  assert stats.nct.sf(t_crit, 9, c.mde / c.se) == pytest.approx(0.8, abs=1e-8)
  # Normal approximation (z_{1-a} + z_{0.8}) * se is a lower bound for small n.
  assert c.mde > (stats.norm.ppf(0.95) + stats.norm.ppf(0.8)) * c.se
  # Four times the seeds, same per-seed spread: about half the MDE.
  d = np.asarray(a) - np.asarray(b)
  d = (d - d.mean()) / d.std(ddof=1)
  d40 = np.tile(d, 4)
  d40 = (d40 - d40.mean()) / d40.std(ddof=1)
  small = reporting.compare(d, np.zeros(10))
  big = reporting.compare(d40, np.zeros(40))
  assert 0.4 < big.mde / small.mde < 0.55


def test_zero_spread_is_decided_by_the_exact_sign_flip_test():
  # Differences all 0.1 (up to float rounding: 0.7 - 0.6 != 0.8 - 0.7 in binary): the
  # t-test's limit is p = 0, the sign-flip test's p is 2^-n (only the observed pattern
  # reaches the observed sum), and the larger decides.
  up = reporting.compare([0.7, 0.8, 0.9], [0.6, 0.7, 0.8])
  assert up.p_t == 0.0 and up.p_permutation == 1 / 8 and up.p_value == 1 / 8
  assert up.verdict == "inconclusive" and up.p_reverse == 1.0
  assert up.se == 0.0 and up.mde == math.inf   # 3 seeds: 1/8 > 0.05 whatever the effect
  assert up.ci_low == up.ci_high == up.mean_diff == pytest.approx(0.1, rel=1e-12)
  five = reporting.compare([0.7, 0.8, 0.9, 1.0, 1.1], [0.6, 0.7, 0.8, 0.9, 1.0])
  assert five.p_value == 1 / 32 and five.verdict == "held" and five.mde == 0.0
  noise = reporting.compare([0.3, 0.7, 0.9], [0.1 + 0.2, 0.7, 0.9])   # 0.30000000000000004
  assert noise.mean_diff == 0.0 and noise.p_value == noise.p_reverse == 1.0
  down = reporting.compare([0.7, 0.8, 0.9, 1.0, 1.1], [0.6, 0.7, 0.8, 0.9, 1.0],
                           higher_is_better=False)
  assert down.verdict == "contradicted" and down.p_value == 1.0
  assert down.p_reverse == 1 / 32
  same = reporting.compare([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
  assert same.verdict == "inconclusive" and same.p_value == same.p_reverse == 1.0
  assert same.p_permutation == 1.0 and same.format() == "+0.000 [0.000, 0.000]"
  # Welch with constant arms: the two-sample permutation test, 1 / C(5, 3) = 0.1.
  welch = reporting.compare([2.0, 2.0, 2.0], [1.0, 1.0], paired=False)
  assert welch.p_t == 0.0 and welch.p_value == pytest.approx(0.1)
  assert welch.verdict == "inconclusive" and welch.ci_low == 1.0


def test_identical_differences_never_held_by_the_t_limit_alone():
  # Two seeds with equal differences against a family of 59 others: the t-test's limit
  # (p = 0) would read "held" whatever n; the exact sign-flip p of two seeds is 1/4.
  family = reporting.decide([reporting.compare([1.1, 2.1], [1.0, 2.0])]
                            + [reporting.compare([1, 2, 3.1], [1, 2, 3])] * 59)
  assert family[0].verdict == "inconclusive"
  assert family[0].p_value == 0.25 == reporting.sign_flip_p_value([0.1, 0.1])
  # Integer metrics (epoch counts): 5 seeds, each 2 epochs earlier: 1/32 alone, never
  # under Holm over 3 claims (needs 1/32 <= 0.05 / 3).
  epochs_a, epochs_b = [3, 4, 3, 5, 4], [5, 6, 5, 7, 6]
  alone = reporting.compare(epochs_a, epochs_b, higher_is_better=False)
  assert alone.verdict == "held" and alone.p_value == 1 / 32
  three = reporting.decide([alone] * 3)
  assert {c.verdict for c in three} == {"inconclusive"}
  # Near-zero spread: the t-test alone would give 2e-4; the sign-flip test 1/32.
  near = reporting.compare([2, 2, 2, 2, 3], [0, 0, 0, 0, 0])
  assert near.p_t < 1e-3 and near.p_value == 1 / 32


def test_missing_values_dropped_pairwise():
  a = [0.9, None, 0.8, float("nan"), 0.85, 0.7]
  b = [0.7, 0.6, None, 0.5, 0.65, 0.6]
  c = reporting.compare(a, b)
  ref = reporting.compare([0.9, 0.85, 0.7], [0.7, 0.65, 0.6])
  assert c == dataclasses.replace(ref, n_given=6) and c.n == 3
  assert c.seeds_cell() == "3 of 6" and ref.seeds_cell() == "3"
  xa, xb = reporting.complete_pairs(a, b)
  assert xa.tolist() == [0.9, 0.85, 0.7] and xb.tolist() == [0.7, 0.65, 0.6]
  w = reporting.compare(a, b, paired=False)
  assert (w.n_a, w.n_b) == (4, 5)
  assert w.p_t == pytest.approx(stats.ttest_ind(
      [0.9, 0.8, 0.85, 0.7], [0.7, 0.6, 0.5, 0.65, 0.6], equal_var=False,
      alternative="greater").pvalue)


@pytest.mark.parametrize("a, b", [([0.5], [0.4]), ([0.5, None], [0.4, 0.3]), ([], [])])
def test_fewer_than_two_pairs_is_inconclusive(a, b):
  c = reporting.compare(a, b)
  assert c.verdict == "inconclusive" and c.n < 2
  assert np.isnan(c.p_value) and np.isnan(c.ci_low) and np.isnan(c.mde)
  assert c.format() in ("n/a", "+0.100 (n=1)")


def test_generators_and_empty_family():
  a, b = [0.9, 0.8, 0.85], [0.7, 0.65, 0.6]
  assert reporting.compare(iter(a), (x for x in b)) == reporting.compare(a, b)
  assert reporting.decide([]) == []


def test_compare_errors():
  with pytest.raises(ValueError, match="paired=False"):
    reporting.compare([1.0, 2.0, 3.0], [1.0, 2.0])
  with pytest.raises(ValueError, match="alpha"):
    reporting.compare([1.0, 2.0], [1.0, 2.0], alpha=0.7)
  with pytest.raises(ValueError, match="1-D"):
    reporting.compare([[1.0, 2.0]], [[1.0, 2.0]])


def test_format():
  c = reporting.compare([0.512, 0.520, 0.528], [0.500, 0.508, 0.512])
  lo, hi = c.ci_low, c.ci_high
  assert c.format() == f"+{c.mean_diff:.3f} [{lo:.3f}, {hi:.3f}]"
  assert c.format().startswith("+0.013 [")
  with pytest.raises(dataclasses.FrozenInstanceError):
    c.verdict = "held"


# ----------------------------------------------------------------------------- sign flip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sign_flip_matches_brute_force_enumeration(seed):
  d = np.random.default_rng(seed).normal(0.3, 1.0, 9)
  observed = d.sum()
  count = sum(np.dot(s, d) >= observed - 1e-12
              for s in itertools.product((1.0, -1.0), repeat=d.size))
  assert reporting.sign_flip_p_value(d) == pytest.approx(count / 2 ** d.size)
  exact = stats.permutation_test((d,), np.mean, permutation_type="samples",
                                 alternative="greater", n_resamples=np.inf)
  assert reporting.sign_flip_p_value(d) == pytest.approx(exact.pvalue)
  assert reporting.compare(d, np.zeros_like(d)).p_permutation == pytest.approx(count / 512)


def test_sign_flip_hand_computed_and_ties():
  # d = (1, 2, 3): sums of the 8 patterns 6, 4, 2, 0, 0, -2, -4, -6 -> only 6 >= 6.
  assert reporting.sign_flip_p_value([1.0, 2.0, 3.0]) == 1 / 8
  # d = (1, 1): sums 2, 0, 0, -2 -> p(>= 2) = 1/4.
  assert reporting.sign_flip_p_value([1.0, 1.0]) == 0.25
  # d = (0.3, -0.1, -0.2): observed sum 0; sums 0.6, 0.4, 0.2, 0, -0.3+0.1+0.2 (0 up to
  # rounding: a tie), -0.2, -0.4, -0.6 -> 5/8.
  assert reporting.sign_flip_p_value([0.3, -0.1, -0.2]) == 5 / 8
  with pytest.raises(ValueError, match="at least one value"):
    reporting.sign_flip_p_value([])


@pytest.mark.parametrize("n", [17, 18])
def test_sign_flip_exact_beyond_sixteen_seeds_against_scipy(n):
  # Meet in the middle against scipy's exact enumeration of all 2^n patterns.
  d = np.random.default_rng(n).normal(0.4, 1.0, n)
  d[3] = d[5]   # ties between patterns
  exact = stats.permutation_test((d,), np.mean, permutation_type="samples",
                                 alternative="greater", n_resamples=np.inf,
                                 vectorized=True, batch=2 ** 16)
  assert reporting.sign_flip_p_value(d) == pytest.approx(exact.pvalue, rel=1e-12)
  assert not math.isnan(reporting.compare(d, np.zeros(n)).p_permutation)


@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_sign_flip_twenty_seeds_hand_computed(k):
  # d = twenty ±1 with k of them -1: a pattern's sum is 20 - 2m for m minus signs, so
  # p = P(m <= k) with m ~ Binomial(20, 1/2) (ties throughout).
  d = np.ones(20)
  d[:k] = -1.0
  expected = stats.binom.cdf(k, 20, 0.5)
  assert reporting.sign_flip_p_value(d) == pytest.approx(expected, rel=1e-12)
  c = reporting.compare(d, np.zeros(20))
  assert c.p_permutation == pytest.approx(expected, rel=1e-12)
  assert c.p_permutation_reverse == pytest.approx(stats.binom.sf(k - 1, 20, 0.5),
                                                  rel=1e-12)


def test_sign_flip_beyond_exact_is_seeded_randomisation():
  n = reporting.MAX_EXACT_PERMUTATION + 2
  d = np.random.default_rng(1).normal(0.0, 1.0, n)
  p = reporting.sign_flip_p_value(d)
  assert p == reporting.sign_flip_p_value(d)   # fixed seed: the same answer
  # The normal approximation of the sign-flip distribution (variance sum d^2).
  z = stats.norm.sf(d.sum() / np.sqrt(np.sum(d ** 2)))
  assert abs(p - z) < 0.02
  assert (p * (1 + reporting.PERMUTATION_DRAWS)) % 1 == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- holm


def _statsmodels_holm(p, alpha):
  """statsmodels.stats.multitest.multipletests(method="holm"), written out."""
  p = np.asarray(p, float)
  order = np.argsort(p)
  ps = p[order]
  m = len(p)
  notreject = ps > alpha / np.arange(m, 0, -1)
  nr = np.nonzero(notreject)[0]
  notreject[(np.min(nr) if nr.size else m):] = True
  corrected = np.minimum(np.maximum.accumulate(ps * np.arange(m, 0, -1)), 1.0)
  adj, rej = np.empty(m), np.empty(m, bool)
  adj[order], rej[order] = corrected, ~notreject
  return adj, rej


def test_holm_hand_computed():
  # sorted 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 -> max 0.06).
  adj, rej = reporting.holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
  np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])
  np.testing.assert_array_equal(rej, [True, False, False, True])
  # Step-down stops at the first failure even if a later p passes its own bound.
  adj, rej = reporting.holm([0.02, 0.026, 0.04], alpha=0.05)   # 0.02 > 0.05/3
  np.testing.assert_array_equal(rej, [False, False, False])
  np.testing.assert_allclose(adj, [0.06, 0.06, 0.06])


@pytest.mark.parametrize("seed", range(5))
def test_holm_matches_statsmodels_definition(seed):
  rng = np.random.default_rng(seed)
  p = np.concatenate([rng.uniform(0, 0.03, 4), rng.uniform(0, 1, 6)])
  for alpha in (0.05, 0.1):
    adj, rej = reporting.holm(p, alpha)
    ref_adj, ref_rej = _statsmodels_holm(p, alpha)
    np.testing.assert_allclose(adj, ref_adj)
    np.testing.assert_array_equal(rej, ref_rej)


def test_holm_nan_counts_in_family_and_never_rejects():
  adj, rej = reporting.holm([0.01, float("nan"), 0.02], alpha=0.05)
  # m = 3: 0.01 x 3 = 0.03, 0.02 x 2 = 0.04.
  np.testing.assert_allclose(adj[[0, 2]], [0.03, 0.04])
  assert np.isnan(adj[1]) and list(rej) == [True, False, True]
  with pytest.raises(ValueError, match="0, 1"):
    reporting.holm([0.5, 1.5])


def test_decide_applies_holm_in_both_directions():
  rng = np.random.default_rng(0)
  shared = rng.normal(size=8)
  noise = lambda: rng.normal(0, 0.05, 8)  # noqa: E731
  strong = reporting.compare(shared + 0.2 + noise(), shared + noise())
  against = reporting.compare(shared + noise(), shared + 0.2 + noise())
  # one-sided paired p = 0.029 (scipy.stats.ttest_1samp of these differences).
  d = np.array([0.1, 0.3, -0.05, 0.2, 0.15, -0.1, 0.25, 0.05])
  weak = reporting.compare(shared + d, shared)
  family = [strong, against, weak]
  decided = reporting.decide(family)
  adj, _ = reporting.holm([c.p_value for c in family])
  adj_rev, _ = reporting.holm([c.p_reverse for c in family])
  for c, d, p, q in zip(family, decided, adj, adj_rev):
    assert d.p_adjusted == pytest.approx(p) and d.p_reverse_adjusted == pytest.approx(q)
    assert d.verdict == ("held" if p <= 0.05 else "contradicted" if q <= 0.05
                         else "inconclusive")
    assert d.mean_diff == c.mean_diff
  assert [d.verdict for d in decided][:2] == ["held", "contradicted"]
  # The weak claim is chosen to pass alone but not after Holm over three claims.
  assert 0.05 / 3 < weak.p_value <= 0.05 and weak.verdict == "held"
  assert decided[2].verdict == "inconclusive"


def test_comparison_cells_and_tar_cell():
  c = reporting.decide([reporting.compare([0.9, 0.92, 0.95, 0.9, 0.93],
                                           [0.8, 0.85, 0.86, 0.84, None]),
                        reporting.compare([0.5, 0.6], [0.5, 0.6])])[0]
  cells = c.cells()
  assert len(cells) == len(reporting.COMPARISON_HEADER)
  assert cells[0] == c.format() and cells[1] == "4 of 5" and cells[-1] == c.verdict
  assert cells[2] == f"{c.p_value:.3f}" and cells[3] == f"{c.p_adjusted:.3f}"
  assert cells[4] == "∞"   # 4 seeds: the sign-flip test cannot go below 1/16
  assert reporting.compare([1, 2, 3, 4, 5, 6], [0, 2, 2, 3, 4, 4]).cells()[4] != "∞"
  assert reporting.tar_cell([0.5, 0.7], 10_000, 1e-3, digits=2) == "0.60 ± 0.14"
  assert (reporting.tar_cell([float("nan")] * 2, 500, 1e-3)
          == "— (500 different pairs < 10/FAR = 10,000)")
