"""Settings the experiment files share: each paper's setup and its dataset sections.

An experiment file in ``experiments/configs/`` is a whole experiment built from these:

* :mod:`.paper_a`: paper A's setup, the margin study's starting point;
* :mod:`.paper_b`: paper B's setup and its dataset sections (the loss study);
* :mod:`.loss_zoo`: the follow-up's shared settings and dataset sections (the loss zoo);
* :mod:`.last_model`: the run both loss studies make (no validation split, the last
  model measured);
* :mod:`.datasets`: the data and model sections of the sets both loss studies run on;
* :mod:`.frozen`: Fashion-MNIST on a frozen Lite0's cached features, and the follow-up's
  projection head (the frozen-trunk versions of the three studies).
"""
