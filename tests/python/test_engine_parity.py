"""Parity of the C++ engine (scan_score, scan_eval) with the independent SCAN reference.

    SCANSERVE_BUILD_DIR=build SCANSERVE_SOURCE_DIR=/work/main /usr/bin/python3 tests/python/test_engine_parity.py

Random-weight checkpoints in SCAN's exact layout (scan_checkpoints.py) are converted with
tools/convert_scan_checkpoint.py; the reference (scan_reference.py, float64) loads the checkpoints
themselves, so the converter is under test as well.

Tolerances (all stated once here):
  * fp32 scores and embeddings: rel_err(a, b) = max|a - b| / max(max|b|, 1e-3) <= 1e-5, over the whole
    matrix, b = reference (float64);
  * bf16 storage: rel_err <= 2e-2, and top-10 agreement: for every image (its captions) and every
    caption (its images), the reference's top-1 is in the engine's top-10, the top-10 sets share at
    least 7 items, and on average at least 9;
  * token ids and caption lengths: exact;
  * evaluation metrics: scan_eval's JSON equals the protocol applied to its own --save-sims matrix
    (1e-6), and lies within the bounds the reference's matrix allows when every score may move by the
    fp32 tolerance (exactly equal when no near-ties exist).

The ReferenceSelfCheck tests need no engine: they check the oracle against a SCAN-style packed
torch.nn.GRU pipeline, a hand-written GRU, and a batched (bmm) form of the attention. Every other
test FAILS (does not skip) while $SCANSERVE_BUILD_DIR/engine/scan_score or scan_eval is missing.

Runs: every model is scored with backend cpu / stored images; stored captions and backend reference
rotate over the attention grid (see FULL_RUNS; SCANSERVE_PARITY_FULL=1 runs all three everywhere).
The COCO-size 5-fold case (5 x 1,000 images) is skipped, saying so, when scan_eval would need more than
FOLD5_LIMIT_S; the fold protocol itself is always checked with --fold-images 50.
Environment: SCANSERVE_TOOL_TIMEOUT_S (per tool run, default 120), SCANSERVE_KEEP_TMP=1 keeps the
generated checkpoints, model directories and inputs, SCANSERVE_PARITY_VERBOSE=1 prints every rel_err.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import scan_checkpoints as sc  # noqa: E402
import scan_reference as sr  # noqa: E402
from tool_modules import load_tool  # noqa: E402

SOURCE_DIR = os.environ.get("SCANSERVE_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
BUILD_DIR = os.environ.get("SCANSERVE_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")
TOOL_DIR = os.path.join(BUILD_DIR, "engine")
SHARED_TEXT = os.path.join(SOURCE_DIR, "..", "shared", "data", "scan-text")

FP32_TOL = 1e-5
BF16_TOL = 2e-2
TOOL_TIMEOUT_S = int(os.environ.get("SCANSERVE_TOOL_TIMEOUT_S", "120"))  # per tool run
FOLD5_LIMIT_S = 60
# Each scan_score run costs ~1 s of LibTorch start-up, so by default every model runs with backend cpu /
# stored images, and the other runs (stored captions; backend reference) cover the grid by rotation:
# every cross_attn x raw_feature_norm and every cross_attn x pooling gets each of them once.
# SCANSERVE_PARITY_FULL=1 runs all three for every model (about 3x the tool time).
FULL_RUNS = bool(os.environ.get("SCANSERVE_PARITY_FULL"))  # the 5-fold case is skipped (saying so) when scan_eval needs longer

# One intra-op thread: on a shared 2-core machine torch's OpenMP threads mostly wait on each other.
torch.set_num_threads(1)

SIMPLE_WORDS = sorted(w for w in sc.BASE_WORDS if w.isalpha())
UNKNOWN_WORDS = ["zyzzyva", "quokkas", "xylographs", "blorft", "snarfling", "wombatish", "kerfuffle"]
TRICKY_CAPTIONS = [
    'A man\'s dog doesn\'t "run" (fast) at 3.5 mph, in the street.',
    "Two girls -- one in red -- can't see the ball!",
    "It's 10 o'clock & the $ sign... really?",
    "Children's t-shirts: blue; green; yellow",
    "Mr. Smith wearing a T-Shirt isn't walking",
    "`` Quoted '' words and 'single' quotes ?",
    "A DOG WITH A FRISBEE",
]


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-3))


def make_caption(rng, n_tokens):
    """n_tokens single-token words: vocabulary words, ~15% unknown words, some capitalised."""
    words = []
    for _ in range(n_tokens):
        w = str(rng.choice(UNKNOWN_WORDS) if rng.random() < 0.15 else rng.choice(SIMPLE_WORDS))
        u = rng.random()
        words.append(w.capitalize() if u < 0.15 else w.upper() if u < 0.2 else w)
    cap = " ".join(words)
    assert len(sr.tokenize(cap)) == n_tokens, cap
    return cap


def make_images(rng, counts, img_dim):
    return [sc.random_region_features(rng, int(k), img_dim) for k in counts]


# ----------------------------------------------------------------------------------------------
# Independent second forms of the oracle (self-check)

class ScanStyleEncoderText(torch.nn.Module):
    """SCAN's EncoderText pipeline: Embedding -> pack_padded_sequence (batch sorted by length, as SCAN's
    collate_fn sorts it) -> GRU -> pad_packed_sequence -> mean of the directions -> l2norm."""

    def __init__(self, txt_sd, opt):
        super().__init__()
        self.embed = torch.nn.Embedding(opt["vocab_size"], opt["word_dim"])
        self.rnn = torch.nn.GRU(opt["word_dim"], opt["embed_size"], opt["num_layers"], batch_first=True,
                                bidirectional=opt["bi_gru"])
        self.load_state_dict({k: v for k, v in txt_sd.items()}, strict=True)
        self.bi = opt["bi_gru"]
        self.no_txtnorm = opt["no_txtnorm"]

    def forward(self, x, lengths):
        packed = pack_padded_sequence(self.embed(x), lengths, batch_first=True)
        out, _ = self.rnn(packed)
        emb, lens = pad_packed_sequence(out, batch_first=True)
        if self.bi:
            h = emb.size(2) // 2
            emb = (emb[:, :, :h] + emb[:, :, h:]) / 2
        if not self.no_txtnorm:
            emb = emb / (emb.pow(2).sum(dim=-1, keepdim=True).sqrt() + 1e-8)
        return emb, lens


def manual_gru(x, params, num_layers, bi, H):
    """The GRU equations by hand (gate order r, z, n), float64 numpy. x: (T, D)."""
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))
    inp = x
    for layer in range(num_layers):
        outs = []
        for suffix, reverse in [("", False)] + ([("_reverse", True)] if bi else []):
            Wih = params["rnn.weight_ih_l%d%s" % (layer, suffix)]
            Whh = params["rnn.weight_hh_l%d%s" % (layer, suffix)]
            bih = params["rnn.bias_ih_l%d%s" % (layer, suffix)]
            bhh = params["rnn.bias_hh_l%d%s" % (layer, suffix)]
            h = np.zeros(H)
            out = np.zeros((inp.shape[0], H))
            steps = range(inp.shape[0] - 1, -1, -1) if reverse else range(inp.shape[0])
            for t in steps:
                gi = Wih @ inp[t] + bih
                gh = Whh @ h + bhh
                r = sig(gi[:H] + gh[:H])
                z = sig(gi[H:2 * H] + gh[H:2 * H])
                n = np.tanh(gi[2 * H:] + r * gh[2 * H:])
                h = (1 - z) * n + z * h
                out[t] = h
            outs.append(out)
        inp = np.concatenate(outs, axis=1)
    return inp


def bmm_scores(images, captions, cfg):
    """xattn_score_t2i / xattn_score_i2t in batched form: every image (B, K, d) at once against each
    caption repeated B times, with bmm; no squeeze, so B = 1 and 1-word captions work."""
    B = images.shape[0]
    sims = torch.zeros(B, len(captions), dtype=images.dtype)
    for j, cap in enumerate(captions):
        rep = cap.unsqueeze(0).repeat(B, 1, 1)
        query, context = (rep, images) if cfg["cross_attn"] == "t2i" else (images, rep)
        attn = torch.bmm(context, query.transpose(1, 2))  # (B, c, q)
        norm = cfg["raw_feature_norm"]
        if norm in ("clipped_l2norm", "clipped"):
            attn = torch.where(attn > 0, attn, 0.1 * attn)
        if norm in ("clipped_l2norm", "l2norm"):
            attn = attn / (attn.pow(2).sum(dim=2, keepdim=True).sqrt() + 1e-8)
        if norm == "softmax":
            attn = torch.exp(attn - attn.max(dim=2, keepdim=True).values)
            attn = attn / attn.sum(dim=2, keepdim=True)
        logits = cfg["lambda_softmax"] * attn.transpose(1, 2)  # (B, q, c)
        w = torch.exp(logits - logits.max(dim=2, keepdim=True).values)
        w = w / w.sum(dim=2, keepdim=True)
        weighted = torch.bmm(w, context)  # (B, q, d)
        num = (query * weighted).sum(dim=2)
        den = (query.pow(2).sum(dim=2).sqrt() * weighted.pow(2).sum(dim=2).sqrt()).clamp(min=1e-8)
        row = num / den  # (B, q)
        agg = cfg["agg_func"]
        if agg == "LogSumExp":
            row = torch.log(torch.exp(row * cfg["lambda_lse"]).sum(dim=1)) / cfg["lambda_lse"]
        elif agg == "Mean":
            row = row.mean(dim=1)
        elif agg == "Max":
            row = row.max(dim=1).values
        else:
            row = row.sum(dim=1)
        sims[:, j] = row
    return sims.numpy()


def argsort_ranks(sims):
    """The protocol by sorting (as the original evaluation does), for the self-check."""
    n = sims.shape[0]
    i2t = np.zeros(n)
    for i in range(n):
        order = list(np.argsort(-sims[i], kind="stable"))
        i2t[i] = min(order.index(c) for c in range(5 * i, 5 * i + 5))
    t2i = np.zeros(5 * n)
    for c in range(5 * n):
        order = list(np.argsort(-sims[:, c], kind="stable"))
        t2i[c] = order.index(c // 5)
    return i2t, t2i


ALL_NORMS = ("clipped_l2norm", "l2norm", "clipped", "no_norm", "softmax")
ALL_POOLS = ("LogSumExp", "Mean", "Max", "Sum")


class ReferenceSelfCheck(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="scan_ref_selfcheck_")
        cls.vocab_path = os.path.join(cls.tmp, "vocab.json")
        cls.V = sc.write_vocab(cls.vocab_path)["idx"]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def ref(self, name, seed=0, **over):
        p = os.path.join(self.tmp, name + ".pth.tar")
        sc.make_checkpoint(p, self.V, seed=seed, **over)
        return sr.ScanReference(p, self.vocab_path)

    def test_text_encoder_matches_scan_pipeline_and_gru_equations(self):
        rng = np.random.default_rng(1)
        lengths = [1, 2, 3, 5, 9, 17, 42, 3]
        for over in (dict(), dict(bi_gru=False), dict(num_layers=2), dict(bi_gru=False, num_layers=2),
                     dict(no_txtnorm=True, num_layers=3)):
            with self.subTest(**over):
                ref = self.ref("enc", seed=2, **over)
                ids = [list(rng.integers(0, self.V, size=n)) for n in lengths]
                per_caption = [ref.encode_caption(x) for x in ids]
                packed = ref.encode_captions(ids)
                opt = dict(ref.cfg, vocab_size=self.V)
                _, _, txt_sd, _ = sr.load_checkpoint(os.path.join(self.tmp, "enc.pth.tar"))
                scan = ScanStyleEncoderText(txt_sd, opt).double().eval()
                order = sorted(range(len(ids)), key=lambda i: -lengths[i])
                batch = torch.zeros(len(ids), max(lengths), dtype=torch.long)
                for row, i in enumerate(order):
                    batch[row, :lengths[i]] = torch.tensor(ids[i])
                with torch.no_grad():
                    emb, lens = scan(batch, [lengths[i] for i in order])
                params = {k: v.double().numpy() for k, v in txt_sd.items()}
                for row, i in enumerate(order):
                    n = lengths[i]
                    self.assertEqual(per_caption[i].shape, (n, ref.cfg["embed_size"]))
                    np.testing.assert_allclose(packed[i].numpy(), per_caption[i].numpy(), atol=1e-12)
                    np.testing.assert_allclose(emb[row, :n].numpy(), per_caption[i].numpy(), atol=1e-12)
                    x = params["embed.weight"][ids[i]]
                    h = manual_gru(x, params, opt["num_layers"], opt["bi_gru"], opt["embed_size"])
                    if opt["bi_gru"]:
                        h = (h[:, :opt["embed_size"]] + h[:, opt["embed_size"]:]) / 2
                    if not opt["no_txtnorm"]:
                        h = h / (np.sqrt((h * h).sum(axis=1, keepdims=True)) + 1e-8)
                    np.testing.assert_allclose(per_caption[i].numpy(), h, atol=1e-12)

    def test_image_encoder_and_weight_norm(self):
        rng = np.random.default_rng(2)
        x = sc.random_region_features(rng, 5, sc.SMALL_DIMS["img_dim"])
        for over, g_mode in ((dict(), "scalar"), (dict(precomp_enc_type="weight_norm"), "scalar"),
                             (dict(precomp_enc_type="weight_norm"), "shape1"),
                             (dict(precomp_enc_type="weight_norm"), "row"),
                             (dict(no_imgnorm=True), "scalar")):
            with self.subTest(g_mode=g_mode, **over):
                p = os.path.join(self.tmp, "img.pth.tar")
                opt, img, _ = sc.make_checkpoint(p, self.V, seed=3, g_mode=g_mode, **over)
                ref = sr.ScanReference(p, self.vocab_path)
                lin = torch.nn.Linear(opt.img_dim, opt.embed_size).double()
                if "fc.weight_g" in img:
                    lin = torch.nn.utils.weight_norm(lin, dim=0 if g_mode == "row" else None)
                    with torch.no_grad():
                        lin.weight_g.copy_(img["fc.weight_g"].double().reshape(lin.weight_g.shape))
                        lin.weight_v.copy_(img["fc.weight_v"].double())
                else:
                    with torch.no_grad():
                        lin.weight.copy_(img["fc.weight"].double())
                with torch.no_grad():
                    lin.bias.copy_(img["fc.bias"].double())
                    want = lin(torch.from_numpy(x).double())
                if not opt.no_imgnorm:
                    want = want / (want.norm(dim=1, keepdim=True) + 1e-8)
                np.testing.assert_allclose(ref.encode_regions(x).numpy(), want.numpy(), atol=1e-12)

    def test_attention_matches_batched_bmm_form(self):
        """Per-pair oracle == batched bmm form == the Gram form, for n_image > 1 and n_image == 1."""
        rng = np.random.default_rng(3)
        ref = self.ref("attn", seed=4)
        ids = [[5], [1, 2], [1, 7, 2], [1, 9, 10, 11, 12, 2], list(rng.integers(4, self.V, size=30))]
        words = ref.encode_captions(ids)
        for n_images in (1, 4):
            regions = torch.stack([ref.encode_regions(f) for f in make_images(rng, [7] * n_images, 96)])
            for norm in ALL_NORMS:
                for pool in ALL_POOLS:
                    for xattn, l1, l2 in (("t2i", 9.0, 6.0), ("i2t", 4.0, 5.0), ("i2t", 4.0, 20.0)):
                        cfg = dict(ref.cfg, raw_feature_norm=norm, agg_func=pool, cross_attn=xattn,
                                   lambda_softmax=l1, lambda_lse=l2)
                        with self.subTest(n_images=n_images, norm=norm, pool=pool, xattn=xattn, l2=l2):
                            pair = sr.similarity_from_embeddings(list(regions), words, cfg)
                            self.assertEqual(pair.shape, (n_images, len(ids)))
                            self.assertTrue(np.isfinite(pair).all())
                            np.testing.assert_allclose(bmm_scores(regions, words, cfg), pair,
                                                       rtol=1e-11, atol=1e-12)
                            np.testing.assert_allclose(sr.gram_similarity(regions, words, cfg, 3), pair,
                                                       rtol=1e-10, atol=1e-11)

    def test_timing_baseline_scores_as_the_oracle(self):
        """tools/reference_scan_baseline.py (the GPU table's same-run "vs ref" baseline) computes
        the released t2i scores: clipped_l2norm, λ1 = 9, LogSumExp λ2 = 6, in chunks of images."""
        baseline = load_tool("reference_scan_baseline")
        g = torch.Generator().manual_seed(5)
        images = baseline.l2norm(torch.rand(7, 36, 64, generator=g, dtype=torch.float64) * 2 - 1, 2)
        cfg = dict(cross_attn="t2i", raw_feature_norm="clipped_l2norm", agg_func="LogSumExp",
                   lambda_softmax=9.0, lambda_lse=6.0)
        for n_words in (1, 15):
            caption = baseline.l2norm(torch.rand(n_words, 64, generator=g, dtype=torch.float64) * 2 - 1, 1)
            want = [sr.pair_score(images[i], caption, cfg) for i in range(7)]
            for chunk in (3, 7):
                got = baseline.t2i(images, caption, chunk)
                self.assertEqual(tuple(got.shape), (7, 1))
                np.testing.assert_allclose(got[:, 0].numpy(), want, rtol=1e-12, atol=1e-12)

    def test_scores_are_per_pair(self):
        """A pair's score does not depend on which other images and captions are scored with it."""
        rng = np.random.default_rng(4)
        ref = self.ref("pairs", seed=5, cross_attn="i2t", lambda_softmax=4.0, lambda_lse=5.0)
        imgs = make_images(rng, [1, 3, 100], 96)
        caps = ["dog", "a man riding a bike", make_caption(rng, 40)]
        full = ref.similarity_matrix(imgs, caps)
        for i in range(3):
            for j in range(3):
                single = ref.similarity_matrix([imgs[i]], [caps[j]])
                self.assertEqual(single.shape, (1, 1))
                self.assertAlmostEqual(single[0, 0], full[i, j], places=12)

    def test_tokenizer(self):
        self.assertEqual(sr.tokenize('A man\'s dog doesn\'t "run" (fast), ok.'),
                         ["a", "man", "'s", "dog", "does", "n't", "``", "run", "''", "(", "fast", ")", ",",
                          "ok", "."])
        self.assertEqual(sr.tokenize("Two girls can't see -- the ball!"),
                         ["two", "girls", "ca", "n't", "see", "--", "the", "ball", "!"])
        v = sr.Vocab(self.vocab_path)
        w2i = sc.make_vocab_dict(sc.BASE_WORDS)["word2idx"]
        self.assertEqual(v.ids("A zyzzyva Dog ."), [1, w2i["a"], 3, w2i["dog"], w2i["."], 2])
        self.assertEqual(v.ids("dog"), [1, w2i["dog"], 2])

    def test_eval_protocol(self):
        # Hand example: 2 images, 10 captions.
        s = np.zeros((2, 10))
        s[0] = [0.1, 0.2, 0.3, 0.9, 0.05, 0.95, 0.0, 0.01, 0.02, 0.03]   # best own caption rank 1
        s[1] = [0.5, 0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.4, 0.45]       # own captions rank >= 5
        np.testing.assert_array_equal(sr.i2t_ranks(s), [1, 5])
        np.testing.assert_array_equal(sr.t2i_ranks(s), [1, 1, 1, 0, 1, 1, 0, 0, 0, 0])
        m = sr.evaluate(s)
        self.assertEqual(m["i2t"], {"r1": 0.0, "r5": 50.0, "r10": 100.0, "medr": 4.0, "meanr": 4.0})
        self.assertEqual(m["t2i"], {"r1": 50.0, "r5": 100.0, "r10": 100.0, "medr": 1.0, "meanr": 1.5})
        self.assertAlmostEqual(m["rsum"], 0 + 50 + 100 + 50 + 100 + 100)
        # Against sorting, on random matrices (no ties).
        rng = np.random.default_rng(5)
        for n in (1, 3, 12):
            s = rng.standard_normal((n, 5 * n))
            i2t, t2i = argsort_ranks(s)
            np.testing.assert_array_equal(sr.i2t_ranks(s), i2t)
            np.testing.assert_array_equal(sr.t2i_ranks(s), t2i)
        # medr = floor(median) + 1 with an even count.
        self.assertEqual(sr.rank_metrics(np.array([0, 1, 2, 3]))["medr"], 2.0)
        # Folds: top-level = mean over folds, rsum = mean of the folds' rsums.
        blocks = [rng.standard_normal((4, 20)) for _ in range(5)]
        full = np.full((20, 100), -9.0)
        for k, b in enumerate(blocks):
            full[4 * k:4 * k + 4, 20 * k:20 * k + 20] = b
        for a, b in zip(sr.fold_blocks(full, 4), blocks):
            np.testing.assert_array_equal(a, b)
        f = sr.evaluate_folds(blocks)
        self.assertAlmostEqual(f["rsum"], np.mean([sr.evaluate(b)["rsum"] for b in blocks]))
        self.assertAlmostEqual(f["t2i"]["medr"], np.mean([sr.evaluate(b)["t2i"]["medr"] for b in blocks]))
        self.assertEqual(len(f["folds"]), 5)


# ----------------------------------------------------------------------------------------------
# Engine parity

def metric_bounds(sims, tol):
    """Metric ranges the reference allows when each score may move by +-tol (lo = optimistic ranks)."""
    out = {}
    for side, fn in (("i2t", sr.i2t_ranks), ("t2i", sr.t2i_ranks)):
        lo = sr.rank_metrics(_ranks_with_slack(sims, side, tol))
        hi = sr.rank_metrics(_ranks_with_slack(sims, side, -tol))
        out[side] = {k: (min(lo[k], hi[k]), max(lo[k], hi[k])) for k in lo}
    return out


def _ranks_with_slack(sims, side, slack):
    """rank = #{others scored above the ground truth by more than slack}; slack < 0 counts near-ties."""
    n = sims.shape[0]
    if side == "i2t":
        r = np.zeros(n)
        for i in range(n):
            row = sims[i]
            r[i] = min(np.sum(row > row[j] + slack) - (1 if slack < 0 else 0) for j in range(5 * i, 5 * i + 5))
        return r
    r = np.zeros(5 * n)
    for c in range(5 * n):
        col = sims[:, c]
        r[c] = np.sum(col > col[c // 5] + slack) - (1 if slack < 0 else 0)
    return r


class EngineTestBase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="scan_parity_")
        cls.vocab_path = os.path.join(cls.tmp, "vocab.json")
        cls.V = sc.write_vocab(cls.vocab_path, sc.BASE_WORDS + SIMPLE_WORDS + [
            t for c in TRICKY_CAPTIONS for t in sr.tokenize(c)])["idx"]
        cls.converter = load_tool("convert_scan_checkpoint")
        cls.counter = 0

    @classmethod
    def tearDownClass(cls):
        if os.environ.get("SCANSERVE_KEEP_TMP"):
            print("kept %s" % cls.tmp)
        else:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def fresh_dir(self, prefix):
        type(self).counter += 1
        d = os.path.join(self.tmp, "%s_%03d" % (prefix, type(self).counter))
        os.makedirs(d)
        return d

    def require(self, tool):
        path = os.path.join(TOOL_DIR, tool)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            self.fail("%s not built: expected the executable %s (set SCANSERVE_BUILD_DIR to the CMake build "
                      "directory; the tool is a target of engine/CMakeLists.txt)" % (tool, path))
        return path

    def model(self, name, seed=0, g_mode="scalar", vocab=None, vocab_size=None, **over):
        """Random SCAN checkpoint -> converted model dir (with the tool) + reference on the checkpoint."""
        d = self.fresh_dir(name)
        ckpt = os.path.join(d, "model_best.pth.tar")
        sc.make_checkpoint(ckpt, vocab_size or self.V, seed=seed, g_mode=g_mode, **over)
        out = os.path.join(d, "model")
        try:
            self.converter.convert(ckpt, vocab or self.vocab_path, out, force=True, log=lambda s: None)
        except self.converter.ConvertError as e:
            self.fail("converter rejected a valid checkpoint: %s" % e)
        return out, sr.ScanReference(ckpt, vocab or self.vocab_path)

    def run_tool(self, argv, timeout=TOOL_TIMEOUT_S):
        t0 = time.time()
        try:
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, time.time() - t0
        if r.returncode != 0:
            self.fail("%s exited %d\ncommand: %s\nstderr (tail):\n%s" % (
                os.path.basename(argv[0]), r.returncode, " ".join(argv), r.stderr[-3000:]))
        return r, time.time() - t0

    # -- scan_score ------------------------------------------------------------------------------
    def write_inputs(self, d, images, captions):
        np.save(os.path.join(d, "regions.npy"), np.concatenate(images).astype(np.float32))
        np.save(os.path.join(d, "counts.npy"), np.array([f.shape[0] for f in images], dtype=np.int64))
        with open(os.path.join(d, "captions.txt"), "w", encoding="utf-8") as f:
            for c in captions:
                assert "\n" not in c and c == c.strip()
                f.write(c + "\n")

    def scan_score(self, model_dirs, d, backend="cpu", storage="fp32", stored="images", tag="run"):
        exe = self.require("scan_score")
        out = os.path.join(d, "sims_%s.npy" % tag)
        dump = os.path.join(d, "dump_%s" % tag)
        os.makedirs(dump)
        argv = [exe]
        for m in model_dirs:
            argv += ["--model", m]
        argv += ["--regions", os.path.join(d, "regions.npy"), "--region-counts", os.path.join(d, "counts.npy"),
                 "--captions", os.path.join(d, "captions.txt"), "--backend", backend]
        if storage:
            argv += ["--storage", storage]
        if stored:
            argv += ["--stored", stored]
        argv += ["--out", out, "--dump-embeddings", dump]
        r, _ = self.run_tool(argv)
        if r is None:
            self.fail("scan_score timed out after %d s: %s" % (TOOL_TIMEOUT_S, " ".join(argv)))
        sims = np.load(out)
        return sims, dump

    def check_sims(self, sims, want, tol, what):
        if os.environ.get("SCANSERVE_PARITY_VERBOSE"):
            print("  %s: rel_err %.2e" % (what, rel_err(sims, want)), file=sys.stderr)
        self.assertEqual(sims.dtype, np.float32, "%s: SIMS.npy must be float32" % what)
        self.assertEqual(sims.shape, want.shape, "%s: SIMS.npy shape (n_images, n_captions)" % what)
        self.assertTrue(np.isfinite(sims).all(), "%s: non-finite scores" % what)
        err = rel_err(sims, want)
        self.assertLessEqual(err, tol, "%s: rel_err %.3g > %.1g (max|a-b|/max(max|ref|,1e-3)); "
                             "worst at %s" % (what, err, tol,
                                             np.unravel_index(np.argmax(np.abs(sims - want)), want.shape)))

    def check_dump(self, dump, refs, images, captions, what, tol=FP32_TOL):
        ids = [refs[0].caption_ids(c) for c in captions]
        got_ids = np.load(os.path.join(dump, "caption_ids.npy"))
        got_len = np.load(os.path.join(dump, "caption_lengths.npy"))
        self.assertEqual(got_len.dtype, np.int64, what)
        self.assertEqual(got_ids.dtype, np.int64, what)
        np.testing.assert_array_equal(got_len, [len(x) for x in ids], "%s: caption_lengths" % what)
        if got_ids.tolist() != [t for x in ids for t in x]:
            flat, at = got_ids.tolist(), 0
            for c, x in zip(captions, ids):
                if flat[at:at + len(x)] != x:
                    self.fail("%s: caption_ids differ for %r: engine %s, reference %s (tokens %s)"
                              % (what, c, flat[at:at + len(x)], x, sr.tokenize(c)))
                at += len(x)
        for m, ref in enumerate(refs):
            regions = torch.cat([ref.encode_regions(f) for f in images]).numpy()
            words = torch.cat(ref.encode_captions(ids)).numpy()
            gi = np.load(os.path.join(dump, "images_m%d.npy" % m))
            gw = np.load(os.path.join(dump, "captions_m%d.npy" % m))
            self.assertEqual(gi.shape, regions.shape, "%s: images_m%d shape" % (what, m))
            self.assertEqual(gw.shape, words.shape, "%s: captions_m%d shape" % (what, m))
            self.assertLessEqual(rel_err(gi, regions), tol, "%s: region embeddings of model %d" % (what, m))
            self.assertLessEqual(rel_err(gw, words), tol, "%s: word embeddings of model %d" % (what, m))

    RUNS = (("cpu", "fp32", "images"), ("cpu", "fp32", "captions"), ("reference", None, None))

    def parity_case(self, label, model_dir, ref, images, captions, runs=RUNS):
        d = self.fresh_dir("case")
        self.write_inputs(d, images, captions)
        want = ref.similarity_matrix(images, captions)
        for backend, storage, stored in runs:
            what = "%s [backend %s%s%s]" % (label, backend, " storage " + storage if storage else "",
                                            " stored " + stored if stored else "")
            with self.subTest(case=what):
                sims, dump = self.scan_score([model_dir], d, backend, storage, stored,
                                             tag="%s_%s_%s" % (backend, storage, stored))
                self.check_dump(dump, [ref], images, captions, what)
                self.check_sims(sims, want, FP32_TOL, what)
        return want


def random_case(rng, img_dim, n_images=4, n_captions=6):
    """Region counts 1, 100 and two random ones; caption lengths 1, 40 and random; a tricky caption."""
    counts = [1, 100] + list(rng.integers(2, 100, size=n_images - 2))
    images = make_images(rng, counts, img_dim)
    lengths = [1, 40] + list(rng.integers(2, 40, size=n_captions - 2))
    captions = [make_caption(rng, int(n)) for n in lengths]
    captions.append(TRICKY_CAPTIONS[int(rng.integers(len(TRICKY_CAPTIONS)))])
    return images, captions


class ScoreParityTest(EngineTestBase):
    def test_attention_grid(self):
        """Every raw_feature_norm x pooling x cross_attn (released lambdas; i2t with both lambda_lse)."""
        self.require("scan_score")
        rng = np.random.default_rng(10)
        k = 0
        for xattn, l1, l2s in (("t2i", 9.0, (6.0,)), ("i2t", 4.0, (5.0, 20.0))):
            for ni, norm in enumerate(ALL_NORMS):
                for pi, pool in enumerate(ALL_POOLS):
                    l2 = l2s[ni % len(l2s)]  # i2t: lambda_lse 5 (F30K) and 20 (COCO) alternate by norm
                    k += 1
                    over = dict(cross_attn=xattn, raw_feature_norm=norm, agg_func=pool, lambda_softmax=l1,
                                lambda_lse=l2)
                    label = "%s %s %s l1=%g l2=%g" % (xattn, norm, pool, l1, l2)
                    mdir, ref = self.model("grid", seed=k, **over)
                    images, captions = random_case(rng, ref.cfg["img_dim"])
                    runs = [r for j, r in enumerate(self.RUNS)
                            if FULL_RUNS or j == 0 or (j == 1 and pi == ni % 4) or (j == 2 and pi == (ni + 2) % 4)]
                    self.parity_case(label, mdir, ref, images, captions, runs)

    def test_encoder_variants(self):
        self.require("scan_score")
        rng = np.random.default_rng(11)
        variants = [
            ("uni-GRU 1 layer", dict(bi_gru=False)),
            ("bi-GRU 2 layers", dict(num_layers=2)),
            ("uni-GRU 2 layers", dict(bi_gru=False, num_layers=2, cross_attn="i2t", lambda_softmax=4.0,
                                      lambda_lse=5.0)),
            ("no_imgnorm", dict(no_imgnorm=True)),
            ("no_txtnorm", dict(no_txtnorm=True, cross_attn="i2t", lambda_softmax=4.0, lambda_lse=20.0)),
            ("no_imgnorm+no_txtnorm", dict(no_imgnorm=True, no_txtnorm=True, raw_feature_norm="no_norm")),
            ("weight_norm g 0-d", dict(precomp_enc_type="weight_norm")),
            ("weight_norm g [1]", dict(precomp_enc_type="weight_norm", g_mode="shape1")),
            ("weight_norm g (out,1)", dict(precomp_enc_type="weight_norm", g_mode="row", agg_func="Mean")),
        ]
        for i, (label, over) in enumerate(variants):
            over = dict(over)
            g_mode = over.pop("g_mode", "scalar")
            mdir, ref = self.model("variant", seed=100 + i, g_mode=g_mode, **over)
            images, captions = random_case(rng, ref.cfg["img_dim"])
            # Unnormalised embeddings matter to every scorer (no unit-norm shortcut): all runs.
            all_runs = FULL_RUNS or ("norm" in label and "weight" not in label)
            self.parity_case(label, mdir, ref, images, captions, self.RUNS if all_runs else self.RUNS[:1])

    def test_all_lengths_and_region_counts(self):
        """Captions of every length 1..40 tokens, images of 1..100 regions, t2i and i2t."""
        self.require("scan_score")
        rng = np.random.default_rng(12)
        counts = [1, 2, 3, 4, 5, 8, 13, 21, 36, 37, 50, 64, 99, 100]
        for label, over in (("t2i LSE", dict()), ("i2t LSE", dict(cross_attn="i2t", lambda_softmax=4.0,
                                                                   lambda_lse=5.0))):
            mdir, ref = self.model("coverage", seed=200, **over)
            images = make_images(rng, counts, ref.cfg["img_dim"])
            captions = [make_caption(rng, n) for n in range(1, 41)] + TRICKY_CAPTIONS
            self.parity_case("coverage " + label, mdir, ref, images, captions)

    def test_ensemble(self):
        self.require("scan_score")
        rng = np.random.default_rng(13)
        a_dir, a = self.model("ens_a", seed=300, agg_func="Mean")  # t2i AVG
        b_dir, b = self.model("ens_b", seed=301, cross_attn="i2t", lambda_softmax=4.0, lambda_lse=5.0,
                              bi_gru=False)  # i2t LSE
        images, captions = random_case(rng, a.cfg["img_dim"], n_images=5, n_captions=8)
        d = self.fresh_dir("ensemble")
        self.write_inputs(d, images, captions)
        want = sr.ensemble_similarity([a, b], images, captions)
        for backend, storage, stored in self.RUNS:
            what = "ensemble [backend %s %s %s]" % (backend, storage, stored)
            with self.subTest(case=what):
                sims, dump = self.scan_score([a_dir, b_dir], d, backend, storage, stored,
                                             tag="%s_%s_%s" % (backend, storage, stored))
                self.check_dump(dump, [a, b], images, captions, what)
                self.check_sims(sims, want, FP32_TOL, what)

    def test_bf16_storage(self):
        self.require("scan_score")
        rng = np.random.default_rng(14)
        for label, over in (("t2i LSE", dict()), ("i2t LSE", dict(cross_attn="i2t", lambda_softmax=4.0,
                                                                   lambda_lse=20.0))):
            mdir, ref = self.model("bf16", seed=400, **over)
            images, captions = structured_split(ref, rng, 24, 36, alpha=0.65)
            d = self.fresh_dir("bf16")
            self.write_inputs(d, images, captions)
            want = ref.similarity_matrix(images, captions)
            for stored in ("images", "captions"):
                what = "bf16 %s stored %s" % (label, stored)
                with self.subTest(case=what):
                    sims, dump = self.scan_score([mdir], d, "cpu", "bf16", stored, tag="bf16_" + stored)
                    self.check_sims(sims, want, BF16_TOL, what)
                    self.check_top10(sims, want, what)

    def check_top10(self, sims, want, what):
        for axis, name in ((1, "image->captions"), (0, "caption->images")):
            a = sims if axis == 1 else sims.T
            b = want if axis == 1 else want.T
            overlaps = []
            for q in range(a.shape[0]):
                top_a = list(np.argsort(-a[q], kind="stable")[:10])
                top_b = list(np.argsort(-b[q], kind="stable")[:10])
                self.assertIn(top_b[0], top_a, "%s %s query %d: reference top-1 not in top-10" % (what, name, q))
                overlaps.append(len(set(top_a) & set(top_b)))
            self.assertGreaterEqual(min(overlaps), min(7, a.shape[1]), "%s %s: top-10 overlap" % (what, name))
            self.assertGreaterEqual(np.mean(overlaps), min(9, a.shape[1]), "%s %s: mean top-10 overlap"
                                    % (what, name))

    def test_real_captions_tokenization(self):
        """The 5,000 Flickr30K test captions with the real vocabulary: ids exact, scores and embeddings."""
        self.require("scan_score")
        vocab = os.path.join(SHARED_TEXT, "f30k_precomp_vocab.json")
        caps_file = os.path.join(SHARED_TEXT, "f30k_test_caps.txt")
        if not (os.path.exists(vocab) and os.path.exists(caps_file)):
            self.skipTest("real SCAN text data absent at %s" % os.path.abspath(SHARED_TEXT))
        with open(caps_file, encoding="utf-8") as f:
            captions = [line.strip() for line in f if line.strip()]
        with open(vocab) as f:
            n = json.load(f)["idx"]
        mdir, ref = self.model("f30k", seed=500, vocab=vocab, vocab_size=n, embed_size=32, word_dim=16,
                               img_dim=40)
        rng = np.random.default_rng(15)
        images = make_images(rng, [1, 36], 40)
        d = self.fresh_dir("f30k")
        self.write_inputs(d, images, captions)
        want = ref.similarity_matrix(images, captions)
        sims, dump = self.scan_score([mdir], d, "cpu", "fp32", "images", tag="f30k")
        self.check_dump(dump, [ref], images, captions, "f30k test captions")
        self.check_sims(sims, want, FP32_TOL, "f30k test captions")


# ----------------------------------------------------------------------------------------------
# scan_eval

def unique_captions(ref, rng, n, min_words, max_words):
    caps, seen = [], set()
    while len(caps) < n:
        c = " ".join(str(w) for w in rng.choice(SIMPLE_WORDS, size=int(rng.integers(min_words, max_words + 1))))
        ids = tuple(ref.caption_ids(c))
        if ids not in seen:
            seen.add(ids)
            caps.append(c)
    return caps


def structured_split(ref, rng, n_images, n_regions, alpha=0.65, min_words=4, max_words=12, captions=None):
    """n_images images x 5 distinct captions, where half of each image's regions embed (through the
    model's own fc layer) near words of its captions, so retrieval is neither perfect nor chance.
    Returns (list of (n_regions, img_dim) float32 features, captions)."""
    if captions is None:
        captions = unique_captions(ref, rng, 5 * n_images, min_words, max_words)
    words = ref.encode_captions([ref.caption_ids(c) for c in captions])
    W = ref.fc_weight.to(torch.float64)
    pinv = torch.linalg.pinv(W)  # img_dim >= embed_size: W f + b hits any target exactly
    b = ref.fc_bias.to(torch.float64)
    E = W.shape[0]
    images = []
    for i in range(n_images):
        toks = torch.cat([words[5 * i + t][1:-1] for t in range(5)])
        noise = torch.from_numpy(rng.standard_normal((n_regions, E)))
        noise = noise / noise.norm(dim=1, keepdim=True)
        pick = torch.from_numpy(rng.integers(0, toks.shape[0], size=n_regions))
        target = noise.clone()
        half = max(1, n_regions // 2)
        e = toks[pick[:half]].to(torch.float64)
        e = e / e.norm(dim=1, keepdim=True)
        target[:half] = alpha * e + (1 - alpha) * noise[:half]
        f = (2.0 * target - b) @ pinv.t()
        images.append(f.numpy().astype(np.float32))
    return images, captions


def write_split(d, split, images, captions):
    np.save(os.path.join(d, "%s_ims.npy" % split), np.stack(images).astype(np.float32))
    with open(os.path.join(d, "%s_caps.txt" % split), "w", encoding="utf-8") as f:
        for c in captions:
            f.write(c + "\n")


class EvalParityTest(EngineTestBase):
    def scan_eval(self, model_dirs, data_dir, extra=(), timeout=TOOL_TIMEOUT_S, allow_timeout=False):
        exe = self.require("scan_eval")
        argv = [exe]
        for m in model_dirs:
            argv += ["--model", m]
        argv += ["--data-dir", data_dir, "--split", "test", "--json"] + list(extra)
        r, secs = self.run_tool(argv, timeout=timeout)
        if r is None:
            if allow_timeout:
                return None, secs
            self.fail("scan_eval timed out after %d s: %s" % (timeout, " ".join(argv)))
        lines = [l for l in r.stdout.splitlines() if l.strip()]
        self.assertTrue(lines, "scan_eval printed nothing on stdout")
        try:
            return json.loads(lines[-1]), secs
        except ValueError:
            self.fail("scan_eval --json: last stdout line is not JSON: %r" % lines[-1][:300])

    def check_metrics(self, got, want, what, tol=1e-6):
        for side in ("i2t", "t2i"):
            for k in ("r1", "r5", "r10", "medr", "meanr"):
                self.assertAlmostEqual(got[side][k], want[side][k], delta=tol,
                                       msg="%s: %s %s = %r, expected %r" % (what, side, k, got[side][k],
                                                                           want[side][k]))
        self.assertAlmostEqual(got["rsum"], want["rsum"], delta=tol * 10, msg="%s: rsum" % what)

    def check_within_bounds(self, got, bounds, what, tol=1e-6):
        for side in ("i2t", "t2i"):
            for k, (lo, hi) in bounds[side].items():
                self.assertTrue(lo - tol <= got[side][k] <= hi + tol,
                                "%s: %s %s = %r outside the reference's [%r, %r]" % (what, side, k,
                                                                                    got[side][k], lo, hi))

    def eval_case(self, label, model_dirs, refs, n_images=40):
        rng = np.random.default_rng(20 + len(label))
        images, captions = structured_split(refs[0], rng, n_images, 36)
        d = self.fresh_dir("eval")
        write_split(d, "test", images, captions)
        want_sims = sum(r.similarity_matrix(images, captions) for r in refs) / len(refs)
        want = sr.evaluate(want_sims)
        self.assertGreater(want["rsum"], 60, "test data too hard to be informative")
        self.assertLess(want["rsum"], 560, "test data too easy to be informative")
        sims_path = os.path.join(d, "sims.npy")
        got, _ = self.scan_eval(model_dirs, d, ["--save-sims", sims_path])
        self.assertEqual(got["n_images"], n_images)
        self.assertEqual(got["n_captions"], 5 * n_images)
        self.assertNotIn("folds", got, "folds only with --fold5")
        # Without --threads every core, for the encoders' products too (a backend probe on one
        # thread once left the whole run's BLAS on one).
        self.assertEqual(got["threads"], os.cpu_count(), "scan_eval's threads without --threads")
        sims = np.load(sims_path)
        self.check_sims(sims, want_sims, FP32_TOL, "%s --save-sims" % label)
        # The protocol on the engine's own matrix: exact.
        self.check_metrics(got, sr.evaluate(sims.astype(np.float64)), "%s metrics vs its own sims" % label)
        # Against the reference matrix, allowing only near-ties to flip.
        scale = max(np.abs(want_sims).max(), 1e-3)
        self.check_within_bounds(got, metric_bounds(want_sims, FP32_TOL * scale), label)
        if metric_bounds(want_sims, FP32_TOL * scale) == metric_bounds(want_sims, 0.0):
            self.check_metrics(got, want, "%s metrics vs reference" % label)

    def test_small_split(self):
        self.require("scan_eval")
        for label, over in (("t2i LSE", dict()), ("i2t AVG", dict(cross_attn="i2t", agg_func="Mean",
                                                                   lambda_softmax=4.0))):
            with self.subTest(model=label):
                mdir, ref = self.model("eval", seed=600, **over)
                self.eval_case(label, [mdir], [ref])

    def test_small_split_ensemble(self):
        self.require("scan_eval")
        a_dir, a = self.model("eval_ens_a", seed=610, agg_func="Mean")
        b_dir, b = self.model("eval_ens_b", seed=611, cross_attn="i2t", lambda_softmax=4.0, lambda_lse=5.0)
        self.eval_case("ensemble", [a_dir, b_dir], [a, b])

    def fold_split(self, ref, rng, fold_images, K, alpha, min_words, max_words):
        """Five folds that reuse one base set of `fold_images` images and caption groups, each fold in its
        own order and with a different share of images paired with another image's captions (0%, 10%,
        ... 40%), so every fold has its own metrics and a fold mix-up shows. Every reference block (and
        the full matrix) is then an indexing of the one base matrix, which keeps the reference cheap.
        Returns (images, captions, diagonal reference blocks, (image index, caption index) into base, base)."""
        n = fold_images
        base_images, base_caps = structured_split(ref, rng, n, K, alpha=alpha, min_words=min_words,
                                                  max_words=max_words)
        words = ref.encode_captions([ref.caption_ids(c) for c in base_caps])
        regions = torch.stack([ref.encode_regions(f) for f in base_images])
        base = sr.gram_similarity(regions, words, ref.cfg)  # (n, 5n); base caption group j = 5j..5j+4
        images, captions, blocks, img_index, cap_index = [], [], [], [], []
        for k in range(5):
            img_perm = rng.permutation(n)
            grp = img_perm.copy()
            m = int(round(0.1 * k * n))
            if m > 1:
                sel = rng.choice(n, size=m, replace=False)
                grp[sel] = grp[np.roll(sel, 1)]  # these images get another image's captions
            cols = np.array([5 * g + t for g in grp for t in range(5)])
            images += [base_images[i] for i in img_perm]
            captions += [base_caps[c] for c in cols]
            blocks.append(base[img_perm][:, cols])
            img_index.append(img_perm)
            cap_index.append(cols)
        rsums = [sr.evaluate(b)["rsum"] for b in blocks]
        self.assertEqual(len(set(np.round(rsums, 6))), 5, "fold data should give 5 distinct rsums: %s" % rsums)
        return images, captions, blocks, (np.concatenate(img_index), np.concatenate(cap_index)), base

    def check_folds(self, got, blocks, engine_blocks=None):
        n = blocks[0].shape[0]
        self.assertEqual(got["n_images"], 5 * n)
        self.assertEqual(got["n_captions"], 25 * n)
        self.assertIn("folds", got, "--fold5 must report the folds")
        self.assertEqual(len(got["folds"]), 5)
        want = sr.evaluate_folds(blocks)
        scale = max(max(np.abs(b).max() for b in blocks), 1e-3)
        for k, (gf, blk) in enumerate(zip(got["folds"], blocks)):
            if engine_blocks is not None:  # the protocol on the engine's own matrix: exact
                self.check_metrics(gf, sr.evaluate(engine_blocks[k]), "fold %d vs its own sims" % k)
            bounds = metric_bounds(blk, FP32_TOL * scale)
            self.check_within_bounds(gf, bounds, "fold %d" % k)
            if bounds == metric_bounds(blk, 0.0):
                self.check_metrics(gf, want["folds"][k], "fold %d vs reference" % k)
        # Top level: the mean over folds; rsum the true mean of the folds' rsums.
        for side in ("i2t", "t2i"):
            for key in ("r1", "r5", "r10", "medr", "meanr"):
                self.assertAlmostEqual(got[side][key], np.mean([f[side][key] for f in got["folds"]]), delta=1e-6,
                                       msg="top-level %s %s is not the mean over folds" % (side, key))
        self.assertAlmostEqual(got["rsum"], np.mean([f["rsum"] for f in got["folds"]]), delta=1e-5,
                               msg="top-level rsum must be the mean of the folds' rsums")

    def test_fold5_a_protocol(self):
        """--fold5 --fold-images 50: 250 images (36 regions) / 1,250 captions; --save-sims checked
        against the reference over the whole matrix, the folds' metrics against its diagonal blocks."""
        self.require("scan_eval")
        mdir, ref = self.model("fold5_small", seed=700)
        rng = np.random.default_rng(31)
        images, captions, blocks, (ii, cc), base = self.fold_split(ref, rng, 50, 36, 0.65, 4, 12)
        d = self.fresh_dir("fold5_small")
        write_split(d, "test", images, captions)
        sims_path = os.path.join(d, "sims.npy")
        got, secs = self.scan_eval([mdir], d, ["--fold5", "--fold-images", "50", "--save-sims", sims_path])
        t0 = time.time()
        subprocess.run([self.require("scan_eval"), "--help"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=TOOL_TIMEOUT_S)
        startup = time.time() - t0
        type(self).fold5_small_secs = (secs, startup)
        sims = np.load(sims_path)
        self.check_sims(sims, base[ii][:, cc], FP32_TOL, "fold5 --save-sims")
        own = [sims[50 * k:50 * (k + 1), 250 * k:250 * (k + 1)].astype(np.float64) for k in range(5)]
        self.check_folds(got, blocks, own)
        # Without --save-sims scan_eval scores only the fold blocks: the metrics must not change.
        got_blocks, _ = self.scan_eval([mdir], d, ["--fold5", "--fold-images", "50"])
        self.check_folds(got_blocks, blocks, own)

    def test_fold5_b_coco_size(self):
        """COCO 1K: 5 folds of 1,000 images / 5,000 captions (embed 32, 4 regions per image, 1-3 word
        captions). Skipped, saying so, when scan_eval needs more than FOLD5_LIMIT_S."""
        self.require("scan_eval")
        small = getattr(type(self), "fold5_small_secs", None)
        # Without --save-sims scan_eval scores only the five 1,000 x 5,000 fold blocks: 80x the pairs of
        # the 50-image-fold case's whole matrix, each ~4x cheaper here (4 regions, short captions,
        # embed 32). Hopeless cases skip at once.
        if small is not None:
            secs, startup = small
            estimate = startup + max(secs - startup, 0.0) * 20
            if estimate > 2 * FOLD5_LIMIT_S:
                self.skipTest("fold5 at COCO size skipped: the 50-image-fold case took %.1f s (%.1f s of it "
                              "start-up), so 5 x 1,000 images would take about %.0f s > %d s"
                              % (secs, startup, estimate, FOLD5_LIMIT_S))
        mdir, ref = self.model("fold5", seed=701, embed_size=32, word_dim=16, img_dim=48)
        rng = np.random.default_rng(30)
        t0 = time.time()
        images, captions, blocks, _, _ = self.fold_split(ref, rng, 1000, 4, 0.8, 1, 3)
        ref_secs = time.time() - t0
        d = self.fresh_dir("fold5")
        write_split(d, "test", images, captions)
        got, secs = self.scan_eval([mdir], d, ["--fold5"], timeout=FOLD5_LIMIT_S, allow_timeout=True)
        if got is None:
            self.skipTest("fold5 at COCO size skipped: scan_eval --fold5 on 5,000 images x 25,000 captions "
                          "took more than %d s (reference data: %.1f s)" % (FOLD5_LIMIT_S, ref_secs))
        self.check_folds(got, blocks)
        print("\nfold5 (COCO size): scan_eval %.1f s, reference %.1f s" % (secs, ref_secs), file=sys.stderr)


if __name__ == "__main__":
    prog = unittest.main(exit=False, verbosity=2)
    sys.exit(0 if prog.result.wasSuccessful() else 1)
