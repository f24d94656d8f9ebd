#!/usr/bin/env python3
"""Cross-check ./prepare_data (llmc/tokenizer.h) against the reference implementations:
training against rustbpe, encoding against tiktoken (nanochat, GPT-4 and GPT-2 patterns), and
the Unicode version of the character classes. Optional developer tool; needs
`pip install tiktoken rustbpe` (PyPI), no network otherwise. The project never needs it to build
or test.

    python3 dev/data/crosscheck.py [--corpus ../shared/data/tinyshakespeare.txt] [--seed 0]

Checks (each prints one line; the exit status is 1 if any differs):
  1. tokenizers trained by prepare_data on the corpus (vocab 4096, 16384, 32768) and on random
     multilingual text (600, 3000, 8000) have exactly rustbpe's ranks;
  2. the shards prepare_data writes equal [BOS] + tiktoken.encode_ordinary(doc) per document;
  3. 20,000 random strings (ASCII pieces, tricky code points, random code points of all planes)
     encode to tiktoken's ids with each pattern;
  4. code points assigned in Unicode 15.1 / 16.0 / 17.0 are classified the way tiktoken does;
  5. the case-insensitive contractions ('S, 'ſ, 'Ll, Kelvin sign, ...) split as in tiktoken.
"""
import argparse
import base64
import json
import os
import random
import struct
import subprocess
import sys
import tempfile

os.environ["TIKTOKEN_CACHE_DIR"] = ""  # tiktoken caches files by path otherwise: stale ranks on rewrite
import rustbpe  # noqa: E402
import tiktoken  # noqa: E402
from tiktoken.load import load_tiktoken_bpe  # noqa: E402

PATTERNS = {
    "nanochat": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
}
FRAGS = ["a", "b", "s", "S", "t", "l", "L", "v", "e", "r", "re", "ll", "RE", " ", " ", " ", "  ", "\n", "\r\n", "\r", "\t",
         "'", "1", "2", "12345", ".", ",", "!", "...", "\u00a0", "\u00e9", "\u017f", "\u200b", "\u3000", "\U0001F44B",
         "\u0301", "\u0663", "\u00b2", "\u043f", "\u65e5", "\u0085", "\u2019", "\u1680", "\u2028", "\u00bd", "\u2167",
         "\u212a", "\u0130", "\ufeff", "\x1c", "\u180e", "\U0001D400", "the", " the", "<|bos|>"]
failures = 0


def report(ok, msg):
    global failures
    failures += not ok
    print(("ok   " if ok else "FAIL ") + msg)


def run(args):
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{p.stderr}")


def read_shard(path):
    b = open(path, "rb").read()
    hdr = struct.unpack("<256i", b[:1024])
    return list(struct.unpack("<%d%s" % (hdr[2], "H" if hdr[0] == 20240520 else "I"), b[1024:]))


def split_at_bos(ids, bos):
    docs = []
    for t in ids:
        if t == bos:
            docs.append([])
        else:
            docs[-1].append(t)
    return docs


def random_texts(rng, n):
    def rand_cp():
        while True:
            c = rng.randrange(0, 0x110000) if rng.random() < 0.3 else rng.randrange(0, 0x3000)
            if not 0xD800 <= c < 0xE000:
                return chr(c)
    return ["".join(rng.choice(FRAGS) if rng.random() < 0.8 else rand_cp() for _ in range(rng.randrange(1, 30)))
            for _ in range(n)]


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for s in texts:
            f.write(json.dumps({"text": s}) + "\n")


def write_tokenizer(stem, ranks):
    """ranks + a sidecar with the nanochat pattern and <|bos|> right after the ranks"""
    with open(stem + ".tiktoken", "w") as f:
        for b, r in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(base64.b64encode(b).decode() + f" {r}\n")
    json.dump({"format": "tiktoken-sidecar", "version": 1, "name": "probe", "pattern": PATTERNS["nanochat"],
               "n_mergeable": len(ranks), "special_tokens": [["<|bos|>", len(ranks)]], "bos_token": "<|bos|>",
               "n_vocab": len(ranks) + 1}, open(stem + ".json", "w"))


def blank_line_docs(text):
    """prepare_data's default document rule: a line of only spaces, tabs and CR is blank; a document
    is a maximal run of non-blank lines joined by "\n", without the CR of its last line's CRLF"""
    docs, cur = [], []
    for line in text.split("\n") + [""]:
        if line.strip(" \t\r"):
            cur.append(line)
        elif cur:
            d = "\n".join(cur)
            docs.append(d[:-1] if d.endswith("\r") else d)
            cur = []
    return docs


def check_training(prep, tmp, input_path, docs, vocab, label):
    out = os.path.join(tmp, f"train_{label}_{vocab}")
    run([prep, "--input", input_path, "--out", out, "--vocab-size", str(vocab)])
    ours = load_tiktoken_bpe(os.path.join(out, "tokenizer.tiktoken"))
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter([d[:10000] for i, d in enumerate(docs) if i % 10 != 0]), vocab - 9,
                            pattern=PATTERNS["nanochat"])
    theirs = {bytes(b): r for b, r in tok.get_mergeable_ranks()}
    diff = sorted(r for b, r in ours.items() if theirs.get(b) != r)
    report(ours == theirs, f"training {label} vocab {vocab}: {len(ours)} ranks, rustbpe {len(theirs)}"
           + (f", first differing rank {diff[0]}" if diff else ", identical"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="../shared/data/tinyshakespeare.txt")
    ap.add_argument("--prepare-data", default="./prepare_data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    prep = os.path.abspath(args.prepare_data)
    tmp = tempfile.mkdtemp(prefix="llmc_crosscheck_")
    rng = random.Random(args.seed)
    print(f"tiktoken {tiktoken.__version__}, rustbpe, work dir {tmp}")

    # 1 + 2: the corpus
    text = open(args.corpus, encoding="utf-8", newline="").read()
    docs = blank_line_docs(text)
    for vocab in (4096, 16384, 32768):
        out = check_training(prep, tmp, args.corpus, docs, vocab, "corpus")
    out = os.path.join(tmp, "train_corpus_4096")
    side = json.load(open(os.path.join(out, "tokenizer.json")))
    ranks = load_tiktoken_bpe(os.path.join(out, "tokenizer.tiktoken"))
    specials = {n: i for n, i in side["special_tokens"]}
    enc = tiktoken.Encoding(name="x", pat_str=side["pattern"], mergeable_ranks=ranks, special_tokens=specials)
    bos = specials[side["bos_token"]]
    stem = os.path.splitext(os.path.basename(args.corpus))[0]
    for split, sel in (("train", lambda i: i % 10 != 0), ("val", lambda i: i % 10 == 0)):
        want = [t for i, d in enumerate(docs) if sel(i) for t in [bos] + enc.encode_ordinary(d)]
        got = read_shard(os.path.join(out, f"{stem}_{split}_000000.bin"))
        report(got == want, f"{split} shard of the corpus equals tiktoken's encoding ({len(want)} tokens)")

    # 1: random multilingual text (many ties, all Unicode planes)
    texts = random_texts(rng, 20000) + [("\u65e5\u672c\u8a9e " * 4000) + "tail"]  # one doc over the 10k cap
    rand_path = os.path.join(tmp, "random.jsonl")
    write_jsonl(rand_path, texts)
    for vocab in (600, 3000, 8000):
        check_training(prep, tmp, rand_path, texts, vocab, "random")

    # 3: encoding random strings with each pattern (ranks of the 16k corpus tokenizer)
    ranks16 = load_tiktoken_bpe(os.path.join(tmp, "train_corpus_16384", "tokenizer.tiktoken"))
    side16 = json.load(open(os.path.join(tmp, "train_corpus_16384", "tokenizer.json")))
    texts = random_texts(rng, 20000)
    write_jsonl(rand_path, texts)
    for name, pat in PATTERNS.items():
        stem = os.path.join(tmp, f"pat_{name}")
        s2 = dict(side16, pattern=pat)
        json.dump(s2, open(stem + ".json", "w"))
        with open(stem + ".tiktoken", "w") as f:
            f.write(open(os.path.join(tmp, "train_corpus_16384", "tokenizer.tiktoken")).read())
        out = os.path.join(tmp, f"enc_{name}")
        run([prep, "--input", rand_path, "--out", out, "--prefix", "r", "--tokenizer", stem, "--val-every", "0"])
        enc = tiktoken.Encoding(name=name, pat_str=pat, mergeable_ranks=ranks16,
                                special_tokens={n: i for n, i in side16["special_tokens"]})
        got = split_at_bos(read_shard(os.path.join(out, "r_train_000000.bin")), enc.encode_single_token("<|bos|>"))
        bad = [s for s, g in zip(texts, got) if enc.encode_ordinary(s) != g]
        report(not bad and len(got) == len(texts), f"pattern {name}: {len(texts)} random strings, {len(bad)} differ from tiktoken"
               + (f" (first: {bad[0]!r})" if bad else ""))

    # 4: Unicode version: letters added in 15.1 / 16.0 (L to tiktoken) and 17.0 (not yet)
    probes = {"15.1 CJK ext I U+2EBF0": (0x2EBF0, True), "16.0 Cyrillic U+1C89": (0x1C89, True),
              "16.0 Garay U+10D4A": (0x10D4A, True), "17.0 Sidetic U+10940": (0x10940, False)}
    ranks = {bytes([i]): i for i in range(256)}
    for cp, _ in probes.values():
        ranks[("a" + chr(cp) + "a").encode()] = len(ranks)
    enc = tiktoken.Encoding(name="probe", pat_str=PATTERNS["nanochat"], mergeable_ranks=ranks, special_tokens={})
    stem = os.path.join(tmp, "probe")
    write_tokenizer(stem, ranks)
    probe_texts = ["a" + chr(cp) + "a" for cp, _ in probes.values()]
    write_jsonl(rand_path, probe_texts)
    run([prep, "--input", rand_path, "--out", os.path.join(tmp, "probe_out"), "--prefix", "p", "--tokenizer", stem,
         "--val-every", "0"])
    got = split_at_bos(read_shard(os.path.join(tmp, "probe_out", "p_train_000000.bin")), len(ranks))
    for (label, (cp, letter)), s, g in zip(probes.items(), probe_texts, got):
        t = enc.encode_ordinary(s)
        report(t == g and (len(t) == 1) == letter, f"Unicode {label}: tiktoken {'L' if len(t) == 1 else 'not L'}, ours "
               + ("same" if t == g else "different"))
    # 5: the case-insensitive contractions: apostrophe + two letters from a set with case-fold
    # relatives (long s, Kelvin sign, dotted/dotless i, sharp s); every substring is a token, so the
    # ids spell out tiktoken's pieces
    chars = list("sSdDmMtTlLvVeErRkK") + ["\u017f", "\u212a", "\u0130", "\u0131", "\u1e9e", "\u00df", "\u212b", "x"]
    cands = ["'" + a + b + "x" for a in chars for b in chars]
    ranks = {bytes([i]): i for i in range(256)}
    for c in cands:
        for i in range(2, len(c) + 1):
            for j in range(0, i - 1):
                ranks.setdefault(c[j:i].encode(), len(ranks))
    write_tokenizer(stem, ranks)
    write_jsonl(rand_path, cands)
    run([prep, "--input", rand_path, "--out", os.path.join(tmp, "a1_out"), "--prefix", "p", "--tokenizer", stem,
         "--val-every", "0"])
    enc = tiktoken.Encoding(name="a1", pat_str=PATTERNS["nanochat"], mergeable_ranks=ranks, special_tokens={})
    got = split_at_bos(read_shard(os.path.join(tmp, "a1_out", "p_train_000000.bin")), len(ranks))
    bad = [c for c, g in zip(cands, got) if enc.encode_ordinary(c) != g]
    report(not bad, f"contractions: {len(cands)} apostrophe cases, {len(bad)} split differently" + (f" (first: {bad[0]!r})" if bad else ""))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
