#!/usr/bin/env python3
"""Writes a detector directory (docs/detector-format.md) with random, well-scaled weights, using only
numpy: for timing the network where the caffemodel converter's dependencies (protobuf) are absent,
e.g. on the GPU machine (scripts/gpu-check.sh). Its outputs are meaningless; its cost is the real one.

  python3 tools/make_random_detector.py OUT_DIR [--seed 0]
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_dir_io import write_dir_atomically, write_safetensors  # noqa: E402


def tensors(rng):
    t = {}

    def conv(name, out, cin, k, gain=1.0):
        t[name + ".weight"] = rng.standard_normal((out, cin, k, k), np.float32) * np.float32(
            gain * (2.0 / (cin * k * k)) ** 0.5)
        t[name + ".bias"] = rng.standard_normal(out, np.float32) * np.float32(0.1)

    conv("conv1", 64, 3, 7, gain=1 / 60)  # inputs are pixels minus means, |x| up to ~150
    for stage, blocks, cin, mid, numbered in ((2, 3, 64, 64, False), (3, 4, 256, 128, True),
                                              (4, 23, 512, 256, True), (5, 3, 1024, 512, False)):
        for b in range(blocks):
            name = "res%da" % stage if b == 0 else ("res%db%d" % (stage, b) if numbered else "res%d%s" % (stage, "abc"[b]))
            inp = cin if b == 0 else 4 * mid
            conv(name + "_branch2a", mid, inp, 1)
            conv(name + "_branch2b", mid, mid, 3)
            conv(name + "_branch2c", 4 * mid, mid, 1, gain=0.2)  # keeps the residual stream bounded
            if b == 0:
                conv(name + "_branch1", 4 * mid, inp, 1, gain=0.5)
    conv("rpn_conv_3x3", 512, 1024, 3)
    conv("rpn_cls_score", 24, 512, 1, gain=0.5)
    conv("rpn_bbox_pred", 48, 512, 1, gain=0.05)
    t["cls_score.weight"] = rng.standard_normal((1601, 2048), np.float32) * np.float32(0.05)
    t["cls_score.bias"] = np.zeros(1601, np.float32)
    t["cls_embedding.weight"] = rng.standard_normal((1601, 256), np.float32)
    t["fc_attr.weight"] = rng.standard_normal((512, 2304), np.float32) * np.float32(0.03)
    t["fc_attr.bias"] = np.zeros(512, np.float32)
    t["attr_score.weight"] = rng.standard_normal((401, 512), np.float32) * np.float32(0.1)
    t["attr_score.bias"] = np.zeros(401, np.float32)
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    def fill(out):
        t = tensors(np.random.default_rng(args.seed))
        write_safetensors(os.path.join(out, "weights.safetensors"), {name: t[name] for name in sorted(t)})
        with open(os.path.join(out, "detector.json"), "w") as f:
            json.dump({"format": "scanserve.bottom_up_detector", "format_version": 1, "num_classes": 1601,
                       "num_attributes": 401, "min_boxes": 36, "max_boxes": 36, "conf_threshold": 0.2,
                       "source": {"caffemodel": "random (tools/make_random_detector.py, seed %d)" % args.seed}},
                      f, indent=2)
        for name, n in (("objects_vocab.txt", 1600), ("attributes_vocab.txt", 400)):
            with open(os.path.join(out, name), "w") as f:
                f.writelines("%s%d\n" % (name.split("_")[0].rstrip("s"), i) for i in range(n))

    write_dir_atomically(args.out, True, fill)
    print(args.out)


if __name__ == "__main__":
    main()
