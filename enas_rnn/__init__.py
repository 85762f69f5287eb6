"""enas_rnn: ENAS search of recurrent cells, MRS pre-screening, retraining and export."""

__version__ = "0.3.0"

# The built-in search spaces register themselves with the genotype registry on import.
from enas_rnn import spaces as _spaces  # noqa: E402,F401
