#!/usr/bin/env python3
"""Download FineWeb-Edu parquet shards (nanochat's pre-shuffled copy,
huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle, ~250M characters / ~90 MB per shard),
convert them to JSON Lines and run ./prepare_data on them. Needs network access and pyarrow
(`pip install pyarrow`); the C++ data path itself needs neither.

    python3 dev/data/fineweb_edu.py -n 8                        # ~2B characters, vocab 32768
    python3 dev/data/fineweb_edu.py -n 2 --vocab-size 8192 --out data/fw_small

Any parquet dataset with a `text` column works the same way with --base-url / --pattern
(e.g. a ClimbMix copy). Downloads are resumable: finished files are kept and skipped.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
PATTERN = "shard_{:05d}.parquet"


def download(url, path, tries=5):
    if os.path.exists(path):
        return
    tmp = path + ".tmp"
    for attempt in range(tries):
        try:
            print(f"downloading {url}")
            urllib.request.urlretrieve(url, tmp)
            os.replace(tmp, path)
            return
        except Exception as e:  # network hiccups: back off and retry
            print(f"  failed ({e}); retry {attempt + 1}/{tries}")
            time.sleep(2 ** attempt)
    sys.exit(f"could not download {url}")


def parquet_to_jsonl(src, dst):
    if os.path.exists(dst):
        return
    try:
        import pyarrow.parquet as pq
    except ImportError:
        sys.exit("pyarrow is needed to read parquet: pip install pyarrow")
    tmp = dst + ".tmp"
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        pf = pq.ParquetFile(src)
        for rg in range(pf.num_row_groups):
            for text in pf.read_row_group(rg, columns=["text"]).column("text").to_pylist():
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                n += 1
    os.replace(tmp, dst)
    print(f"  {dst}: {n} documents")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--num-shards", type=int, default=8, help="parquet shards to download (from shard 0)")
    ap.add_argument("--raw", default="data/fineweb_edu_raw", help="where parquet and jsonl files go")
    ap.add_argument("--out", default="data/fineweb_edu", help="output directory for token shards and tokenizer")
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--tokenizer", default="", help="load this tokenizer stem instead of training one")
    ap.add_argument("--base-url", default=BASE_URL)
    ap.add_argument("--pattern", default=PATTERN, help="file name pattern, formatted with the shard index")
    ap.add_argument("--prepare-data", default="./prepare_data")
    args, extra = ap.parse_known_args()  # anything else is passed to prepare_data

    os.makedirs(args.raw, exist_ok=True)
    jsonl_dir = os.path.join(args.raw, "jsonl")
    os.makedirs(jsonl_dir, exist_ok=True)
    for i in range(args.num_shards):
        name = args.pattern.format(i)
        pq_path = os.path.join(args.raw, name)
        download(f"{args.base_url}/{name}", pq_path)
        parquet_to_jsonl(pq_path, os.path.join(jsonl_dir, name.rsplit(".", 1)[0] + ".jsonl"))
    if not os.path.exists(args.prepare_data):
        sys.exit(f"{args.prepare_data} not found: run `make prepare_data` first")
    cmd = [args.prepare_data, "--input", jsonl_dir, "--out", args.out, "--prefix", "fineweb_edu"]
    cmd += ["--tokenizer", args.tokenizer] if args.tokenizer else ["--vocab-size", str(args.vocab_size)]
    cmd += extra
    print(" ".join(cmd))
    sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
