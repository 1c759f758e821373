"""Gradient parity of scan_train with an independent PyTorch reference of SCAN's training loss.

    SCANSERVE_BUILD_DIR=build SCANSERVE_SOURCE_DIR=/work/main /usr/bin/python3 tests/python/test_train_parity.py

A random-weight checkpoint in SCAN's layout (scan_checkpoints.py) is converted to a model directory
(tools/convert_scan_checkpoint.py); `scan_train --dump-gradients` computes the hinge triplet loss of
one small batch and every parameter's gradient with those weights. The reference computes the same
from the spec, in float64, with scan_reference.py's encoders and per-pair attention (pair_relevance,
pool: one (image, caption) pair at a time, nothing batched) and the loss written out below, then
autograd.

Tolerances (stated once here), b = reference:
  * float64 engine run: loss |a-b| <= 1e-5 |b|; every gradient ELEMENT |a-b| <= 1e-5 |b| + 1e-7 max|b|
    (the floor covers the float32 storage of the dump, ~6e-8 relative);
  * float32 engine run: loss as above; every gradient tensor max|a-b| <= 1e-5 max|b|;
  * optimiser (float64, --dump-steps): N steps of clip_grad_norm_ + torch.optim.Adam on the batch;
    every tensor's update max|a-b| <= 1e-5 max|b|.
Batches mix caption lengths (2..11 words), so padding and packing are exercised.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import scan_checkpoints as sc  # noqa: E402
import scan_reference as sr  # noqa: E402
from safetensors_reader import read_safetensors  # noqa: E402

SOURCE_DIR = os.environ.get("SCANSERVE_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
BUILD_DIR = os.environ.get("SCANSERVE_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")
SCAN_TRAIN = os.path.join(BUILD_DIR, "engine", "scan_train")
CONVERTER = os.path.join(SOURCE_DIR, "tools", "convert_scan_checkpoint.py")

TOL = 1e-5
TOOL_TIMEOUT_S = 120
N_IMAGES, N_REGIONS = 7, 5
WORDS = sorted(w for w in sc.BASE_WORDS if w.isalpha())

torch.set_num_threads(min(2, os.cpu_count() or 1))


def write_split(data_dir, name, rng, img_dim):
    feats = np.stack([sc.random_region_features(rng, N_REGIONS, img_dim) for _ in range(N_IMAGES)])
    np.save(os.path.join(data_dir, name + "_ims.npy"), feats.astype(np.float32))
    caps = []
    for i in range(5 * N_IMAGES):
        n = int(rng.integers(2, 12))
        caps.append(" ".join(WORDS[int(rng.integers(len(WORDS)))] for _ in range(n)))
    with open(os.path.join(data_dir, name + "_caps.txt"), "w") as f:
        f.write("\n".join(caps) + "\n")
    return feats, caps


class ReferenceLoss(object):
    """SCAN's encoders with gradients, from scan_reference's model (float64)."""

    def __init__(self, checkpoint, vocab, cfg_overrides):
        self.ref = sr.ScanReference(checkpoint, vocab)
        self.cfg = dict(self.ref.cfg)
        self.cfg.update(cfg_overrides)
        self.ref.fc_weight = self.ref.fc_weight.clone().requires_grad_(True)
        self.ref.fc_bias = self.ref.fc_bias.clone().requires_grad_(True)
        self.ref.embed = self.ref.embed.clone().requires_grad_(True)
        for p in self.ref.gru.parameters():
            p.requires_grad_(True)
            p.grad = None

    def encode_captions(self, id_lists):
        lengths = [len(x) for x in id_lists]
        ids = torch.zeros(len(id_lists), max(lengths), dtype=torch.long)
        for i, x in enumerate(id_lists):
            ids[i, :len(x)] = torch.as_tensor(x)
        packed = pack_padded_sequence(self.ref.embed[ids], torch.as_tensor(lengths), batch_first=True,
                                      enforce_sorted=False)
        out, _ = self.ref.gru(packed)
        padded, _ = pad_packed_sequence(out, batch_first=True)
        words = self.ref._finish_words(padded)
        return [words[i, :n] for i, n in enumerate(lengths)]

    def loss(self, features, captions, margin, max_violation):
        """The seed's loss: hardest negatives (eq. 12) or the sum over negatives (eq. 11)."""
        regions = [self.ref.encode_regions(f) for f in features]
        words = self.encode_captions([self.ref.caption_ids(c) for c in captions])
        b = len(regions)
        s = torch.stack([torch.stack([sr.pool(sr.pair_relevance(regions[i], words[j], self.cfg),
                                              self.cfg["agg_func"], self.cfg["lambda_lse"])
                                      for j in range(b)]) for i in range(b)])
        total = torch.zeros((), dtype=torch.float64)
        for i in range(b):  # image i against the other captions (its row)
            costs = [torch.clamp(margin - s[i, i] + s[i, j], min=0) for j in range(b) if j != i]
            total = total + (torch.stack(costs).max() if max_violation else torch.stack(costs).sum())
        for j in range(b):  # caption j against the other images (its column)
            costs = [torch.clamp(margin - s[j, j] + s[i, j], min=0) for i in range(b) if i != j]
            total = total + (torch.stack(costs).max() if max_violation else torch.stack(costs).sum())
        return total, s

    def gradients(self):
        g = {"img_enc.fc.weight": self.ref.fc_weight.grad, "img_enc.fc.bias": self.ref.fc_bias.grad,
             "txt_enc.embed.weight": self.ref.embed.grad}
        for name, p in self.ref.gru.named_parameters():
            g["txt_enc.rnn." + name] = p.grad
        return {k: v.detach().numpy() for k, v in g.items()}


class TrainParityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(SCAN_TRAIN):
            raise AssertionError("%s is missing: build the scan_train target" % SCAN_TRAIN)
        cls.tmp = tempfile.mkdtemp(prefix="train_parity_")
        cls.vocab = os.path.join(cls.tmp, "vocab.json")
        cls.vocab_size = sc.write_vocab(cls.vocab)["idx"]
        cls.data_dir = os.path.join(cls.tmp, "data")
        os.makedirs(cls.data_dir)
        rng = np.random.default_rng(11)
        cls.features, cls.captions = write_split(cls.data_dir, "tiny", rng, sc.SMALL_DIMS["img_dim"])
        cls.models = {}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def model(self, bi_gru=True, num_layers=1, no_imgnorm=False, no_txtnorm=False):
        """(checkpoint, model dir) of a random-weight model of this architecture, converted once."""
        key = (bi_gru, num_layers, no_imgnorm, no_txtnorm)
        if key not in self.models:
            name = "m%d" % len(self.models)
            ckpt = os.path.join(self.tmp, name + ".pth.tar")
            sc.make_checkpoint(ckpt, self.vocab_size, seed=len(self.models) + 3, bi_gru=bi_gru,
                               num_layers=num_layers, no_imgnorm=no_imgnorm, no_txtnorm=no_txtnorm)
            out = os.path.join(self.tmp, name)
            subprocess.run([sys.executable, CONVERTER, ckpt, "--vocab", self.vocab, "--out", out],
                           check=True, capture_output=True, timeout=TOOL_TIMEOUT_S)
            self.models[key] = (ckpt, out)
        return self.models[key]

    def run_case(self, attention, max_violation=True, margin=0.2, dtype="float64", captions=None,
                 steps=0, lr=1e-2, grad_clip=0.5, **arch):
        ckpt, model_dir = self.model(**arch)
        # The attention hyper-parameters live in config.json: set them there (a copy per case).
        case_dir = tempfile.mkdtemp(dir=self.tmp)
        shutil.copytree(model_dir, os.path.join(case_dir, "model"))
        config_path = os.path.join(case_dir, "model", "config.json")
        with open(config_path) as f:
            config = json.load(f)
        config.update(attention)
        with open(config_path, "w") as f:
            json.dump(config, f)
        if captions is None:
            captions = [5 * i + (i % 5) for i in range(N_IMAGES)]
        out = os.path.join(case_dir, "dump")
        cmd = [SCAN_TRAIN, "--dump-gradients", out, "--init-model", os.path.join(case_dir, "model"),
               "--data-dir", self.data_dir, "--train-split", "tiny", "--margin", repr(margin),
               "--dtype", dtype, "--dump-captions", ",".join(str(c) for c in captions),
               "--max-violation" if max_violation else "--no-max-violation"]
        if steps:
            cmd += ["--dump-steps", str(steps), "--lr", repr(lr), "--grad-clip", repr(grad_clip)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        with open(os.path.join(out, "loss.json")) as f:
            loss = json.load(f)["loss"]
        grads = read_safetensors(os.path.join(out, "gradients.safetensors")).tensors
        scores = np.load(os.path.join(out, "scores.npy"))

        ref = ReferenceLoss(ckpt, self.vocab, attention)
        feats = [self.features[c // 5] for c in captions]
        ref_loss, ref_scores = ref.loss(feats, [self.captions[c] for c in captions], margin, max_violation)
        ref_loss.backward()
        ref_grads = ref.gradients()
        label = "%s %s max_violation=%s %s" % (attention, arch, max_violation, dtype)

        b = float(ref_loss)
        self.assertGreater(b, 0, "degenerate case (zero loss): " + label)
        self.assertLessEqual(abs(loss - b), TOL * abs(b), "loss %r vs reference %r: %s" % (loss, b, label))
        s = ref_scores.detach().numpy()
        self.assertLessEqual(np.abs(scores - s).max(), TOL * max(np.abs(s).max(), 1e-3), label)
        self.assertEqual(sorted(grads), sorted(ref_grads), label)
        for name, g_ref in ref_grads.items():
            g = grads[name].astype(np.float64)
            self.assertEqual(g.shape, g_ref.shape, name)
            scale = np.abs(g_ref).max()
            self.assertGreater(scale, 0, "%s has no gradient in the reference: %s" % (name, label))
            if dtype == "float64":
                bad = np.abs(g - g_ref) > TOL * np.abs(g_ref) + 1e-7 * scale
                self.assertFalse(bad.any(), "%s: %d elements off, worst %g vs %g: %s" % (
                    name, bad.sum(), g[bad][0] if bad.any() else 0, g_ref[bad][0] if bad.any() else 0, label))
            else:
                err = np.abs(g - g_ref).max() / scale
                self.assertLessEqual(err, TOL, "%s: relative error %g: %s" % (name, err, label))
            if os.environ.get("SCANSERVE_PARITY_VERBOSE"):
                print("%-32s max rel err %.2e  %s" % (name, np.abs(g - g_ref).max() / scale, label))
        if steps:
            self.check_steps(ckpt, attention, feats, [self.captions[c] for c in captions], margin,
                             max_violation, steps, lr, grad_clip, os.path.join(out, "weights_after_steps.safetensors"),
                             os.path.join(model_dir, "weights.safetensors"), label)

    def check_steps(self, ckpt, attention, feats, caps, margin, max_violation, steps, lr, grad_clip,
                    after_path, before_path, label):
        """The same steps with torch.optim.Adam and clip_grad_norm_ (float64): equal weight updates."""
        ref = ReferenceLoss(ckpt, self.vocab, attention)
        params = {"img_enc.fc.weight": ref.ref.fc_weight, "img_enc.fc.bias": ref.ref.fc_bias,
                  "txt_enc.embed.weight": ref.ref.embed}
        for name, p in ref.ref.gru.named_parameters():
            params["txt_enc.rnn." + name] = p
        optimiser = torch.optim.Adam(list(params.values()), lr=lr)
        for step in range(steps):
            optimiser.zero_grad()
            loss, _ = ref.loss(feats, caps, margin, max_violation)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(list(params.values()), grad_clip)
            if step == 0:  # the cases are chosen so that clipping acts (clip 0.5) or does not (100)
                self.assertEqual(float(norm) > grad_clip, grad_clip < 1, "norm %g: %s" % (norm, label))
            optimiser.step()
        before = read_safetensors(before_path).tensors
        after = read_safetensors(after_path).tensors
        for name, p in params.items():
            delta_ref = p.detach().numpy() - before[name].astype(np.float64)
            delta = after[name].astype(np.float64) - before[name].astype(np.float64)
            scale = np.abs(delta_ref).max()
            self.assertGreater(scale, 0, name)
            err = np.abs(delta - delta_ref).max() / scale
            self.assertLessEqual(err, TOL, "%s: update differs by %g relative after %d steps: %s" % (
                name, err, steps, label))

    # -- the released setting and every attention variant ----------------------------------------
    def test_t2i_lse_clipped_l2norm_hardest_negatives(self):
        self.run_case(dict(cross_attn="t2i", agg_func="LogSumExp", raw_feature_norm="clipped_l2norm",
                           lambda_softmax=9.0, lambda_lse=6.0))

    def test_t2i_lse_float32(self):
        self.run_case(dict(cross_attn="t2i", agg_func="LogSumExp", raw_feature_norm="clipped_l2norm",
                           lambda_softmax=9.0, lambda_lse=6.0), dtype="float32")

    def test_i2t_lse_clipped_l2norm_hardest_negatives(self):
        self.run_case(dict(cross_attn="i2t", agg_func="LogSumExp", raw_feature_norm="clipped_l2norm",
                           lambda_softmax=4.0, lambda_lse=5.0))

    def test_i2t_mean_float32(self):
        self.run_case(dict(cross_attn="i2t", agg_func="Mean", raw_feature_norm="clipped_l2norm",
                           lambda_softmax=4.0, lambda_lse=5.0), dtype="float32")

    def test_sum_of_violations(self):
        for cross_attn in ("t2i", "i2t"):
            self.run_case(dict(cross_attn=cross_attn, agg_func="Mean", raw_feature_norm="clipped_l2norm",
                               lambda_softmax=9.0, lambda_lse=6.0), max_violation=False)

    def test_every_norm_and_pooling(self):
        poolings = ["LogSumExp", "Mean", "Max", "Sum"]
        norms = ["l2norm", "clipped", "no_norm", "softmax"]
        n = 0
        for cross_attn in ("t2i", "i2t"):
            for norm in norms:
                self.run_case(dict(cross_attn=cross_attn, agg_func=poolings[n % 4], raw_feature_norm=norm,
                                   lambda_softmax=5.0, lambda_lse=4.0), max_violation=n % 3 != 2,
                              margin=0.5)
                n += 1

    def test_architectures(self):
        att = dict(cross_attn="t2i", agg_func="LogSumExp", raw_feature_norm="clipped_l2norm",
                   lambda_softmax=9.0, lambda_lse=6.0)
        self.run_case(att, bi_gru=False, num_layers=2)
        self.run_case(att, bi_gru=True, num_layers=2)
        self.run_case(dict(att, cross_attn="i2t"), no_imgnorm=True, no_txtnorm=True, margin=1.0)

    def test_optimiser_steps(self):
        # Adam, gradient-norm clipping (active: the first norm exceeds the clip) and the learning rate.
        self.run_case(dict(cross_attn="t2i", agg_func="LogSumExp", raw_feature_norm="clipped_l2norm",
                           lambda_softmax=9.0, lambda_lse=6.0), steps=4)
        self.run_case(dict(cross_attn="i2t", agg_func="Mean", raw_feature_norm="clipped_l2norm",
                           lambda_softmax=4.0, lambda_lse=5.0), max_violation=False, steps=3, lr=3e-3,
                      grad_clip=100.0)

    def test_repeated_image_in_batch(self):
        # Two captions of the same image: the "negative" (image 0, caption 1) is a true pair, still a
        # negative for SCAN's loss (it only knows the diagonal).
        self.run_case(dict(cross_attn="t2i", agg_func="LogSumExp", raw_feature_norm="clipped_l2norm",
                           lambda_softmax=9.0, lambda_lse=6.0), captions=[0, 1, 7, 12, 30, 33])


class BadDataTest(unittest.TestCase):
    """scan_train refuses inconsistent data before training: exit 2 and a message naming the problem."""

    def setUp(self):
        if not os.path.exists(SCAN_TRAIN):
            raise AssertionError("%s is missing: build the scan_train target" % SCAN_TRAIN)
        self.tmp = tempfile.mkdtemp(prefix="train_bad_")
        rng = np.random.default_rng(5)
        for split in ("train", "dev"):
            np.save(os.path.join(self.tmp, split + "_ims.npy"), rng.random((4, 3, 8), dtype=np.float32))
            with open(os.path.join(self.tmp, split + "_caps.txt"), "w") as f:
                f.write("\n".join("a dog on the grass %d" % i for i in range(20)) + "\n")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def train(self, bad=True):
        out = os.path.join(self.tmp, "model")
        proc = subprocess.run([SCAN_TRAIN, "--data-dir", self.tmp, "--out", out, "--epochs", "1",
                               "--embed-size", "8", "--word-dim", "4", "--batch-size", "4", "--min-count", "1",
                               "--no-progress", "--threads", "1"],
                              capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
        if bad:  # refused before anything was written
            self.assertFalse(os.path.exists(out))
            self.assertFalse(os.path.exists(out + "-checkpoint"))
        return proc

    def test_good_data_trains(self):
        proc = self.train(bad=False)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("epoch 1/1", proc.stdout)

    def test_caption_count(self):
        with open(os.path.join(self.tmp, "train_caps.txt"), "a") as f:
            f.write("one caption too many\n")
        proc = self.train()
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("21 captions", proc.stderr)
        self.assertIn("4 images", proc.stderr)

    def test_empty_caption(self):
        with open(os.path.join(self.tmp, "dev_caps.txt"), "w") as f:
            f.write("\n".join("a cat %d" % i if i != 6 else "   " for i in range(20)) + "\n")
        proc = self.train()
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("dev_caps.txt:7", proc.stderr)

    def test_feature_width(self):
        np.save(os.path.join(self.tmp, "dev_ims.npy"), np.ones((4, 3, 9), dtype=np.float32))
        proc = self.train()
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("9-d", proc.stderr)

    def test_nan_feature(self):
        x = np.ones((4, 3, 8), dtype=np.float32)
        x[2, 1, 5] = np.nan
        np.save(os.path.join(self.tmp, "train_ims.npy"), x)
        proc = self.train()
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("image 2 region 1", proc.stderr)


if __name__ == "__main__":
    unittest.main()
