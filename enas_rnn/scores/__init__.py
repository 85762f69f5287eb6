"""Training-free scores of cells, one module per score, behind one registry.

* ``mrs`` - MRS as published (Camero, Toutouh & Alba 2018-2021), for any module: ``scores/mrs.py``;
  its adaptation to a cell inside a language model, registered as ``"mrs"``: ``scores/lm.py``;
* ``hidden_cov`` - hidden covariance (Serianni & Kalita 2023): ``scores/hidden_cov.py``.

Importing this package registers every score (:data:`SCORES`, :func:`make_score`).
"""

from __future__ import annotations

from enas_rnn.scores import hidden_cov, lm  # noqa: F401 - registers the scores
from enas_rnn.scores.hidden_cov import HiddenCovConfig
from enas_rnn.scores.lm import LMSpec, ScoreCache
from enas_rnn.scores.mrs import MRSConfig
from enas_rnn.scores.registry import SCORES, make_score, register_score

__all__ = ["SCORES", "make_score", "register_score", "LMSpec", "ScoreCache", "MRSConfig", "HiddenCovConfig"]
