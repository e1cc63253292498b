"""tsm.plotting figure functions and tsm.plotting.plot_training: what is drawn.

Each figure is captured before it is saved and its artists are checked against the
numbers they must show (scikit-learn's ROC, hand-computed shares).
"""

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  # pylint: disable=wrong-import-position
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402  # pylint: disable=wrong-import-position
from sklearn import metrics as sk_metrics  # noqa: E402  # pylint: disable=wrong-import-position

from tsm import plotting  # noqa: E402  # pylint: disable=wrong-import-position


@pytest.fixture
def saved(monkeypatch):
  """Figures passed to save_figure, kept (and drawn) for inspection after saving."""
  figures = []
  original = plotting.save_figure

  def keep(fig, path, **kwargs):
    original(fig, path, **kwargs)  # closes the pyplot window; the Figure stays readable
    FigureCanvasAgg(fig).draw()  # a canvas again, so legends have positions
    figures.append(fig)

  monkeypatch.setattr(plotting, "save_figure", keep)
  yield figures
  plt.close("all")


@pytest.fixture
def kept(monkeypatch):
  """Figures passed to save_figure, kept and neither drawn nor saved (for checks of the
  artists alone)."""
  figures = []
  monkeypatch.setattr(plotting, "save_figure", lambda fig, path, **kwargs: figures.append(fig))
  yield figures
  plt.close("all")


def _legend_is_outside(ax):
  legend = ax.get_legend()
  assert legend is not None
  renderer = ax.figure.canvas.get_renderer()
  return legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1


def test_plot_steps_draws_steps_and_keeps_overlaps_visible():
  fig, ax = plt.subplots()
  series = {"constant": [0.2, 0.2, 0.2], "dams": [0.2, 0.25, 0.25], "same": [0.2, 0.25, 0.25]}
  plotting.plot_steps(ax, [1, 2, 3], series)
  fig.canvas.draw()
  steps = [line for line in ax.lines if line.get_drawstyle() == "steps-post"]
  assert len(steps) == 3
  for line, values in zip(steps, series.values()):
    # the last epoch is held up to its end: one extra point at epoch 4
    np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(line.get_ydata(), values + values[-1:])
  assert len({line.get_linestyle() for line in steps}) == 3
  widths = [line.get_linewidth() for line in steps]
  assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
  marks = [line for line in ax.lines if line.get_linestyle() == "None"]
  assert len({line.get_marker() for line in marks}) == 3
  for i, (line, values) in enumerate(zip(marks, series.values())):
    x = line.get_xdata()
    assert np.all((x > [1, 2, 3]) & (x < [2, 3, 4]))  # inside its epoch, on its step
    np.testing.assert_array_equal(line.get_ydata(), values)
    if i:
      assert np.all(x > marks[i - 1].get_xdata())  # offset from the previous series
  assert [t.get_text() for t in ax.get_legend().get_texts()] == list(series)
  assert _legend_is_outside(ax)
  plt.close(fig)
  with pytest.raises(ValueError, match="series 'a' has 2 values for 3 epochs"):
    plotting.plot_steps(plt.subplots()[1], [1, 2, 3], {"a": [1, 2]})


def test_triplet_shares_by_hand():
  records = [{"num_easy": 6, "num_semihard": 3, "num_hard": 1, "num_total": 10},
             {"num_easy": 0, "num_semihard": 0, "num_hard": 0, "num_triplets": 0}]
  shares = plotting.triplet_shares(records)
  np.testing.assert_array_equal(shares["easy"], [0.6, np.nan])
  np.testing.assert_array_equal(shares["semi-hard"], [0.3, np.nan])
  np.testing.assert_array_equal(shares["hard"], [0.1, np.nan])
  assert plotting.triplet_shares([{"num_easy": 1, "num_pairs": 2}]) is None
  assert plotting.triplet_shares([]) is None


def test_plot_roc_matches_sklearn(tmp_path, saved):
  rng = np.random.default_rng(0)
  same = rng.random(300) < 0.4
  distances = np.round(np.where(same, rng.normal(0.5, 0.3, 300), rng.normal(1.2, 0.3, 300)), 2)
  numbers = plotting.plot_roc(distances, same, str(tmp_path / "roc.png"), "test")
  assert (tmp_path / "roc.png").exists()
  fpr, tpr, _ = sk_metrics.roc_curve(same, -distances, drop_intermediate=False)
  assert numbers["auc"] == pytest.approx(sk_metrics.roc_auc_score(same, -distances))
  (fig,) = saved
  for ax in fig.axes:
    curve = next(line for line in ax.lines if line.get_drawstyle() == "steps-post")
    np.testing.assert_allclose(curve.get_xdata(), fpr)
    np.testing.assert_allclose(curve.get_ydata(), tpr)
  assert fig.axes[1].get_xscale() == "log"
  assert _legend_is_outside(fig.axes[1])
  assert f"{numbers['auc']:.4f}" in fig.axes[1].get_legend().get_texts()[0].get_text()
  n_same = int(same.sum())
  assert (f"test split: 300 pairs ({n_same} same-class, {300 - n_same} different-class)"
          in fig._suptitle.get_text())  # pylint: disable=protected-access


def _epochs(with_val=True, with_kinds=True, sort_keys=False):
  """Four epoch records; the ranking metrics only every second epoch (as an evaluator
  with ``every_epochs=2``), the validation loss every epoch."""
  records = []
  for e in range(4):
    r = {"kind": "epoch", "epoch": e, "loss": 1.0 / (e + 1), "margin": 0.2 + 0.05 * (e // 2),
         "num_easy": 2.0 * e, "num_triplets": 10.0, "easy_share": 0.2 * e}
    if with_kinds:
      r.update(num_semihard=8.0 - 2.0 * e, num_hard=2.0)
    if with_val:
      r.update({"val_loss": [0.9, 0.5, 0.6, 0.7][e], "val_active_ratio": 0.5})
      if e % 2 == 1:
        r.update({"val_map@r": [0.4, 0.3][e // 2], "val_auc": 0.5 + 0.1 * e,
                  "val_eer": 0.3 - 0.1 * e, "val_note": "text is skipped"})
    records.append(dict(sorted(r.items())) if sort_keys else r)
  return records


def _panels(fig):
  return {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.axison}


def _selected_lines(ax):
  return [line for line in ax.lines if line.get_gid() == plotting.SELECTED_GID]


def test_plot_training_panels(tmp_path, saved):
  plotting.plot_training(_epochs(), str(tmp_path / "training.png"), "run", easy_threshold=0.9,
                         val_label="validation loss (at margin 1)", selected_epoch=2,
                         selected_by="lowest val_loss", selected_metric="val_loss")
  (fig,) = saved
  axes = _panels(fig)
  assert list(axes) == ["training loss (at the epoch's margin $\\mu$)",
                        "validation loss (at margin 1)",
                        "validation metrics, higher is better",
                        "validation metrics, lower is better",
                        "margin $\\mu$ (held for the whole epoch)",
                        "triplets by kind, at the epoch's margin"]
  loss, val_loss, higher, lower, margin, kinds = axes.values()
  # Each loss on its own axes: the training loss at the epochs' margins, the validation
  # loss at its own margin.
  np.testing.assert_allclose(loss.lines[0].get_ydata(), [1.0, 0.5, 1 / 3, 0.25])
  np.testing.assert_allclose(val_loss.lines[0].get_ydata(), [0.9, 0.5, 0.6, 0.7])
  assert val_loss.lines[0].get_label() == "validation loss (at margin 1)"
  # Higher and lower is better apart; the active ratio (a loss statistic) in neither.
  names = [t.get_text() for t in higher.get_legend().get_texts()]
  assert names[:2] == ["map@r", "auc"] and "active_ratio" not in " ".join(names)
  assert [t.get_text() for t in lower.get_legend().get_texts()][0] == "eer"
  # The evaluated epochs only, joined by one line.
  np.testing.assert_allclose(higher.lines[0].get_xdata(), [2, 4])
  np.testing.assert_allclose(higher.lines[0].get_ydata(), [0.4, 0.3])
  np.testing.assert_allclose(lower.lines[0].get_ydata(), [0.2, 0.0], atol=1e-12)
  # The selected epoch: a dashed line on every panel, named with its rule.
  rule = "selected: epoch 2 (lowest val_loss)"
  for title, ax in axes.items():
    (line,) = _selected_lines(ax)
    assert list(line.get_xdata()) == [2, 2], title
    assert rule in [t.get_text() for t in ax.get_legend().get_texts()], title
  assert rule in fig._suptitle.get_text()  # pylint: disable=protected-access
  (star,) = [l for l in val_loss.lines if l.get_marker() == "*"]
  assert (list(star.get_xdata()), list(star.get_ydata())) == ([2], [0.5])
  # Each higher-is-better metric's own best: map@r at epoch 2 (0.4), auc at epoch 4.
  rings = sorted((float(l.get_xdata()[0]), round(float(l.get_ydata()[0]), 9))
                 for l in higher.lines if l.get_marker() == "o"
                 and l.get_markerfacecolor() == "none" and len(l.get_xdata()))
  assert rings == [(2.0, 0.4), (4.0, 0.8)]
  assert margin.lines[0].get_drawstyle() == "steps-post"
  np.testing.assert_allclose(margin.lines[0].get_ydata(), [0.2, 0.2, 0.25, 0.25, 0.25])
  tops = [c.get_paths()[0].vertices[:, 1].max() for c in kinds.collections]
  assert tops[-1] == pytest.approx(1.0)  # easy + semi-hard + hard stack to 1
  assert [t.get_text() for t in kinds.get_legend().get_texts()][:3] == [
      "easy", "semi-hard", "hard"]
  for ax in axes.values():
    assert _legend_is_outside(ax)


def test_plot_training_colours_do_not_depend_on_the_records_key_order(tmp_path, kept):
  for sort_keys in (False, True):   # records read back from metrics.jsonl are key-sorted
    plotting.plot_training(_epochs(sort_keys=sort_keys), str(tmp_path / "training.png"))
  first, second = (_panels(fig) for fig in kept)
  for title in first:
    got = [(l.get_label(), l.get_color()) for l in second[title].lines]
    assert got == [(l.get_label(), l.get_color()) for l in first[title].lines], title
  higher = first["validation metrics, higher is better"]
  colours = {l.get_label(): l.get_color() for l in higher.lines}
  assert colours["map@r"] == plotting.QUANTITY_COLORS["val_map@r"]
  assert colours["auc"] == plotting.QUANTITY_COLORS["val_auc"]
  assert not any(_selected_lines(ax) for ax in first.values())  # no epoch given, no marker


def test_plot_training_without_validation_or_kinds(tmp_path, saved):
  plotting.plot_training(_epochs(with_val=False, with_kinds=False),
                          str(tmp_path / "training.png"), selected_epoch=4,
                          selected_by="lowest loss", selected_metric="val_loss")
  (fig,) = saved
  titles = list(_panels(fig))
  assert len(titles) == 3 and titles[2] == "easy share"
  assert not any(t.startswith(("validation", "triplets")) for t in titles)
  np.testing.assert_allclose(_panels(fig)["easy share"].lines[0].get_ydata(),
                             [0.0, 0.2, 0.4, 0.6])
  assert "selected: epoch 4 (lowest loss)" in fig._suptitle.get_text()  # pylint: disable=protected-access


def test_pca_legend_is_outside():
  fig, ax = plt.subplots()
  x = np.random.default_rng(0).normal(size=(30, 4))
  plotting.plot_pca(ax, x, np.repeat([0, 1, 2], 10))
  fig.canvas.draw()
  assert _legend_is_outside(ax)
  plt.close(fig)
