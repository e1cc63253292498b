"""Monte Carlo size and power of tsm.reporting.compare / decide (seeded, a few seconds).

Simulated studies: two arms over ``n`` seeds, ``A_k = s_k + δ + e_Ak`` and
``B_k = s_k + e_Bk`` with a seed effect ``s_k`` shared by both arms (same initialisation,
split, batches) and independent normal noise; the per-seed difference then has standard
deviation ``σ_d = sqrt(2) σ_e``. The checks are on simulated frequencies, so each bound is
stated with its Clopper-Pearson 99.9 % interval: a rate "at most 5 %" must have an interval
that reaches 5 % and excludes 10 % (the doubled size of a two-sided mistake).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from tsm import reporting

STUDIES = 2000


def _interval(count: int, total: int) -> tuple[float, float]:
  ci = stats.binomtest(count, total).proportion_ci(confidence_level=0.999,
                                                   method="exact")
  return ci.low, ci.high


def _studies(rng, num, n, delta, seed_sd=1.0, diff_sd=1.0):
  shared = rng.normal(0.0, seed_sd, (num, n))
  noise_sd = diff_sd / np.sqrt(2.0)
  a = 0.5 + shared + delta + rng.normal(0.0, noise_sd, (num, n))
  b = 0.5 + shared + rng.normal(0.0, noise_sd, (num, n))
  return a, b


def _verdicts(a, b, **kwargs):
  return np.array([reporting.compare(x, y, **kwargs).verdict for x, y in zip(a, b)])


def test_power_size_and_direction_with_ten_paired_seeds():
  rng = np.random.default_rng(20261129)
  # A true difference of one standard deviation of the per-seed difference.
  power = _verdicts(*_studies(rng, STUDIES, 10, delta=1.0))
  held = int(np.sum(power == "held"))
  assert held / STUDIES >= 0.80 and _interval(held, STUDIES)[0] >= 0.80
  # Exact power of the one-sided paired t-test (noncentral t, λ = sqrt(10)): about 0.90.
  expected = stats.nct.sf(stats.t.ppf(0.95, 9), 9, np.sqrt(10.0))
  low, high = _interval(held, STUDIES)
  assert low <= expected <= high
  # No difference: a false "held" in at most 5 % of studies.
  null = _verdicts(*_studies(rng, STUDIES, 10, delta=0.0))
  false_held = int(np.sum(null == "held"))
  low, high = _interval(false_held, STUDIES)
  assert low <= 0.05 and high < 0.10
  # A true difference against the claim reads "contradicted", never "held".
  against = _verdicts(*_studies(rng, STUDIES, 10, delta=-1.0))
  assert np.mean(against == "contradicted") >= 0.80
  assert np.sum(against == "held") == 0   # P(held) = P(t_9(-3.16) > 1.83) < 1e-4


def _spread_rule_held(a, b):
  """The descriptive rule: A's mean beats B's by more than ``std_A + std_B``."""
  a, b = np.asarray(a), np.asarray(b)
  return a.mean() - b.mean() > a.std(ddof=1) + b.std(ddof=1)


def test_pairing_adds_power_and_a_spread_rule_has_none():
  # 5 seeds, seed correlation 0.7 between arms (arm sd 1), a true difference of one arm
  # standard deviation. Standard deviations (not standard errors), no pairing: the
  # spread rule gains no power from the seeds.
  rng = np.random.default_rng(7)
  rho = 0.7
  a, b = _studies(rng, STUDIES // 2, 5, delta=1.0, seed_sd=np.sqrt(rho),
                  diff_sd=np.sqrt(2 * (1 - rho)))
  held = int(np.sum(_verdicts(a, b) == "held"))
  paired = held / (STUDIES // 2)
  welch = np.mean(_verdicts(a, b, paired=False) == "held")
  spread = np.mean([_spread_rule_held(x, y) for x, y in zip(a, b)])
  assert paired > 0.5 and paired > welch > spread and spread < 0.2
  # With 5 seeds the exact sign-flip test reaches 0.05 only when every difference favours
  # the claim (p = 1/32; one against it gives >= 2/32), so the paired power is at most
  # P(all five d_k > 0) = Phi(delta / sd_d)^5, about 0.60 here (the t-test alone: 0.70).
  bound = stats.norm.cdf(1.0 / np.sqrt(2 * (1 - rho))) ** 5
  assert _interval(held, STUDIES // 2)[0] <= bound


def test_holm_family_controls_false_held_and_keeps_power():
  # Families of 4 claims, 2 null and 2 true (δ = 1.5 σ_d), 10 paired seeds.
  rng = np.random.default_rng(11)
  num = 600
  deltas = (0.0, 0.0, 1.5, 1.5)
  sims = [_studies(rng, num, 10, delta=d) for d in deltas]
  any_false, true_held = 0, 0
  for s in range(num):
    family = [reporting.compare(a[s], b[s]) for a, b in sims]
    verdicts = [c.verdict for c in reporting.decide(family)]
    any_false += verdicts[0] == "held" or verdicts[1] == "held"
    true_held += (verdicts[2] == "held") + (verdicts[3] == "held")
  low, high = _interval(any_false, num)
  assert low <= 0.05 and high < 0.10
  assert true_held / (2 * num) >= 0.80


def test_mde_has_eighty_percent_power():
  # The MDE of a study whose sample sd equals the true sd is the difference detected
  # with 80 % power: check by simulating t-tests (scipy, independent of compare).
  n = 10
  d = np.random.default_rng(3).normal(size=n)
  d = (d - d.mean()) / d.std(ddof=1)   # sample sd exactly 1 = the true sd below
  mde = reporting.compare(d, np.zeros(n)).mde
  rng = np.random.default_rng(4)
  sims = rng.normal(mde, 1.0, (20000, n))
  p = stats.ttest_1samp(sims, 0.0, axis=1, alternative="greater").pvalue
  rejected = int(np.sum(p <= 0.05))
  low, high = _interval(rejected, sims.shape[0])
  assert low <= 0.8 <= high
