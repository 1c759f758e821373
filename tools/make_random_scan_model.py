#!/usr/bin/env python3
"""Writes a SCAN model directory (docs/model-format.md) with random weights at the released models'
sizes (embed 1024, word_dim 300, img_dim 2048, one BiGRU layer, t2i LogSumExp, lambda 9 / 6,
clipped_l2norm), using only numpy: for load tests and benchmarks where no trained checkpoint (or no
torch for the converter) is at hand, e.g. on the GPU machine (scripts/gpu-serve-bench.sh). Its
rankings are meaningless; its cost is the real one. Optionally writes random captions over its
vocabulary, one per line, for `scanctl bench --captions`.

  python3 tools/make_random_scan_model.py OUT_DIR [--vocab VOCAB.json | --vocab-size 8481]
      [--embed-size 1024] [--captions-out FILE --captions 1000] [--seed 0]
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_dir_io import write_dir_atomically, write_safetensors  # noqa: E402

SPECIALS = ["<pad>", "<start>", "<end>", "<unk>"]
CAPTION_WORDS = (
    "a an the man woman boy girl child dog cat people group is are wearing holding sitting standing "
    "walking running playing riding looking at on in of with and near by to from under over while "
    "red blue green yellow black white young old little big two three street water grass field "
    "beach snow city shirt hat jacket bike car ball table food building wall tree background ."
).split()


def vocabulary(size):
    """SCAN's serialized vocabulary: the specials, common caption words, then w<N> up to `size`."""
    words = list(SPECIALS) + CAPTION_WORDS
    words += ["w%d" % i for i in range(max(0, size - len(words)))]
    words = words[:max(size, len(SPECIALS) + 1)]
    return {"word2idx": {w: i for i, w in enumerate(words)},
            "idx2word": {str(i): w for i, w in enumerate(words)}, "idx": len(words)}


def tensors(rng, vocab_size, embed, word_dim, img_dim):
    def uniform(shape, bound):
        return rng.uniform(-bound, bound, shape).astype(np.float32)

    t = {"img_enc.fc.weight": uniform((embed, img_dim), (6.0 / (img_dim + embed)) ** 0.5),
         "img_enc.fc.bias": np.zeros(embed, np.float32),
         "txt_enc.embed.weight": uniform((vocab_size, word_dim), 0.1)}
    bound = embed ** -0.5  # PyTorch's GRU initialisation
    for suffix in ("", "_reverse"):
        t["txt_enc.rnn.weight_ih_l0" + suffix] = uniform((3 * embed, word_dim), bound)
        t["txt_enc.rnn.weight_hh_l0" + suffix] = uniform((3 * embed, embed), bound)
        t["txt_enc.rnn.bias_ih_l0" + suffix] = uniform((3 * embed,), bound)
        t["txt_enc.rnn.bias_hh_l0" + suffix] = uniform((3 * embed,), bound)
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--vocab", help="a SCAN vocabulary JSON to use (default: a synthetic one)")
    ap.add_argument("--vocab-size", type=int, default=8481, help="synthetic vocabulary size (f30k's: 8481)")
    ap.add_argument("--embed-size", type=int, default=1024)
    ap.add_argument("--captions-out", help="also write random captions over the vocabulary here")
    ap.add_argument("--captions", type=int, default=1000, help="how many (10..16 words each)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.vocab:
        with open(args.vocab) as f:
            vocab = json.load(f)
    else:
        vocab = vocabulary(args.vocab_size)
    rng = np.random.default_rng(args.seed)

    def fill(out):
        t = tensors(rng, vocab["idx"], args.embed_size, 300, 2048)
        write_safetensors(os.path.join(out, "weights.safetensors"), {name: t[name] for name in sorted(t)})
        config = {"format": "scanserve.scan_model", "format_version": 1, "cross_attn": "t2i",
                  "agg_func": "LogSumExp", "lambda_softmax": 9.0, "lambda_lse": 6.0,
                  "raw_feature_norm": "clipped_l2norm", "bi_gru": True, "num_layers": 1,
                  "no_imgnorm": False, "no_txtnorm": False, "precomp_enc_type": "basic",
                  "embed_size": args.embed_size, "word_dim": 300, "img_dim": 2048,
                  "vocab_size": vocab["idx"], "margin": 0.2, "data_name": "random",
                  "source": {"checkpoint": "random (tools/make_random_scan_model.py, seed %d)" % args.seed}}
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        if args.vocab:
            shutil.copyfile(args.vocab, os.path.join(out, "vocab.json"))
        else:
            with open(os.path.join(out, "vocab.json"), "w") as f:
                json.dump(vocab, f)

    write_dir_atomically(args.out, True, fill)
    if args.captions_out:
        words = [w for w in vocab["word2idx"] if w not in SPECIALS]
        with open(args.captions_out, "w") as f:
            for _ in range(args.captions):
                f.write(" ".join(rng.choice(words, size=int(rng.integers(10, 17)))) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
