#!/usr/bin/env python
"""Download Mikolov's preprocessed Penn Treebank and save it as <out>/{train,valid,test}.txt.

    python scripts/download_ptb.py --out data/ptb
    python scripts/download_ptb.py --out data/ptb --url https://mirror.example/simple-examples.tgz --sha256 HEX

The three extracted files are always checked against their known sha256s (unless --no-verify); the archive is
checked with its published md5 when it comes from the default URL, or with --sha256 / --md5 when given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from enas_rnn.corpus import (
        PTB_FILE_SHA256,
        PTB_MD5,
        PTB_SHA256,
        PTB_URL,
        DataError,
        download_ptb,
    )
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from enas_rnn.corpus import (
        PTB_FILE_SHA256,
        PTB_MD5,
        PTB_SHA256,
        PTB_URL,
        DataError,
        download_ptb,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="Download the Penn Treebank (Mikolov split) for enas_rnn.")
    parser.add_argument("--out", type=Path, default=Path("data/ptb"), help="destination folder (default: data/ptb)")
    parser.add_argument("--url", default=PTB_URL, help=f"archive URL, http(s):// or file:// (default: {PTB_URL})")
    verify = parser.add_mutually_exclusive_group()
    verify.add_argument("--sha256", metavar="HEX", help="expected sha256 of the archive")
    verify.add_argument("--no-verify", action="store_true", help="skip every checksum (archive and files)")
    parser.add_argument("--md5", metavar="HEX", help="expected md5 of the archive")
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default: 60)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    if args.no_verify:
        sha256, md5, file_sha256 = None, None, None
    else:
        sha256 = args.sha256 if args.sha256 else PTB_SHA256
        # The published md5 describes Mikolov's archive only; a mirror or a user-given hash replaces it.
        default_md5 = PTB_MD5 if args.url == PTB_URL and not args.sha256 else None
        md5 = args.md5 if args.md5 else default_md5
        file_sha256 = PTB_FILE_SHA256
    try:
        out = download_ptb(
            args.out, url=args.url, sha256=sha256, timeout=args.timeout, md5=md5, file_sha256=file_sha256
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    checked = "unverified" if args.no_verify else "verified"
    print(f"PTB saved to {out}/{{train,valid,test}}.txt ({checked})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
