#!/usr/bin/env python3
"""Time the reference implementations on the text our benchmark uses, in one invocation.

Runs build/dev/bench_tokenizer (our training and encoding on 50 MB of synthetic Zipf-word text),
then on the very same documents (dumped by `bench_tokenizer --dump-synthetic`):
  - rustbpe training of the same vocabulary (nanochat's pattern, no per-document cap), with peak RSS;
  - tiktoken encode_ordinary_batch with 1 and 2 threads, using rustbpe's ranks (which equal ours:
    dev/data/crosscheck.py).
Prints a table with the ratios. Needs `pip install tiktoken rustbpe`; run from the repo root after
`make build/dev/bench_tokenizer`. Each reference runs in its own process so peak RSS is its own.
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

NANOCHAT = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""


def child(mode, path, vocab):
    docs = open(path, encoding="utf-8").read().split("\n")[:-1]
    nbytes = sum(len(d.encode()) for d in docs)
    import rustbpe
    tok = rustbpe.Tokenizer()
    t0 = time.time()
    tok.train_from_iterator(iter(docs), vocab - 9, pattern=NANOCHAT)
    t_train = time.time() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if mode == "train":
        print(f"RESULT train {t_train:.3f} {rss:.0f} {len(tok.get_mergeable_ranks()) - 256}")
        return
    import tiktoken
    ranks = {bytes(b): r for b, r in tok.get_mergeable_ranks()}
    enc = tiktoken.Encoding(name="bench", pat_str=NANOCHAT, mergeable_ranks=ranks, special_tokens={})
    for th in (1, 2):
        t0 = time.time()
        out = enc.encode_ordinary_batch(docs, num_threads=th)
        dt = time.time() - t0
        print(f"RESULT encode{th} {nbytes / 1e6 / dt:.2f} {sum(map(len, out))}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=50)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--bench", default="build/dev/bench_tokenizer")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], a.child[1], a.vocab)
    tmp = tempfile.mkdtemp(prefix="llmc_benchref_")
    path = os.path.join(tmp, "synthetic.txt")
    subprocess.run([a.bench, "--mb", str(a.mb), "--dump-synthetic", path], check=True)
    ours = subprocess.run([a.bench, "--mb", str(a.mb), "--vocab", str(a.vocab)], check=True, capture_output=True, text=True).stdout
    print(ours)
    m = re.search(r"train \(b\).*?: (\d+) merges in\s+([\d.]+) s; peak RSS (\d+) MB", ours)
    e = re.findall(r"encode synthetic.*?(\d) threads? ?:\s+([\d.]+) MB/s total", ours)
    res = {}
    for mode in ("train", "encode"):
        out = subprocess.run([sys.executable, __file__, "--vocab", str(a.vocab), "--child", mode, path],
                             check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("RESULT "):
                k, *v = line.split()[1:]
                res[k] = v
    print(f"| {a.mb:g} MB synthetic, vocab {a.vocab} | ours | reference | ratio |")
    print("|---|---|---|---|")
    print(f"| train: seconds (merges) | {m.group(2)} ({m.group(1)}) | rustbpe {res['train'][0]} ({res['train'][2]}) "
          f"| {float(res['train'][0]) / float(m.group(2)):.2f}x faster |")
    print(f"| train: peak RSS MB (incl. the text held) | {m.group(3)} | rustbpe {res['train'][1]} (whole Python process) | |")
    for th, mbs in e:
        ref = float(res[f"encode{th}"][0])
        print(f"| encode {th} thread(s): MB/s | {mbs} | tiktoken {ref:.2f} | {float(mbs) / ref:.2f}x |")


if __name__ == "__main__":
    main()
