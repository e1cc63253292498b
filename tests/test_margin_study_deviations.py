"""The margin study's deviations table is read from its config: changing a field changes
its row, and no row keeps a remark the config contradicts."""

from __future__ import annotations

import pytest

from experiments.configs import margin_study_digits
from experiments.margin_scheduler import report
from experiments.margin_scheduler import study


def _set(section, field, value):
  section[field] = value


@pytest.mark.parametrize("change, setting", [
    (lambda s: _set(s.train, "learning_rate", 1e-4), "learning rate"),
    (lambda s: _set(s.data, "normalize", "dataset"), "normalisation"),
    (lambda s: _set(s.model, "head_dropout", (0.5, 0.3)), "head dropout"),
    (lambda s: _set(s.train, "classes_per_batch", 5), "batch"),
])
def test_deviations_follow_the_config(change, setting):
  cfg = margin_study_digits.get_config()
  row = lambda c: next(r for r in report.deviations(c) if r[0] == setting)  # noqa: E731
  before = row(cfg)
  change(cfg[study.dataset(cfg)])
  after = row(cfg)
  assert after[3] != before[3]          # the tsm cell is read from the config
  if setting in ("learning rate", "head dropout", "normalisation"):
    assert after[4].startswith("same")  # and its remark follows it


def test_epochs_row_follows_the_study_override():
  cfg = margin_study_digits.get_config()
  cfg.study.epochs = 3
  row = next(r for r in report.deviations(cfg) if r[0] == "epochs")
  assert row[3] == "3" and row[4] == "CPU budget (study.epochs)"
