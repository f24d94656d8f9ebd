#!/usr/bin/env python3
"""Convert between nanochat's tokenizer.pkl (a pickled tiktoken.Encoding) and this project's
<stem>.tiktoken + <stem>.json pair (docs/tokenizer.md#exchange). Needs `pip install tiktoken`;
`torch` only for writing token_bytes.pt. Optional developer tool.

    python3 dev/data/nanochat_tokenizer.py to-llmc ~/.cache/nanochat/tokenizer/tokenizer.pkl data/tok32k
    python3 dev/data/nanochat_tokenizer.py to-nanochat data/tok32k out_dir   # tokenizer.pkl (+ token_bytes.pt)
"""
import argparse
import base64
import json
import os
import pickle
import sys

os.environ["TIKTOKEN_CACHE_DIR"] = ""  # tiktoken's loader otherwise caches files by path
import tiktoken  # noqa: E402


def to_llmc(pkl, stem):
    with open(pkl, "rb") as f:
        enc = pickle.load(f)
    ranks = enc._mergeable_ranks
    specials = sorted(enc._special_tokens.items(), key=lambda kv: kv[1])
    names = [n for n, _ in specials]
    bos = "<|bos|>" if "<|bos|>" in names else "<|endoftext|>" if "<|endoftext|>" in names else None
    if bos is None:
        sys.exit(f"{pkl}: no <|bos|> or <|endoftext|> special token to use as bos_token")
    with open(stem + ".tiktoken", "w") as f:  # tiktoken's dump_tiktoken_bpe format, rank order
        for b, r in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(base64.b64encode(b).decode() + f" {r}\n")
    side = {"format": "tiktoken-sidecar", "version": 1, "name": enc.name, "pattern": enc._pat_str,
            "n_mergeable": len(ranks), "special_tokens": [[n, i] for n, i in specials], "bos_token": bos,
            "n_vocab": max([len(ranks) - 1] + [i for _, i in specials]) + 1}
    with open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump(side, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {stem}.tiktoken ({len(ranks)} ranks) and {stem}.json (n_vocab {side['n_vocab']}, bos {bos})")


def to_nanochat(stem, out_dir):
    from tiktoken.load import load_tiktoken_bpe
    side = json.load(open(stem + ".json", encoding="utf-8"))
    ranks = load_tiktoken_bpe(stem + ".tiktoken")
    specials = {n: i for n, i in side["special_tokens"]}
    enc = tiktoken.Encoding(name="rustbpe", pat_str=side["pattern"], mergeable_ranks=ranks, special_tokens=specials)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.pkl"), "wb") as f:
        pickle.dump(enc, f)
    print(f"wrote {out_dir}/tokenizer.pkl (n_vocab {enc.n_vocab})")
    # token_bytes.pt: raw byte length per id, 0 for specials and holes (docs/tokenizer.md#token-bytes)
    lengths = [0] * side["n_vocab"]
    for b, r in ranks.items():
        lengths[r] = len(b)
    try:
        import torch
    except ImportError:
        print("torch not installed: token_bytes.pt not written")
        return
    torch.save(torch.tensor(lengths, dtype=torch.int32), os.path.join(out_dir, "token_bytes.pt"))
    print(f"wrote {out_dir}/token_bytes.pt")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("to-llmc", help="tokenizer.pkl -> <stem>.tiktoken + <stem>.json")
    a.add_argument("pkl")
    a.add_argument("stem")
    b = sub.add_parser("to-nanochat", help="<stem>.tiktoken + <stem>.json -> <dir>/tokenizer.pkl (+ token_bytes.pt)")
    b.add_argument("stem")
    b.add_argument("out_dir")
    args = ap.parse_args()
    if args.cmd == "to-llmc":
        to_llmc(args.pkl, args.stem)
    else:
        to_nanochat(args.stem, args.out_dir)


if __name__ == "__main__":
    main()
