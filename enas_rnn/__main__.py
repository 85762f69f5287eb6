"""`python -m enas_rnn`: what the package offers, one app per line."""

from __future__ import annotations

from enas_rnn import __version__
from enas_rnn.cli.common import APPS


def main() -> None:
    print(f"enas_rnn {__version__}: search recurrent cells the ENAS way and check them against nn.LSTM.\n")
    print("Apps (each takes Hydra overrides key=value; --help explains its options):")
    for command, module, about in APPS:
        print(f"  {command:<15} {about}\n  {'':<15} (also: python -m {module})")
    print("\nStart with: enas-pipeline experiment=quick   (the whole job, a first real result in ~10 minutes)")


if __name__ == "__main__":
    main()
