"""Independent SCAN reference (the test oracle), written from ../shared/spec/scan-model.md.

It loads an original SCAN checkpoint directly (not the converted model directory, so that the
converter is under test too) and computes, in float64 by default:
  * region embeddings  v_i = l2norm(W f_i + b)           (no l2norm when no_imgnorm; weight_norm folded)
  * word embeddings    e_t = l2norm(GRU(Embedding(ids)))  (torch.nn.GRU with the checkpoint's weights,
                       any num_layers, bi_gru = mean of the two directions, true lengths only)
  * one (image, caption) score by stacked cross attention, t2i or i2t, every raw_feature_norm the
    reference code runs (clipped_l2norm, l2norm, clipped, no_norm, softmax), pooling
    LogSumExp / Mean / Max / Sum; any region count k >= 1 and any caption length n >= 1
  * similarity matrices, ensembles (mean of the models' matrices)
  * tokenisation (NLTK Treebank on the lower-cased caption, <start> ... <end>, <unk>)
  * the evaluation protocol (R@1/5/10, medr, meanr, rsum; 5-fold means)

Every score is computed for one pair on its own: nothing is batched across images or captions except
the text encoder's packed batch, whose padding cannot reach real tokens.
Run under Debian's /usr/bin/python3 (python3-torch, python3-numpy, python3-nltk).
"""

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

EPS = 1e-8
PAD, START, END, UNK = 0, 1, 2, 3

# train.py's defaults, used when a checkpoint's opt lacks a field.
OPT_DEFAULTS = dict(cross_attn="t2i", agg_func="LogSumExp", lambda_softmax=9.0, lambda_lse=6.0,
                    raw_feature_norm="clipped_l2norm", bi_gru=False, num_layers=1, no_imgnorm=False,
                    no_txtnorm=False, precomp_enc_type="basic", embed_size=1024, word_dim=300,
                    img_dim=2048)


def _s(x):
    return x.decode("latin-1") if isinstance(x, bytes) else x


def load_checkpoint(path):
    """(opt dict, img_enc state dict, txt_enc state dict, raw checkpoint dict), keys normalised."""
    ckpt = torch.load(path, map_location="cpu", encoding="latin1")
    ckpt = {_s(k): v for k, v in ckpt.items()}
    opt = ckpt["opt"]
    opt = dict(opt) if isinstance(opt, dict) else dict(vars(opt))
    opt = {_s(k): _s(v) for k, v in opt.items()}
    img_sd, txt_sd = ckpt["model"]
    img_sd = {_s(k): v for k, v in img_sd.items()}
    txt_sd = {_s(k): v for k, v in txt_sd.items()}
    return opt, img_sd, txt_sd, ckpt


# ------------------------------------------------------------------------------------------------
# Math of the spec

def l2norm(x, dim=-1):
    """x / (sqrt(sum x^2) + 1e-8): eps ADDED to the norm."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + EPS)


def cosine_rows(x, y):
    """Row-wise <x,y> / max(|x||y|, 1e-8): eps CLAMPED."""
    num = (x * y).sum(dim=-1)
    den = (x.norm(dim=-1) * y.norm(dim=-1)).clamp(min=EPS)
    return num / den


def attend(query, context, lambda1, raw_feature_norm):
    """Stacked cross attention of query rows (q, d) over context rows (c, d). Returns (attended (q, d),
    weights (q, c))."""
    a = context @ query.t()  # (c, q): raw products
    if raw_feature_norm == "clipped_l2norm":
        a = l2norm(F.leaky_relu(a, 0.1), dim=1)  # along the QUERY axis, per context item
    elif raw_feature_norm == "l2norm":
        a = l2norm(a, dim=1)
    elif raw_feature_norm == "clipped":
        a = F.leaky_relu(a, 0.1)
    elif raw_feature_norm == "no_norm":
        pass
    elif raw_feature_norm == "softmax":
        a = torch.softmax(a, dim=1)  # along the query axis
    else:
        raise ValueError("raw_feature_norm %r is not supported" % (raw_feature_norm,))
    w = torch.softmax(lambda1 * a.t(), dim=1)  # (q, c): over the CONTEXT axis
    return w @ context, w


def pool(r, agg_func, lambda_lse):
    if agg_func == "LogSumExp":
        return torch.logsumexp(lambda_lse * r, dim=0) / lambda_lse
    if agg_func == "Mean":
        return r.mean()
    if agg_func == "Max":
        return r.max()
    if agg_func == "Sum":
        return r.sum()
    raise ValueError("agg_func %r is not supported" % (agg_func,))


def pair_relevance(regions, words, cfg):
    """The per-query cosines R (one per word for t2i, per region for i2t) of one pair."""
    if regions.dim() != 2 or words.dim() != 2 or regions.shape[0] < 1 or words.shape[0] < 1:
        raise ValueError("need regions (k>=1, d) and words (n>=1, d)")
    if cfg["cross_attn"] == "t2i":
        attended, _ = attend(words, regions, cfg["lambda_softmax"], cfg["raw_feature_norm"])
        return cosine_rows(words, attended)
    if cfg["cross_attn"] == "i2t":
        attended, _ = attend(regions, words, cfg["lambda_softmax"], cfg["raw_feature_norm"])
        return cosine_rows(regions, attended)
    raise ValueError("cross_attn %r is not supported" % (cfg["cross_attn"],))


def pair_score(regions, words, cfg):
    """S(image, caption) for one image's region embeddings (k, d) and one caption's words (n, d)."""
    return float(pool(pair_relevance(regions, words, cfg), cfg["agg_func"], cfg["lambda_lse"]))


# ------------------------------------------------------------------------------------------------
# Vocabulary and tokens

_TOKENIZER = None


def tokenize(caption):
    """NLTK Treebank word tokens of the lower-cased caption."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from nltk.tokenize import NLTKWordTokenizer
        _TOKENIZER = NLTKWordTokenizer()
    return _TOKENIZER.tokenize(caption.lower())


class Vocab(object):
    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        self.word2idx = d["word2idx"]
        self.size = len(self.word2idx)
        assert self.word2idx["<pad>"] == PAD and self.word2idx["<start>"] == START
        assert self.word2idx["<end>"] == END and self.word2idx["<unk>"] == UNK

    def ids(self, caption):
        return [START] + [self.word2idx.get(t, UNK) for t in tokenize(caption)] + [END]


# ------------------------------------------------------------------------------------------------
# The model

class ScanReference(object):
    def __init__(self, checkpoint, vocab_path, dtype=torch.float64):
        self.dtype = dtype
        opt, img_sd, txt_sd, raw = load_checkpoint(checkpoint)
        cfg = dict(OPT_DEFAULTS)
        cfg.update({k: opt[k] for k in OPT_DEFAULTS if k in opt and opt[k] is not None})
        cfg["lambda_softmax"] = float(cfg["lambda_softmax"])
        cfg["lambda_lse"] = float(cfg["lambda_lse"])
        self.cfg = cfg
        self.opt = opt
        self.vocab = Vocab(vocab_path)
        E = int(cfg["embed_size"])

        # Image encoder. weight_norm (dim=None): w = g v / ||v||_F; per-row g (E, 1): w_i = g_i v_i/||v_i||.
        if "fc.weight_v" in img_sd:
            v = img_sd["fc.weight_v"].to(torch.float64)
            g = img_sd["fc.weight_g"].to(torch.float64)
            if g.numel() == 1 and g.dim() <= 1:
                w = g.reshape(()) * v / torch.sqrt((v * v).sum())
            else:
                w = g.reshape(-1, 1) * v / torch.sqrt((v * v).sum(dim=1, keepdim=True))
        else:
            w = img_sd["fc.weight"].to(torch.float64)
        self.fc_weight = w.to(dtype)
        self.fc_bias = img_sd["fc.bias"].to(dtype)

        # Text encoder: torch.nn.GRU with the checkpoint's weights.
        self.embed = txt_sd["embed.weight"].to(dtype)
        assert self.embed.shape[0] == self.vocab.size, "embedding rows != vocab size"
        self.bi_gru = bool(cfg["bi_gru"])
        self.num_layers = int(cfg["num_layers"])
        self.gru = torch.nn.GRU(int(cfg["word_dim"]), E, self.num_layers, batch_first=True,
                                bidirectional=self.bi_gru).to(dtype)
        self.gru.load_state_dict({k[len("rnn."):]: t.to(dtype) for k, t in txt_sd.items()
                                  if k.startswith("rnn.")}, strict=True)
        self.gru.eval()
        self._ids_cache = {}    # caption -> ids (NLTK is slow)
        self._words_cache = {}  # ids tuple -> (n, embed) word embeddings

    # -- encoders --------------------------------------------------------------------------------
    def caption_ids(self, caption):
        ids = self._ids_cache.get(caption)
        if ids is None:
            ids = self._ids_cache[caption] = tuple(self.vocab.ids(caption))
        return list(ids)

    def encode_regions(self, features):
        """(k, img_dim) features -> (k, embed) embeddings."""
        f = torch.as_tensor(np.asarray(features)).to(self.dtype)
        x = f @ self.fc_weight.t() + self.fc_bias
        return x if self.cfg["no_imgnorm"] else l2norm(x)

    def _finish_words(self, h):
        if self.bi_gru:
            half = h.shape[-1] // 2
            h = (h[..., :half] + h[..., half:]) / 2
        return h if self.cfg["no_txtnorm"] else l2norm(h)

    def encode_caption(self, ids):
        """One caption's ids (n >= 1) -> (n, embed), run alone (no padding at all)."""
        ids = torch.as_tensor(list(ids), dtype=torch.long)
        with torch.no_grad():
            out, _ = self.gru(self.embed[ids].unsqueeze(0))
        return self._finish_words(out[0])

    def encode_captions(self, id_lists):
        """Many captions in one padded batch, packed over the true lengths (padding cannot leak in).
        Returns a list of (n_i, embed) tensors in input order. Results are cached per id sequence."""
        keys = [tuple(int(t) for t in x) for x in id_lists]
        todo = sorted(set(k for k in keys if k not in self._words_cache), key=lambda k: (len(k), k))
        for at in range(0, len(todo), 64):  # similar lengths together; CPU GRUs are slow on huge batches
            chunk = todo[at:at + 64]
            for k, w in zip(chunk, self._encode_batch(chunk)):
                self._words_cache[k] = w
        return [self._words_cache[k] for k in keys]

    def _encode_batch(self, id_lists):
        lengths = [len(x) for x in id_lists]
        T = max(lengths)
        ids = torch.zeros(len(id_lists), T, dtype=torch.long)
        for i, x in enumerate(id_lists):
            ids[i, :len(x)] = torch.as_tensor(list(x), dtype=torch.long)
        packed = pack_padded_sequence(self.embed[ids], torch.as_tensor(lengths), batch_first=True,
                                      enforce_sorted=False)
        with torch.no_grad():
            out, _ = self.gru(packed)
        padded, _ = pad_packed_sequence(out, batch_first=True)
        words = self._finish_words(padded)
        return [words[i, :n] for i, n in enumerate(lengths)]

    # -- scores ----------------------------------------------------------------------------------
    def score(self, region_emb, word_emb):
        return pair_score(region_emb, word_emb, self.cfg)

    def embed_all(self, images, captions):
        """images: list of (k_i, img_dim) arrays; captions: list of str or of id lists."""
        region_embs = [self.encode_regions(f) for f in images]
        ids = [c if not isinstance(c, str) else self.caption_ids(c) for c in captions]
        word_embs = self.encode_captions(ids)
        return region_embs, word_embs, ids

    def similarity_matrix(self, images, captions):
        """(n_images, n_captions) float64 numpy matrix of pair scores."""
        region_embs, word_embs, _ = self.embed_all(images, captions)
        return similarity_from_embeddings(region_embs, word_embs, self.cfg)


def similarity_from_embeddings(region_embs, word_embs, cfg):
    s = np.zeros((len(region_embs), len(word_embs)))
    for i, v in enumerate(region_embs):
        for j, e in enumerate(word_embs):
            s[i, j] = pair_score(v, e, cfg)
    return s


def _norm_query_axis(a, dim, raw_feature_norm):
    if raw_feature_norm == "clipped_l2norm":
        return l2norm(F.leaky_relu(a, 0.1), dim=dim)
    if raw_feature_norm == "l2norm":
        return l2norm(a, dim=dim)
    if raw_feature_norm == "clipped":
        return F.leaky_relu(a, 0.1)
    if raw_feature_norm == "no_norm":
        return a
    if raw_feature_norm == "softmax":
        return torch.softmax(a, dim=dim)
    raise ValueError("raw_feature_norm %r is not supported" % (raw_feature_norm,))


def gram_similarity(regions, word_embs, cfg, image_chunk=64):
    """Fast form for many pairs (used for the 5-fold evaluation): every image has the same region
    count K. regions: (B, K, d) tensor; word_embs: list of (n_i, d) tensors. Captions are grouped by
    length (no padding); the attended vector is never built: <q, a> = sum_c w_c S[c, q] and
    |a|^2 = w^T G w with G the context's Gram matrix (the spec's "cheaper exact form").
    Checked against pair_score by test_engine_parity's self-check. Returns (B, n_captions) numpy."""
    B, K, d = regions.shape
    out = np.zeros((B, len(word_embs)))
    lam1, lam2 = cfg["lambda_softmax"], cfg["lambda_lse"]
    norm = cfg["raw_feature_norm"]
    t2i = cfg["cross_attn"] == "t2i"
    if not t2i and cfg["cross_attn"] != "i2t":
        raise ValueError("cross_attn %r is not supported" % (cfg["cross_attn"],))
    groups = {}
    for j, e in enumerate(word_embs):
        groups.setdefault(int(e.shape[0]), []).append(j)
    gram_v = regions @ regions.transpose(1, 2)  # (B, K, K)
    vnorm = regions.norm(dim=-1)  # (B, K)
    for n, idx in sorted(groups.items()):
        E = torch.stack([word_embs[j] for j in idx])  # (G, n, d)
        G = E.shape[0]
        gram_e = E @ E.transpose(1, 2)  # (G, n, n)
        enorm = E.norm(dim=-1)  # (G, n)
        for b0 in range(0, B, image_chunk):
            V = regions[b0:b0 + image_chunk]
            b = V.shape[0]
            # Layout (b, K, G, n): region-word products of every pair in the chunk.
            S = (V.reshape(b * K, d) @ E.reshape(G * n, d).t()).reshape(b, K, G, n)
            if t2i:  # context = regions (K), query = words (n)
                W = torch.softmax(lam1 * _norm_query_axis(S, 3, norm), dim=1)
                num = (W * S).sum(dim=1)  # (b, G, n)
                GW = torch.bmm(gram_v[b0:b0 + b], W.reshape(b, K, G * n)).reshape(b, K, G, n)
                a2 = (W * GW).sum(dim=1)
                den = enorm.unsqueeze(0) * a2.clamp(min=0).sqrt()  # (b, G, n)
                pool_dim = 2
            else:  # context = words (n), query = regions (K)
                W = torch.softmax(lam1 * _norm_query_axis(S, 1, norm), dim=3)
                num = (W * S).sum(dim=3)  # (b, K, G)
                Wg = W.permute(2, 0, 1, 3).reshape(G, b * K, n)
                WG = torch.bmm(Wg, gram_e)  # (G, b*K, n)
                a2 = (Wg * WG).sum(dim=2).reshape(G, b, K).permute(1, 2, 0)  # (b, K, G)
                den = vnorm[b0:b0 + b].unsqueeze(2) * a2.clamp(min=0).sqrt()
                pool_dim = 1
            R = num / den.clamp(min=EPS)
            if cfg["agg_func"] == "LogSumExp":
                s = torch.logsumexp(lam2 * R, dim=pool_dim) / lam2
            elif cfg["agg_func"] == "Mean":
                s = R.mean(dim=pool_dim)
            elif cfg["agg_func"] == "Max":
                s = R.max(dim=pool_dim).values
            elif cfg["agg_func"] == "Sum":
                s = R.sum(dim=pool_dim)
            else:
                raise ValueError("agg_func %r is not supported" % (cfg["agg_func"],))
            out[b0:b0 + b, idx] = s.numpy()
    return out


def ensemble_similarity(models, images, captions):
    """The paper's ensemble: mean of the models' similarity matrices."""
    return sum(m.similarity_matrix(images, captions) for m in models) / len(models)


def split_regions(regions, counts):
    """(total, img_dim) stacked regions + per-image counts -> list of (k_i, img_dim) arrays."""
    out, at = [], 0
    for k in counts:
        out.append(regions[at:at + int(k)])
        at += int(k)
    assert at == regions.shape[0], "region counts do not add up to the stacked rows"
    return out


# ------------------------------------------------------------------------------------------------
# Evaluation protocol (captions 5i..5i+4 belong to image i)

def i2t_ranks(sims):
    """For each image: the best (lowest) 0-based rank among its 5 captions, rank = number of captions
    scored strictly higher."""
    n = sims.shape[0]
    assert sims.shape[1] == 5 * n, "need 5 captions per image"
    ranks = np.zeros(n)
    for i in range(n):
        row = sims[i]
        ranks[i] = min(np.sum(row > row[j]) for j in range(5 * i, 5 * i + 5))
    return ranks


def t2i_ranks(sims):
    """For each caption: the 0-based rank of its image (number of images scored strictly higher)."""
    n = sims.shape[0]
    ranks = np.zeros(5 * n)
    for c in range(5 * n):
        col = sims[:, c]
        ranks[c] = np.sum(col > col[c // 5])
    return ranks


def rank_metrics(ranks):
    return {
        "r1": 100.0 * np.mean(ranks < 1),
        "r5": 100.0 * np.mean(ranks < 5),
        "r10": 100.0 * np.mean(ranks < 10),
        "medr": float(np.floor(np.median(ranks)) + 1),
        "meanr": float(ranks.mean() + 1),
    }


def evaluate(sims):
    """Metrics of one (N, 5N) similarity matrix, in scan_eval's JSON shape."""
    i2t = rank_metrics(i2t_ranks(sims))
    t2i = rank_metrics(t2i_ranks(sims))
    rsum = i2t["r1"] + i2t["r5"] + i2t["r10"] + t2i["r1"] + t2i["r5"] + t2i["r10"]
    return {"n_images": int(sims.shape[0]), "n_captions": int(sims.shape[1]), "i2t": i2t, "t2i": t2i,
            "rsum": rsum}


def evaluate_folds(fold_sims):
    """COCO 1K protocol: metrics per fold (each (1000, 5000) in the real protocol), top-level values
    = the mean over folds, rsum = the mean of the folds' rsums (the true mean, not the original
    script's mislabeled print)."""
    folds = [evaluate(s) for s in fold_sims]
    mean = lambda xs: float(np.mean(xs))
    out = {
        "n_images": sum(f["n_images"] for f in folds),
        "n_captions": sum(f["n_captions"] for f in folds),
        "i2t": {k: mean([f["i2t"][k] for f in folds]) for k in folds[0]["i2t"]},
        "t2i": {k: mean([f["t2i"][k] for f in folds]) for k in folds[0]["t2i"]},
        "rsum": mean([f["rsum"] for f in folds]),
        "folds": [{"i2t": f["i2t"], "t2i": f["t2i"], "rsum": f["rsum"]} for f in folds],
    }
    return out


def fold_blocks(sims, fold_images=1000):
    """The diagonal (fold_images, 5*fold_images) blocks of a full (N, 5N) matrix."""
    n = sims.shape[0] // fold_images
    return [sims[k * fold_images:(k + 1) * fold_images, 5 * k * fold_images:5 * (k + 1) * fold_images]
            for k in range(n)]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Score captions against images with the SCAN reference.")
    ap.add_argument("--checkpoint", required=True, action="append")
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--regions", required=True, help="(total_regions, img_dim) float32 .npy")
    ap.add_argument("--region-counts", required=True, help="(n_images,) int64 .npy")
    ap.add_argument("--captions", required=True, help="one caption per line")
    ap.add_argument("--out", required=True, help="(n_images, n_captions) .npy")
    a = ap.parse_args()
    images = split_regions(np.load(a.regions), np.load(a.region_counts))
    with open(a.captions, encoding="utf-8") as f:
        caps = [line.rstrip("\n") for line in f]
    models = [ScanReference(c, a.vocab) for c in a.checkpoint]
    np.save(a.out, ensemble_similarity(models, images, caps))
