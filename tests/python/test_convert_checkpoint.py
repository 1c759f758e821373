"""Tests of tools/convert_scan_checkpoint.py (SCAN checkpoint -> scanserve model directory).

    SCANSERVE_SOURCE_DIR=/work/main /usr/bin/python3 tests/python/test_convert_checkpoint.py

Most cases call the converter's main() in-process (an exception escaping it fails the test, so "no
traceback" is checked there too); a few run it as a subprocess to check the real exit code and stderr.
Checkpoints are random-weight ones in SCAN's exact layout (scan_checkpoints.py).
"""

import collections
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import scan_checkpoints as sc  # noqa: E402
from tool_modules import SOURCE_DIR, load_tool, tool_path  # noqa: E402
from safetensors_reader import read_safetensors  # noqa: E402

TOOL = tool_path("convert_scan_checkpoint")
SHARED_TEXT = os.path.join(SOURCE_DIR, "..", "shared", "data", "scan-text")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


class ConverterTestBase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tool = load_tool("convert_scan_checkpoint")
        cls.tmp = tempfile.mkdtemp(prefix="scan_convert_test_")
        cls.vocab_path = os.path.join(cls.tmp, "vocab.json")
        cls.vocab = sc.write_vocab(cls.vocab_path)
        cls.V = cls.vocab["idx"]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def make(self, name, seed=0, g_mode="scalar", save_kwargs=None, vocab_size=None, **over):
        p = self.path(name)
        opt, img, txt = sc.make_checkpoint(p, vocab_size or self.V, seed=seed, g_mode=g_mode,
                                           save_kwargs=save_kwargs, **over)
        return p, opt, img, txt

    def save_raw(self, name, state, legacy=True):
        p = self.path(name)
        if legacy:
            torch.save(state, p, _use_new_zipfile_serialization=False, pickle_protocol=2)
        else:
            torch.save(state, p)
        return p

    def convert(self, ckpt, out, vocab=None, force=False):
        """In-process main(); returns (rc, stdout, stderr)."""
        argv = [ckpt, "--vocab", vocab or self.vocab_path, "--out", out] + (["--force"] if force else [])
        so, se = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
            try:
                rc = self.tool.main(argv)
            except SystemExit as e:  # argparse errors
                rc = e.code
        return rc, so.getvalue(), se.getvalue()

    def assert_bad(self, ckpt, substring, vocab=None, out_name=None):
        out = self.path(out_name or ("out_bad_%d" % id(substring)))
        before = set(os.listdir(self.tmp))
        rc, so, se = self.convert(ckpt, out, vocab=vocab)
        self.assertEqual(rc, 2, "exit code for bad input (stderr: %r)" % se)
        self.assertIn(substring, se)
        self.assertNotIn("Traceback", se + so)
        lines = [l for l in se.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, "one-line error expected, got %r" % se)
        self.assertTrue(lines[0].startswith("convert_scan_checkpoint: error: "), lines[0])
        self.assertFalse(os.path.exists(out), "failed conversion left %s" % out)
        self.assertEqual(set(os.listdir(self.tmp)), before, "failed conversion left temporary files")
        return se


class RoundTripTest(ConverterTestBase):
    def check_tensors(self, out, opt, img, txt):
        tensors, header, n = read_safetensors(os.path.join(out, "weights.safetensors"))
        self.assertEqual(n % 8, 0, "header length must be 8-byte aligned")
        E, D, Fd = opt.embed_size, opt.word_dim, opt.img_dim
        expected = ["img_enc.fc.weight", "img_enc.fc.bias", "txt_enc.embed.weight"]
        expected += ["txt_enc.rnn." + nm for nm in sc.gru_tensor_names(opt.num_layers, opt.bi_gru)]
        self.assertEqual(sorted(tensors), sorted(expected))
        self.assertEqual(tensors["img_enc.fc.weight"].shape, (E, Fd))
        self.assertEqual(tensors["img_enc.fc.bias"].shape, (E,))
        self.assertEqual(tensors["txt_enc.embed.weight"].shape, (self.V, D))
        for k, t in txt.items():
            np.testing.assert_array_equal(tensors["txt_enc." + k], t.numpy(), err_msg=k)
        np.testing.assert_array_equal(tensors["img_enc.fc.bias"], img["fc.bias"].numpy())
        if "fc.weight" in img:
            np.testing.assert_array_equal(tensors["img_enc.fc.weight"], img["fc.weight"].numpy())
        return tensors

    def check_config(self, out, opt, ckpt_name):
        with open(os.path.join(out, "config.json")) as f:
            cfg = json.load(f)
        self.assertEqual(cfg["format"], "scanserve.scan_model")
        self.assertEqual(cfg["format_version"], 1)
        for k in ("cross_attn", "agg_func", "raw_feature_norm", "bi_gru", "num_layers", "no_imgnorm",
                  "no_txtnorm", "precomp_enc_type", "embed_size", "word_dim", "img_dim", "data_name"):
            self.assertEqual(cfg[k], getattr(opt, k), k)
            self.assertIs(type(cfg[k]), type(getattr(opt, k)), k)
        for k in ("lambda_softmax", "lambda_lse", "margin"):
            self.assertIsInstance(cfg[k], float, k)
            self.assertEqual(cfg[k], float(getattr(opt, k)), k)
        self.assertEqual(cfg["vocab_size"], self.V)
        self.assertEqual(cfg["source"]["checkpoint"], ckpt_name)
        self.assertEqual(cfg["source"]["epoch"], 29)
        self.assertEqual(cfg["source"]["best_rsum"], 450.125)
        self.assertEqual(cfg["source"]["Eiters"], 87000)
        with open(os.path.join(out, "vocab.json"), "rb") as a, open(self.vocab_path, "rb") as b:
            self.assertEqual(a.read(), b.read(), "vocab.json must be copied verbatim")
        return cfg

    def test_basic_bigru(self):
        p, opt, img, txt = self.make("basic.pth.tar", seed=1)
        out = self.path("m_basic")
        rc, so, se = self.convert(p, out)
        self.assertEqual(rc, 0, se)
        self.assertIn("wrote config.json, weights.safetensors", so)
        self.check_tensors(out, opt, img, txt)
        cfg = self.check_config(out, opt, "basic.pth.tar")
        self.assertEqual(cfg["source"]["defaulted_opt_fields"], [])
        self.assertEqual(sorted(os.listdir(out)), ["config.json", "vocab.json", "weights.safetensors"])
        # Nothing else left next to the output.
        self.assertFalse([f for f in os.listdir(self.tmp) if ".tmp-" in f or ".old-" in f])

    def test_variants(self):
        cases = [
            dict(bi_gru=False, num_layers=1),
            dict(bi_gru=False, num_layers=2),
            dict(bi_gru=True, num_layers=2),
            dict(bi_gru=True, num_layers=3, no_imgnorm=True, no_txtnorm=True),
            dict(cross_attn="i2t", agg_func="Mean", lambda_softmax=4.0, lambda_lse=20.0,
                 raw_feature_norm="softmax"),
            dict(raw_feature_norm="no_norm", agg_func="Max"),
            dict(raw_feature_norm="clipped", agg_func="Sum", data_name="coco_precomp"),
            dict(raw_feature_norm="l2norm", embed_size=24, word_dim=8, img_dim=40),
        ]
        for i, over in enumerate(cases):
            with self.subTest(**over):
                name = "var%d.pth.tar" % i
                p, opt, img, txt = self.make(name, seed=10 + i, **over)
                out = self.path("m_var%d" % i)
                rc, so, se = self.convert(p, out)
                self.assertEqual(rc, 0, se)
                self.check_tensors(out, opt, img, txt)
                self.check_config(out, opt, name)

    def test_weight_norm_folded(self):
        for g_mode in ("scalar", "shape1", "row"):
            with self.subTest(g_mode=g_mode):
                p, opt, img, txt = self.make("wn_%s.pth.tar" % g_mode, seed=3, g_mode=g_mode,
                                             precomp_enc_type="weight_norm")
                self.assertEqual(tuple(img["fc.weight_g"].shape),
                                 {"scalar": (), "shape1": (1,), "row": (opt.embed_size, 1)}[g_mode])
                out = self.path("m_wn_%s" % g_mode)
                rc, so, se = self.convert(p, out)
                self.assertEqual(rc, 0, se)
                self.assertIn("weight_norm", so)
                tensors = self.check_tensors(out, opt, img, txt)
                cfg = self.check_config(out, opt, "wn_%s.pth.tar" % g_mode)
                self.assertEqual(cfg["precomp_enc_type"], "weight_norm")
                # Torch's own weight_norm forward (what SCAN's EncoderImageWeightNormPrecomp runs).
                lin = torch.nn.Linear(opt.img_dim, opt.embed_size)
                lin = torch.nn.utils.weight_norm(lin, dim=None if g_mode != "row" else 0)
                with torch.no_grad():
                    lin.weight_g.copy_(img["fc.weight_g"].reshape(lin.weight_g.shape))
                    lin.weight_v.copy_(img["fc.weight_v"])
                    lin.bias.copy_(img["fc.bias"])
                    x = torch.randn(7, opt.img_dim, generator=torch.Generator().manual_seed(0))
                    want = lin(x).numpy()
                got = x.numpy() @ tensors["img_enc.fc.weight"].T + tensors["img_enc.fc.bias"]
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
                # The fold itself, in float64.
                v = img["fc.weight_v"].double()
                g = img["fc.weight_g"].double()
                w = (g.reshape(()) * v / v.norm()) if g_mode != "row" else g * v / v.norm(dim=1, keepdim=True)
                np.testing.assert_array_equal(tensors["img_enc.fc.weight"], w.float().numpy())

    def test_python2_style_pickles(self):
        # opt as a dict; bytes keys and strings (a Python 2 pickle read without latin1 decoding).
        for kw in (dict(opt_as_dict=True), dict(bytes_strings=True), dict(legacy=False),
                   dict(py2_strings=False), dict(py2_strings=True, opt_as_dict=True)):
            with self.subTest(**kw):
                name = "py2_%s.pth.tar" % "_".join("%s%d" % (k, v) for k, v in sorted(kw.items()))
                p, opt, img, txt = self.make(name, seed=4, save_kwargs=kw)
                out = self.path("m_" + name)
                rc, so, se = self.convert(p, out)
                self.assertEqual(rc, 0, se)
                self.check_tensors(out, opt, img, txt)
                self.check_config(out, opt, name)

    def test_missing_optional_opt_fields_take_defaults(self):
        opt = sc.make_opt(self.V)
        img, txt = sc.make_state_dicts(opt, seed=5)
        for k in ("lambda_lse", "agg_func", "margin", "data_name", "vocab_path", "no_txtnorm"):
            delattr(opt, k)
        p = self.path("defaults.pth.tar")
        sc.save_checkpoint(p, opt, img, txt)
        out = self.path("m_defaults")
        rc, so, se = self.convert(p, out)
        self.assertEqual(rc, 0, se)
        self.assertIn("opt lacks", so)
        self.assertIn("lambda_lse", so)
        with open(os.path.join(out, "config.json")) as f:
            cfg = json.load(f)
        self.assertEqual(cfg["lambda_lse"], 6.0)
        self.assertEqual(cfg["agg_func"], "LogSumExp")
        self.assertEqual(cfg["margin"], 0.2)
        self.assertEqual(cfg["no_txtnorm"], False)
        self.assertEqual(sorted(cfg["source"]["defaulted_opt_fields"]),
                         sorted(["lambda_lse", "agg_func", "margin", "data_name", "vocab_path", "no_txtnorm"]))

    def test_force_and_existing_output(self):
        p, opt, img, txt = self.make("force.pth.tar", seed=6)
        out = self.path("m_force")
        os.makedirs(out)
        with open(os.path.join(out, "keep.txt"), "w") as f:
            f.write("old")
        rc, so, se = self.convert(p, out)
        self.assertEqual(rc, 2)
        self.assertIn("already exists", se)
        self.assertEqual(os.listdir(out), ["keep.txt"], "existing output must be left alone")
        rc, so, se = self.convert(p, out, force=True)
        self.assertEqual(rc, 0, se)
        self.assertEqual(sorted(os.listdir(out)), ["config.json", "vocab.json", "weights.safetensors"])
        self.check_tensors(out, opt, img, txt)
        self.assertFalse([f for f in os.listdir(self.tmp) if ".tmp-" in f or ".old-" in f])

    def test_real_vocabularies(self):
        found = False
        for fname in ("f30k_precomp_vocab.json", "coco_precomp_vocab.json"):
            vpath = os.path.join(SHARED_TEXT, fname)
            if not os.path.exists(vpath):
                continue
            found = True
            with self.subTest(vocab=fname):
                with open(vpath) as f:
                    n = json.load(f)["idx"]
                p, opt, img, txt = self.make("real_%s.pth.tar" % fname, seed=7, vocab_size=n,
                                             data_name=fname.replace("_vocab.json", ""))
                out = self.path("m_real_" + fname)
                rc, so, se = self.convert(p, out, vocab=vpath)
                self.assertEqual(rc, 0, se)
                with open(os.path.join(out, "config.json")) as f:
                    self.assertEqual(json.load(f)["vocab_size"], n)
                with open(os.path.join(out, "vocab.json"), "rb") as a, open(vpath, "rb") as b:
                    self.assertEqual(a.read(), b.read())
                tensors, _, _ = read_safetensors(os.path.join(out, "weights.safetensors"))
                self.assertEqual(tensors["txt_enc.embed.weight"].shape, (n, opt.word_dim))
                # A real vocabulary with the wrong checkpoint: the row count is named.
                small = self.make("small_for_%s.pth.tar" % fname)[0]
                self.assert_bad(small, "vocab size mismatch", vocab=vpath)
        if not found:
            self.skipTest("real SCAN vocabularies absent: %s (see ../shared/data/scan-text/README.md)"
                          % os.path.abspath(SHARED_TEXT))


class BadInputTest(ConverterTestBase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.opt = sc.make_opt(cls.V)
        cls.img, cls.txt = sc.make_state_dicts(cls.opt, seed=2)

    def state(self, **changes):
        st = {"epoch": 3, "model": [collections.OrderedDict(self.img), collections.OrderedDict(self.txt)],
              "best_rsum": 100.0, "opt": sc.make_opt(self.V), "Eiters": 10}
        st.update(changes)
        return st

    def test_checkpoint_not_found(self):
        self.assert_bad(self.path("nope.pth.tar"), "checkpoint not found")

    def test_not_a_torch_file(self):
        p = self.path("text.pth.tar")
        with open(p, "w") as f:
            f.write("this is not a checkpoint\n")
        self.assert_bad(p, "not a readable torch checkpoint")
        p = self.path("empty.pth.tar")
        open(p, "w").close()
        self.assert_bad(p, "not a readable torch checkpoint")

    def test_truncated(self):
        for legacy in (True, False):
            with self.subTest(legacy=legacy):
                full = self.save_raw("full_%s.pth.tar" % legacy, self.state(), legacy=legacy)
                with open(full, "rb") as f:
                    blob = f.read()
                for frac in (0.5, 0.97):
                    p = self.path("trunc_%s_%s.pth.tar" % (legacy, frac))
                    with open(p, "wb") as f:
                        f.write(blob[:int(len(blob) * frac)])
                    self.assert_bad(p, "not a readable torch checkpoint")

    def test_not_a_dict(self):
        self.assert_bad(self.save_raw("list.pth.tar", [1, 2, 3]), "expected a dict with 'model' and 'opt'")

    def test_missing_model_or_opt(self):
        st = self.state()
        del st["model"]
        self.assert_bad(self.save_raw("nomodel.pth.tar", st), "has no 'model' entry")
        st = self.state()
        del st["opt"]
        self.assert_bad(self.save_raw("noopt.pth.tar", st), "has no 'opt' entry")
        self.assert_bad(self.save_raw("badopt.pth.tar", self.state(opt=42)), "checkpoint 'opt' is a int")

    def test_wrong_number_of_state_dicts(self):
        self.assert_bad(self.save_raw("one.pth.tar", self.state(model=[self.img])),
                        "'model' holds 1 state dicts, expected 2")
        self.assert_bad(self.save_raw("three.pth.tar", self.state(model=[self.img, self.txt, self.txt])),
                        "'model' holds 3 state dicts, expected 2")
        self.assert_bad(self.save_raw("notlist.pth.tar", self.state(model=self.img)),
                        "expected a list of 2 state dicts")

    def test_missing_tensor(self):
        txt = collections.OrderedDict(self.txt)
        del txt["rnn.weight_hh_l0_reverse"]
        self.assert_bad(self.save_raw("noreverse.pth.tar", self.state(model=[self.img, txt])),
                        "txt_enc state dict lacks tensor rnn.weight_hh_l0_reverse")
        img = collections.OrderedDict(self.img)
        del img["fc.bias"]
        self.assert_bad(self.save_raw("nobias.pth.tar", self.state(model=[img, self.txt])),
                        "img_enc state dict lacks tensor fc.bias")

    def test_shape_mismatch(self):
        E, D = self.opt.embed_size, self.opt.word_dim
        txt = collections.OrderedDict(self.txt)
        txt["rnn.weight_ih_l0"] = torch.zeros(3 * E, D // 2)
        self.assert_bad(self.save_raw("shape.pth.tar", self.state(model=[self.img, txt])),
                        "txt_enc rnn.weight_ih_l0 has shape (%d, %d), expected (%d, %d)"
                        % (3 * E, D // 2, 3 * E, D))
        # opt disagreeing with the tensors: img_dim, embed_size, bi_gru, num_layers.
        self.assert_bad(self.save_raw("imgdim.pth.tar", self.state(opt=sc.make_opt(self.V, img_dim=2048))),
                        "img_enc fc.weight has shape (%d, %d), expected (%d, 2048)"
                        % (E, self.opt.img_dim, E))
        self.assert_bad(self.save_raw("embed.pth.tar", self.state(opt=sc.make_opt(self.V, embed_size=128))),
                        "img_enc fc.weight has shape (%d, %d), expected (128, %d)"
                        % (E, self.opt.img_dim, self.opt.img_dim))
        self.assert_bad(self.save_raw("unigru.pth.tar", self.state(opt=sc.make_opt(self.V, bi_gru=False))),
                        "txt_enc has unexpected tensors")
        self.assert_bad(self.save_raw("layers.pth.tar", self.state(opt=sc.make_opt(self.V, num_layers=2))),
                        "txt_enc state dict lacks tensor rnn.weight_ih_l1")
        self.assert_bad(self.save_raw("wordim.pth.tar", self.state(opt=sc.make_opt(self.V, word_dim=300))),
                        "txt_enc embed.weight has shape (%d, %d), expected (%d, 300)" % (self.V, D, self.V))

    def test_weight_norm_mismatches(self):
        wn_opt = sc.make_opt(self.V, precomp_enc_type="weight_norm")
        self.assert_bad(self.save_raw("wn_missing.pth.tar", self.state(opt=wn_opt)),
                        "precomp_enc_type is weight_norm but img_enc has fc.weight")
        img, _ = sc.make_state_dicts(wn_opt, seed=2)
        self.assert_bad(self.save_raw("wn_basic.pth.tar", self.state(model=[img, self.txt])),
                        "not weight_norm")
        img = collections.OrderedDict(img)
        img["fc.weight_g"] = torch.ones(3, 3)
        self.assert_bad(self.save_raw("wn_g.pth.tar", self.state(model=[img, self.txt], opt=wn_opt)),
                        "img_enc fc.weight_g has shape (3, 3)")

    def test_vocab_size_mismatch(self):
        vpath = self.path("small_vocab.json")
        sc.write_vocab(vpath, sc.BASE_WORDS[:-1])
        self.assert_bad(self.save_raw("vs.pth.tar", self.state()), "vocab size mismatch", vocab=vpath)
        self.assert_bad(self.save_raw("vs_opt.pth.tar", self.state(opt=sc.make_opt(self.V + 5))),
                        "opt.vocab_size is %d but the vocabulary" % (self.V + 5))
        # Without opt.vocab_size, the embedding's rows are checked.
        opt = sc.make_opt(self.V)
        del opt.vocab_size
        se = self.assert_bad(self.save_raw("vs_rows.pth.tar", self.state(opt=opt)), "vocab size mismatch",
                             vocab=vpath)
        self.assertIn("embed.weight has %d rows but the vocabulary has %d words" % (self.V, self.V - 1), se)

    def test_bad_vocab(self):
        ck = self.save_raw("forvocab.pth.tar", self.state())
        self.assert_bad(ck, "vocab file not found", vocab=self.path("missing_vocab.json"))
        cases = []
        cases.append(("notjson", "{ not json", "is not valid JSON"))
        cases.append(("list", "[1, 2]", "expected a JSON object"))
        d = sc.make_vocab_dict(["cat", "dog"])
        del d["idx2word"]
        cases.append(("nokey", json.dumps(d), "has no 'idx2word'"))
        d = sc.make_vocab_dict(["cat", "dog"])
        d["idx2word"]["4"], d["idx2word"]["5"] = "dog", "cat"
        cases.append(("swap", json.dumps(d), "word2idx['cat'] = 4 but idx2word['4'] = 'dog'"))
        d = sc.make_vocab_dict(["cat", "dog"])
        d["idx"] = 7
        cases.append(("idx", json.dumps(d), "idx = 7 but word2idx has 6 entries"))
        d = sc.make_vocab_dict(["cat", "dog"])
        d["word2idx"]["dog"] = 4
        cases.append(("dup", json.dumps(d), "share id 4"))
        d = sc.make_vocab_dict(["cat", "dog"])
        d["word2idx"]["<unk>"], d["word2idx"]["cat"] = 4, 3
        d["idx2word"]["3"], d["idx2word"]["4"] = "cat", "<unk>"
        cases.append(("special", json.dumps(d), "special token <unk> must have id 3"))
        cases.append(("dupkey", '{"word2idx": {"a": 0, "a": 1}, "idx2word": {}, "idx": 1}', "duplicate key"))
        cases.append(("badid", json.dumps({"word2idx": {"<pad>": "0"}, "idx2word": {"0": "<pad>"}, "idx": 1}),
                      "is not an id in [0, 1)"))
        for name, text, sub in cases:
            with self.subTest(case=name):
                vp = self.path("badvocab_%s.json" % name)
                with open(vp, "w") as f:
                    f.write(text)
                self.assert_bad(ck, sub, vocab=vp, out_name="out_badvocab_%s" % name)

    def test_unsupported_raw_feature_norm(self):
        for norm in ("l1norm", "clipped_l1norm"):
            with self.subTest(norm=norm):
                se = self.assert_bad(self.save_raw("%s.pth.tar" % norm,
                                                   self.state(opt=sc.make_opt(self.V, raw_feature_norm=norm))),
                                     "opt.raw_feature_norm = '%s' is unsupported" % norm)
                self.assertIn("crashes", se)
        self.assert_bad(self.save_raw("weird.pth.tar", self.state(opt=sc.make_opt(self.V, raw_feature_norm="foo"))),
                        "opt.raw_feature_norm = 'foo' is not supported")
        self.assert_bad(self.save_raw("agg.pth.tar", self.state(opt=sc.make_opt(self.V, agg_func="Median"))),
                        "opt.agg_func = 'Median' is not supported")
        self.assert_bad(self.save_raw("xattn.pth.tar", self.state(opt=sc.make_opt(self.V, cross_attn="both"))),
                        "opt.cross_attn = 'both' is not supported")
        self.assert_bad(self.save_raw("lam.pth.tar", self.state(opt=sc.make_opt(self.V, lambda_softmax=0.0))),
                        "opt.lambda_softmax = 0.0 must be positive")

    def test_not_a_scan_opt(self):
        opt = sc.make_opt(self.V)
        for k in ("cross_attn", "agg_func", "lambda_softmax", "lambda_lse", "raw_feature_norm"):
            delattr(opt, k)
        self.assert_bad(self.save_raw("vsepp.pth.tar", self.state(opt=opt)),
                        "opt has none of SCAN's attention fields")

    def test_non_finite_tensor(self):
        img = collections.OrderedDict(self.img)
        w = img["fc.weight"].clone()
        w[0, 0] = float("nan")
        img["fc.weight"] = w
        self.assert_bad(self.save_raw("nan.pth.tar", self.state(model=[img, self.txt])),
                        "img_enc fc.weight contains NaN or Inf")


class SubprocessTest(ConverterTestBase):
    """The real command line: exit codes, one stderr line, no traceback, printed summary."""

    def run_tool(self, *args):
        return subprocess.run([PYTHON, TOOL] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=120)

    def test_cli(self):
        p, opt, img, txt = self.make("cli.pth.tar", seed=8, precomp_enc_type="weight_norm")
        out = self.path("m_cli")
        r = self.run_tool(p, "--vocab", self.vocab_path, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("converted", r.stdout)
        self.assertIn("weight_norm", r.stdout)
        self.assertTrue(os.path.isfile(os.path.join(out, "weights.safetensors")))

        txt2 = collections.OrderedDict(txt)
        txt2["rnn.weight_ih_l0"] = torch.zeros(3 * opt.embed_size, 7)
        bad = self.path("cli_bad.pth.tar")
        sc.save_checkpoint(bad, opt, img, txt2)
        trunc = self.path("cli_trunc.pth.tar")
        with open(p, "rb") as f, open(trunc, "wb") as g:
            g.write(f.read()[:1000])
        for ck, sub in ((self.path("missing.pth.tar"), "checkpoint not found"),
                        (trunc, "not a readable torch checkpoint"),
                        (bad, "txt_enc rnn.weight_ih_l0 has shape (%d, 7), expected (%d, %d)"
                         % (3 * opt.embed_size, 3 * opt.embed_size, opt.word_dim))):
            with self.subTest(checkpoint=os.path.basename(ck)):
                o = self.path("m_cli_bad")
                r = self.run_tool(ck, "--vocab", self.vocab_path, "--out", o)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertNotIn("Traceback", r.stderr)
                self.assertIn(sub, r.stderr)
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
                self.assertFalse(os.path.exists(o))


if __name__ == "__main__":
    if not os.path.exists(TOOL):
        print("FAIL: converter not found at %s" % TOOL)
        sys.exit(1)
    prog = unittest.main(exit=False, verbosity=2)
    sys.exit(0 if prog.result.wasSuccessful() else 1)
