#!/usr/bin/env python3
"""Download tinyshakespeare (~1.1 MB, Karpathy's char-rnn copy) and turn it into a tokenizer and
token shards with ./prepare_data. Optional: `make run` uses the copy bundled with the project and
needs no Python and no network. Standard library only.

    python3 dev/data/tinyshakespeare.py                # -> data/tinyshakespeare/
    python3 dev/data/tinyshakespeare.py --vocab-size 8192 --out data/ts8k
"""
import argparse
import os
import subprocess
import sys
import urllib.request

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/tinyshakespeare", help="output directory for shards and tokenizer")
    ap.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary (incl. 9 specials)")
    ap.add_argument("--text", default="data/tinyshakespeare.txt", help="where to store the downloaded text")
    ap.add_argument("--prepare-data", default="./prepare_data", help="path of the prepare_data binary")
    args = ap.parse_args()

    if not os.path.exists(args.text):
        os.makedirs(os.path.dirname(args.text) or ".", exist_ok=True)
        print(f"downloading {URL} -> {args.text}")
        tmp = args.text + ".tmp"
        urllib.request.urlretrieve(URL, tmp)
        os.replace(tmp, args.text)
    else:
        print(f"{args.text} already present")
    if not os.path.exists(args.prepare_data):
        sys.exit(f"{args.prepare_data} not found: run `make prepare_data` first")
    cmd = [args.prepare_data, "--input", args.text, "--out", args.out, "--prefix", "tinyshakespeare",
           "--vocab-size", str(args.vocab_size)]
    print(" ".join(cmd))
    sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
