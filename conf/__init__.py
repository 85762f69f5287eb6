"""enas_rnn's Hydra configs, installed as the package data ``enas_rnn.configs`` (``pkg://enas_rnn.configs``)."""
