"""enas_rnn: ENAS search of recurrent cells, MRS pre-screening, retraining and export."""

__version__ = "0.1.0"
