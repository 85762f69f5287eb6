"""Static parts of the standalone module ``enas-export`` writes, kept as real Python files.

``enas_rnn.export`` reads them with ``importlib.resources`` and appends everything below each file's
``# --- exported ---`` marker to the generated ``Cell``; the imports above the marker only make the
files valid modules on their own (the generated module has its own import block). ``Cell`` and
``Layer`` are defined by the generated code they are appended to.
"""
