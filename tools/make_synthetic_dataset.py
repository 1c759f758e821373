#!/usr/bin/python3
"""Write a synthetic SCAN benchmark in the precomputed format, deterministically from a seed.

    /usr/bin/python3 tools/make_synthetic_dataset.py --out data/synthetic [--seed 1234]
        [--train-images 3000] [--dev-images 500] [--test-images 1000]

The world: 100 object kinds x 30 attributes, each with a fixed random 2048-d prototype (non-negative
and sparse, like pool5 features after the ReLU). An "image" is a scene of 2-4 salient entities (an
object with an attribute, e.g. a red dog), each seen by 2-5 detector regions, plus single-region
clutter (other objects with random attributes): 10-36 regions in all. A region's feature is a noisy
mix  w_o * P[object] + w_a * Q[attribute] + noise  (weights varying per region, sparse half-normal
noise). Each image has 5 captions from templates naming 1-3 of its salient entities, mostly with their
attributes, joined by relations ("a red dog next to a wooden bench") and wrapped in distractor
phrases ("a photo of ...", "... on a sunny day").

Files, for split in train, dev, test (captions 5i..5i+4 belong to image i, as in SCAN's data):
  {split}_ims.npy            float32 (N, 36, 2048)
  {split}_caps.txt           5N lines
  {split}_region_counts.npy  int64 (N,): the image's number of distinct regions (10..36)
  {split}_scenes.jsonl       one JSON object per image: its salient entities and every region's
                             (attribute, object), for showing what a result "looks like"
  dataset.json               the generator's settings (the cache key of scripts/train-demo.sh)

Padding: SCAN's format has a fixed k = 36 regions per image. An image with fewer distinct regions
fills the remaining rows by repeating its own regions (as a detector's near-duplicate boxes would),
never with zeros, so every consumer of the format (scan_train, scan_eval, the server) reads the rows
as they are, with no side file; region_counts.npy only records the ground truth.

Deterministic: the same --seed and sizes give byte-identical files (numpy's PCG64 streams).
Runs under Debian's /usr/bin/python3 with numpy only.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

GENERATOR_VERSION = 1
REGIONS = 36
IMG_DIM = 2048
MIN_REGIONS, MAX_REGIONS = 10, 36

OBJECTS = (
    # animals
    "dog cat horse cow sheep bird duck bear zebra giraffe elephant lion tiger monkey rabbit fox deer "
    "goat pig chicken "
    # home
    "bench chair table sofa bed lamp clock vase bottle cup bowl plate fork knife spoon pillow mirror "
    "shelf sink oven "
    # vehicles
    "car bus truck bicycle motorcycle boat train airplane tractor scooter "
    # sports and outdoor
    "ball frisbee skateboard surfboard racket kite umbrella helmet tent sled "
    # clothing
    "hat shirt jacket dress shoe bag backpack suitcase scarf glove "
    # nature and structures
    "tree flower bush rock fence door window sign pole house tower bridge fountain statue barrel "
    # food
    "pizza cake apple banana sandwich donut carrot broccoli "
    # things
    "laptop phone keyboard television book camera guitar"
).split()
ATTRIBUTES = (
    "red blue green yellow black white brown gray pink purple golden silver striped spotted wooden "
    "metal plastic glass leather stone small large tall tiny old new shiny dirty wet broken"
).split()
RELATIONS = ["next to", "on top of", "behind", "in front of", "near", "under", "beside", "above",
             "on", "by", "leaning against", "with"]
PREFIXES = ["a photo of", "a picture of", "an image of", "there is", "we can see", "this is",
            "a view of", "a close up of"]
SUFFIXES = ["in the scene", "on a sunny day", "in this picture", "at night", "outside", "indoors",
            "in the afternoon", "during the day"]

assert len(OBJECTS) == 100 and len(set(OBJECTS)) == 100, len(OBJECTS)
assert len(ATTRIBUTES) == 30 and len(set(ATTRIBUTES)) == 30
assert not set(OBJECTS) & set(ATTRIBUTES)

SPLITS = ("train", "dev", "test")
CHUNK_IMAGES = 250  # features are generated and written this many images at a time


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def make_prototypes(seed):
    """Fixed object and attribute prototypes: non-negative, half of the dimensions active."""
    rng = np.random.default_rng([seed, 0])

    def draw(n):
        p = np.abs(rng.standard_normal((n, IMG_DIM), dtype=np.float32))
        p *= rng.random((n, IMG_DIM), dtype=np.float32) < 0.5
        return p

    return draw(len(OBJECTS)), draw(len(ATTRIBUTES))


def make_scene(rng):
    """(salient entities [(obj, attr)], regions [(obj, attr)] with the salient ones first)."""
    n_regions = int(rng.integers(MIN_REGIONS, MAX_REGIONS + 1))
    n_salient = int(rng.integers(2, 5))
    objects = rng.choice(len(OBJECTS), size=n_salient, replace=False)
    entities = [(int(o), int(rng.integers(len(ATTRIBUTES)))) for o in objects]
    regions = []
    for e in entities:
        regions += [e] * int(rng.integers(2, 6))
    regions = regions[:n_regions]
    salient_objects = set(int(o) for o in objects)
    others = [o for o in range(len(OBJECTS)) if o not in salient_objects]
    while len(regions) < n_regions:  # clutter: one region per other object
        regions.append((int(rng.choice(others)), int(rng.integers(len(ATTRIBUTES)))))
    # The salient entities actually seen (a long entity list can be cut by n_regions).
    seen = [e for e in entities if e in regions]
    return seen, regions


def entity_phrase(rng, entity, definite):
    obj, attr = OBJECTS[entity[0]], ATTRIBUTES[entity[1]]
    words = [attr, obj] if rng.random() < 0.85 else [obj]
    det = "the" if definite else article(words[0])
    return " ".join([det] + words)


def make_caption(rng, entities):
    m = int(rng.choice([1, 2, 3], p=[0.15, 0.5, 0.35]))
    m = min(m, len(entities))
    chosen = [entities[i] for i in rng.permutation(len(entities))[:m]]
    phrases = [entity_phrase(rng, e, definite=(i > 0 and rng.random() < 0.3)) for i, e in enumerate(chosen)]
    rel = lambda: RELATIONS[int(rng.integers(len(RELATIONS)))]
    if m == 1:
        body = phrases[0]
    elif m == 2:
        body = phrases[0] + (" and " if rng.random() < 0.25 else " " + rel() + " ") + phrases[1]
    else:
        form = int(rng.integers(3))
        if form == 0:
            body = "%s %s %s and %s" % (phrases[0], rel(), phrases[1], phrases[2])
        elif form == 1:
            body = "%s and %s %s %s" % (phrases[0], phrases[1], rel(), phrases[2])
        else:
            body = "%s %s %s %s %s" % (phrases[0], rel(), phrases[1], rel(), phrases[2])
    if rng.random() < 0.4:
        body = PREFIXES[int(rng.integers(len(PREFIXES)))] + " " + body
    if rng.random() < 0.4:
        body = body + " " + SUFFIXES[int(rng.integers(len(SUFFIXES)))]
    if rng.random() < 0.5:
        body = body[0].upper() + body[1:]
    if rng.random() < 0.5:
        body += "."
    return body


def region_features(rng, regions, obj_proto, attr_proto, noise):
    """(len(regions), IMG_DIM) float32: w_o P[o] + w_a Q[a] + sparse half-normal noise."""
    n = len(regions)
    o = np.array([r[0] for r in regions])
    a = np.array([r[1] for r in regions])
    w_o = rng.uniform(0.6, 1.2, size=(n, 1)).astype(np.float32)
    w_a = rng.uniform(0.4, 1.0, size=(n, 1)).astype(np.float32)
    x = w_o * obj_proto[o] + w_a * attr_proto[a]
    x += noise * np.abs(rng.standard_normal((n, IMG_DIM), dtype=np.float32)) * (
        rng.random((n, IMG_DIM), dtype=np.float32) < 0.5)
    return x


def write_split(out, split, split_index, n_images, seed, obj_proto, attr_proto, noise):
    rng = np.random.default_rng([seed, 1 + split_index])
    ims = np.lib.format.open_memmap(os.path.join(out, split + "_ims.npy.tmp"), mode="w+",
                                    dtype=np.float32, shape=(n_images, REGIONS, IMG_DIM))
    counts = np.zeros(n_images, dtype=np.int64)
    captions, scenes = [], []
    for begin in range(0, n_images, CHUNK_IMAGES):
        end = min(n_images, begin + CHUNK_IMAGES)
        block = np.empty((end - begin, REGIONS, IMG_DIM), dtype=np.float32)
        for i in range(begin, end):
            entities, regions = make_scene(rng)
            feats = region_features(rng, regions, obj_proto, attr_proto, noise)
            k = len(regions)
            block[i - begin] = feats[np.arange(REGIONS) % k]  # pad by repeating the image's regions
            counts[i] = k
            captions += [make_caption(rng, entities) for _ in range(5)]
            scenes.append({
                "image": i,
                "entities": [[ATTRIBUTES[a], OBJECTS[o]] for o, a in entities],
                "regions": [[ATTRIBUTES[a], OBJECTS[o]] for o, a in regions],
            })
        ims[begin:end] = block
    ims.flush()
    del ims
    os.replace(os.path.join(out, split + "_ims.npy.tmp"), os.path.join(out, split + "_ims.npy"))
    np.save(os.path.join(out, split + "_region_counts.npy"), counts)
    with open(os.path.join(out, split + "_caps.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(captions) + "\n")
    with open(os.path.join(out, split + "_scenes.jsonl"), "w", encoding="utf-8") as f:
        for s in scenes:
            f.write(json.dumps(s, separators=(",", ":")) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--train-images", type=int, default=3000)
    ap.add_argument("--dev-images", type=int, default=500)
    ap.add_argument("--test-images", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=1.0, help="noise scale relative to the prototypes")
    a = ap.parse_args(argv)
    sizes = {"train": a.train_images, "dev": a.dev_images, "test": a.test_images}
    for split, n in sizes.items():
        if n < 1:
            ap.error("--%s-images must be >= 1" % split)
    os.makedirs(a.out, exist_ok=True)
    settings = {"generator": "make_synthetic_dataset.py", "version": GENERATOR_VERSION, "seed": a.seed,
                "images": sizes, "noise": a.noise, "regions": REGIONS, "img_dim": IMG_DIM,
                "objects": len(OBJECTS), "attributes": len(ATTRIBUTES)}
    start = time.time()
    obj_proto, attr_proto = make_prototypes(a.seed)
    for index, split in enumerate(SPLITS):
        write_split(a.out, split, index, sizes[split], a.seed, obj_proto, attr_proto, a.noise)
        print("%s: %d images, %d captions (%.1f s)" % (split, sizes[split], 5 * sizes[split],
                                                      time.time() - start), flush=True)
    with open(os.path.join(a.out, "dataset.json"), "w") as f:
        json.dump(settings, f, indent=2, sort_keys=True)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
