"""Random-weight checkpoints in the exact layout the original SCAN code (kuanghuei/SCAN) writes.

A SCAN checkpoint (`model_best.pth.tar`, `checkpoint_N.pth.tar`) is
    torch.save({'epoch', 'model': [img_enc_state_dict, txt_enc_state_dict], 'best_rsum', 'opt', 'Eiters'})
with `opt` the argparse.Namespace of train.py (plus `vocab_size`, which train.py sets after parsing).
The state dicts use the module names of SCAN's EncoderImagePrecomp / EncoderImageWeightNormPrecomp
(`fc.weight`, `fc.bias` / `fc.weight_g`, `fc.weight_v`, `fc.bias`) and EncoderText (`embed.weight`,
`rnn.weight_ih_l0`, ..., `_reverse`). Files are saved in torch's legacy (non-zip) serialization with
pickle protocol 2, as the Python 2 / torch 0.3 era code wrote them.

Nothing here is imported from the original code; the layout is rebuilt from its description.
Run under Debian's /usr/bin/python3 (python3-torch).
"""

import argparse
import collections
import json
import math
import pickle
import struct

import numpy as np
import torch

SPECIALS = ["<pad>", "<start>", "<end>", "<unk>"]

# A small word list for synthetic vocabularies: caption-like words plus the punctuation/clitic tokens
# NLTK's Treebank rules produce, so tokenizer behaviour is exercised with known (non-<unk>) ids.
BASE_WORDS = (
    "a an the man woman men women boy girl child children dog dogs cat person people player team "
    "is are was be being wearing holding sitting standing walking running playing riding looking "
    "at on in of with and near by to from under over into through while for up down out "
    "red blue green yellow black white orange brown pink purple gray young old little big small "
    "two three four five several many some group crowd street water grass field beach snow city "
    "shirt hat jacket dress glasses bike car ball frisbee table food camera building wall sign tree "
    ". , ' 's n't `` '' - ( ) : ; ! ? $ % & -- ... 3.5 10 2 t-shirt u.s. etc mr. dr. o'clock "
    "do does ca wo can not it its this that there they he she his her their background front"
).split()


def make_vocab_dict(words):
    """SCAN's serialized vocabulary for SPECIALS + `words` (duplicates dropped, order kept)."""
    word2idx, idx2word = {}, {}
    for w in list(SPECIALS) + list(words):
        if w not in word2idx:
            word2idx[w] = len(word2idx)
            idx2word[str(word2idx[w])] = w
    return {"word2idx": word2idx, "idx2word": idx2word, "idx": len(word2idx)}


def write_vocab(path, words=BASE_WORDS):
    """Writes a vocab JSON like SCAN's vocab.py serialize_vocab; returns the dict."""
    d = make_vocab_dict(words)
    with open(path, "w") as f:
        json.dump(d, f)
    return d


# Every field train.py's argparse defines, with its default, plus vocab_size (set by train.py).
TRAIN_DEFAULTS = collections.OrderedDict([
    ("data_path", "./data/"),
    ("data_name", "precomp"),
    ("vocab_path", "./vocab/"),
    ("margin", 0.2),
    ("num_epochs", 30),
    ("batch_size", 128),
    ("word_dim", 300),
    ("embed_size", 1024),
    ("grad_clip", 2.0),
    ("num_layers", 1),
    ("learning_rate", 0.0002),
    ("lr_update", 15),
    ("workers", 10),
    ("log_step", 10),
    ("val_step", 500),
    ("logger_name", "./runs/runX/log"),
    ("model_name", "./runs/runX/checkpoint"),
    ("resume", ""),
    ("max_violation", False),
    ("img_dim", 2048),
    ("no_imgnorm", False),
    ("no_txtnorm", False),
    ("raw_feature_norm", "clipped_l2norm"),
    ("agg_func", "LogSumExp"),
    ("cross_attn", "t2i"),
    ("precomp_enc_type", "basic"),
    ("bi_gru", False),
    ("lambda_lse", 6.0),
    ("lambda_softmax", 9.0),
])

# Small dimensions for fast tests (the released models use embed 1024, word_dim 300, img_dim 2048).
SMALL_DIMS = dict(embed_size=64, word_dim=32, img_dim=96)
REAL_DIMS = dict(embed_size=1024, word_dim=300, img_dim=2048)


def make_opt(vocab_size, small=True, **overrides):
    """argparse.Namespace like train.py's, with the released F30K t2i-LSE settings (bi_gru,
    --max_violation) and small dimensions unless small=False. `overrides` replace any field."""
    fields = collections.OrderedDict(TRAIN_DEFAULTS)
    fields.update(data_name="f30k_precomp", vocab_path="./vocab/", max_violation=True, bi_gru=True,
                  logger_name="runs/f30k_scan/log", model_name="runs/f30k_scan/log")
    fields.update(SMALL_DIMS if small else REAL_DIMS)
    fields["vocab_size"] = vocab_size
    for k, v in overrides.items():
        fields[k] = v
    return argparse.Namespace(**fields)


def _uniform(gen, shape, r, dtype=torch.float32):
    return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1).mul(r).to(dtype)


def gru_tensor_names(num_layers, bi_gru):
    """PyTorch's GRU parameter names in state-dict order."""
    names = []
    for layer in range(num_layers):
        for suffix in ([""] + (["_reverse"] if bi_gru else [])):
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                names.append("%s_l%d%s" % (kind, layer, suffix))
    return names


def make_state_dicts(opt, seed=0, g_mode="scalar", scale=1.0):
    """Random img_enc/txt_enc state dicts (OrderedDicts of float32 tensors) with SCAN's module names.

    g_mode (weight_norm variant only): "scalar" = 0-d g (weight_norm dim=None in torch >= 0.4),
    "shape1" = g of shape [1] (torch 0.3), "row" = per-row g of shape (out, 1) (weight_norm dim=0).
    Weights are drawn so that embeddings are O(1) before normalisation and the attention is neither
    uniform nor saturated: image fc Xavier-uniform like SCAN's init, embedding U(-0.5, 0.5) (wider
    than SCAN's 0.1 so words differ clearly), GRU U(-2/sqrt(H), 2/sqrt(H)) (twice torch's default).
    """
    gen = torch.Generator().manual_seed(seed)
    E, D, F = int(opt.embed_size), int(opt.word_dim), int(opt.img_dim)
    V = int(opt.vocab_size)
    img = collections.OrderedDict()
    r = math.sqrt(6.0) / math.sqrt(F + E) * scale
    w = _uniform(gen, (E, F), r)
    b = _uniform(gen, (E,), 0.05 * scale)
    if opt.precomp_enc_type == "weight_norm":
        # weight_norm's own state-dict order: bias, weight_g, weight_v.
        v = _uniform(gen, (E, F), 1.0)
        if g_mode == "row":
            g = (torch.rand(E, 1, generator=gen, dtype=torch.float64) + 0.5).mul(r * math.sqrt(F / 3.0))
        else:
            g = torch.tensor(r * math.sqrt(E * F / 3.0), dtype=torch.float64)
            if g_mode == "shape1":
                g = g.reshape(1)
            elif g_mode != "scalar":
                raise ValueError("g_mode must be scalar, shape1 or row")
        img["fc.bias"] = b
        img["fc.weight_g"] = g.float()
        img["fc.weight_v"] = v
    else:
        img["fc.weight"] = w
        img["fc.bias"] = b
    txt = collections.OrderedDict()
    txt["embed.weight"] = _uniform(gen, (V, D), 0.5 * scale)
    dirs = 2 if opt.bi_gru else 1
    k = 2.0 / math.sqrt(E) * scale
    for name in gru_tensor_names(int(opt.num_layers), bool(opt.bi_gru)):
        layer = int(name.split("_l")[1].split("_")[0])
        in_dim = D if layer == 0 else E * dirs
        if name.startswith("weight_ih"):
            shape = (3 * E, in_dim)
        elif name.startswith("weight_hh"):
            shape = (3 * E, E)
        else:
            shape = (3 * E,)
        txt["rnn." + name] = _uniform(gen, shape, k)
    return img, txt


def to_bytes_keys(obj):
    """What a Python 2 pickle looks like when loaded with encoding='bytes': str keys/values -> bytes."""
    if isinstance(obj, str):
        return obj.encode("utf-8")
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((to_bytes_keys(k), to_bytes_keys(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {to_bytes_keys(k): to_bytes_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_bytes_keys(x) for x in obj]
    if isinstance(obj, argparse.Namespace):
        ns = argparse.Namespace()
        for k, v in vars(obj).items():
            setattr(ns, k, to_bytes_keys(v))  # attribute names stay str (setattr requires it)
        return ns
    return obj


class _Py2StrPickler(pickle._Pickler):
    """Pickles every str the way Python 2 pickled its byte strings (SHORT_BINSTRING / BINSTRING), so
    the file needs torch.load(..., encoding='latin1') exactly like a checkpoint written by Python 2."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str


class _Py2PickleModule(object):
    """The pickle_module torch.save needs: Pickler plus dump."""
    Pickler = _Py2StrPickler

    @staticmethod
    def dump(obj, f, protocol=2):
        _Py2StrPickler(f, protocol=protocol).dump(obj)


def save_checkpoint(path, opt, img_sd, txt_sd, epoch=29, best_rsum=450.125, eiters=87000,
                    opt_as_dict=False, bytes_strings=False, legacy=True, py2_strings=True):
    """torch.save in SCAN's layout. legacy=True: non-zip serialization, pickle protocol 2.
    py2_strings (default): strings pickled as Python 2 byte strings, as SCAN's Python 2 code wrote them
    (torch.load then needs encoding='latin1' for any non-ASCII text).
    bytes_strings: keys and string values stored as bytes (what a Python 2 file looks like when read
    with encoding='bytes')."""
    state = {
        "epoch": epoch,
        "model": [img_sd, txt_sd],
        "best_rsum": best_rsum,
        "opt": dict(vars(opt)) if opt_as_dict else opt,
        "Eiters": eiters,
    }
    if bytes_strings:
        state = to_bytes_keys(state)
    if py2_strings and legacy:
        torch.save(state, path, pickle_module=_Py2PickleModule, _use_new_zipfile_serialization=False,
                   pickle_protocol=2)
    elif legacy:
        torch.save(state, path, _use_new_zipfile_serialization=False, pickle_protocol=2)
    else:
        torch.save(state, path)
    return state


def make_checkpoint(path, vocab_size, seed=0, small=True, g_mode="scalar", scale=1.0,
                    save_kwargs=None, **opt_overrides):
    """Builds opt + random state dicts and saves them at `path`. Returns (opt, img_sd, txt_sd)."""
    opt = make_opt(vocab_size, small=small, **opt_overrides)
    img_sd, txt_sd = make_state_dicts(opt, seed=seed, g_mode=g_mode, scale=scale)
    save_checkpoint(path, opt, img_sd, txt_sd, **(save_kwargs or {}))
    return opt, img_sd, txt_sd


def random_region_features(rng, n_regions, img_dim):
    """Region features like pool5 outputs: non-negative, sparse-ish, O(1) norm. float32 (k, img_dim)."""
    x = np.abs(rng.standard_normal((n_regions, img_dim))) * (rng.random((n_regions, img_dim)) < 0.6)
    x *= 3.0 / math.sqrt(img_dim)
    return x.astype(np.float32)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Write a random-weight SCAN checkpoint (+ vocab).")
    ap.add_argument("out", help="checkpoint path, e.g. /tmp/model_best.pth.tar")
    ap.add_argument("--vocab-out", help="also write a synthetic vocab JSON here")
    ap.add_argument("--vocab-size", type=int, help="embedding rows (default: synthetic vocab size)")
    ap.add_argument("--real-size", action="store_true", help="embed 1024, word_dim 300, img_dim 2048")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override an opt field (JSON value or bare string)")
    a = ap.parse_args()
    size = a.vocab_size or make_vocab_dict(BASE_WORDS)["idx"]
    if a.vocab_out:
        write_vocab(a.vocab_out)
    over = {}
    for item in a.set:
        k, _, v = item.partition("=")
        try:
            over[k] = json.loads(v)
        except ValueError:
            over[k] = v
    opt, _, _ = make_checkpoint(a.out, size, seed=a.seed, small=not a.real_size, **over)
    print("wrote %s (vocab_size %d, embed %d)" % (a.out, size, opt.embed_size))
