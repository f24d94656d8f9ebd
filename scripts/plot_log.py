#!/usr/bin/env python3
"""Plot train_gpt's JSON Lines logs: training and validation loss against tokens seen.

usage: scripts/plot_log.py LOG [LOG ...] [-o loss.png] [--labels A B ...] [--title T] [--logx]

Each LOG is a log.jsonl written by train_gpt (or a run directory holding one). Training loss is drawn
as a thin line, validation loss as dots joined by a thicker line, one colour per log. The x axis is
tokens ("tokens" in each line; older logs without it fall back to step x total_batch_size from the
start line, or to steps). A step that appears more than once (a log from before the trainer dropped
lines on resume) keeps its last value. Lines that are not JSON (a run killed mid-write) are skipped.

Needs matplotlib (pip install matplotlib, or apt-get install python3-matplotlib); everything else is
the standard library. The arguments are checked, and the logs read, before matplotlib is imported.
"""
import argparse
import json
import os
import sys


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def read_log(path):
    """Return (train, val, xlabel): train/val are sorted lists of (x, loss)."""
    if os.path.isdir(path):
        path = os.path.join(path, "log.jsonl")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        fail(f"cannot read '{path}': {e.strerror}")
    batch = None
    train, val = {}, {}
    have_tokens = False
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            j = json.loads(line)
        except json.JSONDecodeError:
            print(f"note: {path}:{n}: not JSON (a torn line?), skipped", file=sys.stderr)
            continue
        if not isinstance(j, dict) or "step" not in j:
            continue
        if j.get("event") in ("start", "resume") and "total_batch_size" in j:
            batch = j["total_batch_size"]
        step = j["step"]
        if "tokens" in j:
            have_tokens = True
        x = j.get("tokens", step * batch if batch else step)
        if isinstance(j.get("loss"), (int, float)):
            train[step] = (x, j["loss"])
        if isinstance(j.get("val_loss"), (int, float)):
            val[step] = (x, j["val_loss"])
    if not train and not val:
        fail(f"'{path}' has no training or validation loss lines: is it a train_gpt log.jsonl?")
    xlabel = "tokens" if have_tokens or batch else "steps"
    return sorted(train.values()), sorted(val.values()), xlabel


def main():
    ap = argparse.ArgumentParser(description="Plot train/val loss against tokens from train_gpt log.jsonl files.")
    ap.add_argument("logs", nargs="+", help="log.jsonl files (or run directories holding one)")
    ap.add_argument("-o", "--output", default="loss.png", help="PNG to write (default: loss.png)")
    ap.add_argument("--labels", nargs="+", help="one legend label per log (default: the log's directory)")
    ap.add_argument("--title", default="", help="plot title")
    ap.add_argument("--logx", action="store_true", help="logarithmic token axis")
    args = ap.parse_args()
    if args.labels and len(args.labels) != len(args.logs):
        fail(f"--labels gives {len(args.labels)} labels for {len(args.logs)} logs")
    if not args.output.lower().endswith(".png"):
        fail(f"--output '{args.output}' should end in .png")
    runs = [read_log(p) for p in args.logs]

    try:
        import matplotlib
        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        fail("plot_log.py needs matplotlib: pip install matplotlib (or apt-get install python3-matplotlib)")

    fig, ax = plt.subplots(figsize=(8, 5))
    xlabels = set()
    for i, (path, (train, val, xlabel)) in enumerate(zip(args.logs, runs)):
        p = os.path.abspath(path)
        label = args.labels[i] if args.labels else os.path.basename(p if os.path.isdir(p) else os.path.dirname(p))
        color = f"C{i % 10}"
        xlabels.add(xlabel)
        if train:
            ax.plot([x for x, _ in train], [y for _, y in train], color=color, linewidth=0.8, alpha=0.6, label=f"{label} train")
        if val:
            ax.plot([x for x, _ in val], [y for _, y in val], color=color, linewidth=2, marker="o", markersize=3, label=f"{label} val")
    ax.set_xlabel(" / ".join(sorted(xlabels)))
    ax.set_ylabel("loss (nats per token)")
    if args.logx:
        ax.set_xscale("log")
    if args.title:
        ax.set_title(args.title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(args.output, dpi=120)
    except OSError as e:
        fail(f"cannot write '{args.output}': {e.strerror}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
