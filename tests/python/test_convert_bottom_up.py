"""Tests of tools/convert_bottom_up_caffemodel.py (bottom-up-attention .caffemodel -> detector directory).

    SCANSERVE_BUILD_DIR=build SCANSERVE_SOURCE_DIR=/work/main /usr/bin/python3 tests/python/test_convert_bottom_up.py

The round trip uses the full-size synthetic caffemodel of bottom_up_checkpoints.py (262 MB, cached under
$SCANSERVE_BUILD_DIR/test-detector/; ~30 s to generate the first time, ~12 s per conversion): the folded
tensors must equal a direct float64 computation from the raw Caffe blobs, read back with an independent
safetensors reader. Error cases use small NetParameters (correct shapes, no data) built through the same
proto. Exit 77 (skip) when numpy/torch/protobuf/grpc_tools are missing.
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

try:
    import numpy as np
    import torch  # noqa: F401  (bottom_up_checkpoints calibrates through torch)
    import torchvision  # noqa: F401
    import google.protobuf  # noqa: F401
    import cv2  # noqa: F401
except ImportError as e:  # pragma: no cover
    print("SKIP: missing dependency: %s (run with /usr/bin/python3)" % e)
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bottom_up_checkpoints as bc  # noqa: E402
from tool_modules import load_tool, tool_path  # noqa: E402
from safetensors_reader import read_safetensors  # noqa: E402

TOOL = tool_path("convert_bottom_up_caffemodel")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
PROG = "convert_bottom_up_caffemodel"


def parse_layers(path):
    """The raw Caffe blobs of a caffemodel: {name: (type, [arrays])}, via the test-side compiled proto."""
    pb = bc.caffe_pb2()
    net = pb.NetParameter()
    with open(path, "rb") as f:
        net.ParseFromString(f.read())
    out = {}
    for l in net.layer:
        if len(l.blobs):
            out[l.name] = (l.type, [np.fromiter(b.data, np.float32, len(b.data)).reshape(tuple(b.shape.dim))
                                    for b in l.blobs])
    return out


def shape_only_layers(drop=(), reshape=None, extra=None):
    """{name: (type, [zero-size placeholders])}: every layer, correct shapes, no values (error tests)."""
    tool = load_tool(PROG)
    layers = collections.OrderedDict()
    for name, (ltype, shapes) in tool.expected_layers().items():
        if name in drop:
            continue
        shapes = list(shapes)
        if reshape and name in reshape:
            shapes = reshape[name]
        layers[name] = (ltype, shapes)
    if extra:
        layers.update(extra)
    return layers


def write_shape_only(path, layers, v1=False):
    """NetParameter whose blobs carry shapes but no data."""
    pb = bc.caffe_pb2()
    net = pb.NetParameter()
    net.name = "shape-only"
    for name, (ltype, shapes) in layers.items():
        l = net.layers.add() if v1 else net.layer.add()
        l.name = name
        if v1:
            l.type = {"Convolution": 4, "InnerProduct": 14}.get(ltype, 0)
        else:
            l.type = ltype
        for s in shapes:
            b = l.blobs.add()
            if v1:
                s4 = (1,) * (4 - len(s)) + tuple(s)
                b.num, b.channels, b.height, b.width = s4
            else:
                b.shape.dim.extend(s)
    with open(path, "wb") as f:
        f.write(net.SerializeToString())
    return path


class Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tool = load_tool(PROG)
        cls.tmp = tempfile.mkdtemp(prefix="bottom_up_convert_test_")
        cls.vocab = bc.write_synthetic_vocab(os.path.join(cls.tmp, "vocab"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def convert(self, model, out, vocab=None, extra=()):
        argv = [model, "--vocab-dir", vocab or self.vocab, "--out", out] + list(extra)
        so, se = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
            try:
                rc = self.tool.main(argv)
            except SystemExit as e:
                rc = e.code
        return rc, so.getvalue(), se.getvalue()

    def assert_bad(self, model, substrings, vocab=None):
        out = self.path("out_bad")
        before = set(os.listdir(self.tmp))
        rc, so, se = self.convert(model, out, vocab=vocab)
        self.assertEqual(rc, 2, "exit code for bad input (stderr: %r)" % se)
        self.assertNotIn("Traceback", se + so)
        lines = [l for l in se.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, "one-line error expected, got %r" % se)
        self.assertTrue(lines[0].startswith(PROG + ": error: "), lines[0])
        for s in ([substrings] if isinstance(substrings, str) else substrings):
            self.assertIn(s, lines[0])
        self.assertFalse(os.path.exists(out), "failed conversion left %s" % out)
        self.assertEqual(set(os.listdir(self.tmp)), before, "failed conversion left temporary files")
        return lines[0]


class RoundTripTest(Base):
    """Full-size synthetic caffemodel -> detector dir; folded values checked against float64 folding."""

    def test_round_trip_full_size(self):
        model = bc.synthetic_caffemodel(0, log=print)
        raw = parse_layers(model)
        out = self.path("det")
        rc, so, se = self.convert(model, out, extra=["--boxes", "10-100"])
        self.assertEqual(rc, 0, se)
        self.assertEqual(se, "")
        tensors, header, n = read_safetensors(os.path.join(out, "weights.safetensors"))
        self.assertEqual(n % 8, 0, "header length must be a multiple of 8")
        names = [k for k in header if k != "__metadata__"]
        self.assertEqual(names, sorted(names), "tensors must be stored in sorted name order")
        expected = bc.fold_reference(raw)
        self.assertEqual(sorted(tensors), sorted(expected))
        self.assertNotIn("bbox_pred.weight", tensors)
        self.assertEqual(len(tensors), 2 * 104 + 3 * 2 + 2 + 1 + 2 + 2)
        # shapes from docs/detector-format.md
        self.assertEqual(tensors["conv1.weight"].shape, (64, 3, 7, 7))
        self.assertEqual(tensors["res2a_branch1.weight"].shape, (256, 64, 1, 1))
        self.assertEqual(tensors["res3a_branch2a.weight"].shape, (128, 256, 1, 1))
        self.assertEqual(tensors["res4b22_branch2b.weight"].shape, (256, 256, 3, 3))
        self.assertEqual(tensors["res5a_branch1.weight"].shape, (2048, 1024, 1, 1))
        self.assertEqual(tensors["res5c_branch2c.bias"].shape, (2048,))
        self.assertEqual(tensors["rpn_conv_3x3.weight"].shape, (512, 1024, 3, 3))
        self.assertEqual(tensors["rpn_cls_score.weight"].shape, (24, 512, 1, 1))
        self.assertEqual(tensors["rpn_bbox_pred.bias"].shape, (48,))
        self.assertEqual(tensors["cls_score.weight"].shape, (1601, 2048))
        self.assertEqual(tensors["cls_embedding.weight"].shape, (1601, 256))
        self.assertEqual(tensors["fc_attr.weight"].shape, (512, 2304))
        self.assertEqual(tensors["attr_score.weight"].shape, (401, 512))
        self.assertEqual(sum(t.size for t in tensors.values()), 52279706)
        for k, v in expected.items():
            self.assertEqual(tensors[k].shape, v.shape, k)
            # float64 folding rounded once to float32: equal up to the last-bit rounding of the
            # product/sqrt order (at most 1 ulp)
            np.testing.assert_array_max_ulp(tensors[k], v, maxulp=1)
        # one BN spot check written out by hand (moving-average factor applied)
        mean, var, f = raw["bn4b3_branch2b"][1]
        gamma, beta = raw["scale4b3_branch2b"][1]
        W = raw["res4b3_branch2b"][1][0]
        a = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) / float(f[0]) + 1e-5)
        np.testing.assert_allclose(tensors["res4b3_branch2b.weight"], W * a[:, None, None, None], rtol=1e-6)
        np.testing.assert_allclose(tensors["res4b3_branch2b.bias"], beta - mean / float(f[0]) * a,
                                   rtol=1e-5, atol=1e-6)
        self.assertNotEqual(float(f[0]), 1.0, "the synthetic factor should not be 1")
        with open(os.path.join(out, "detector.json")) as fj:
            cfg = json.load(fj)
        self.assertEqual(cfg["format"], "scanserve.bottom_up_detector")
        self.assertEqual(cfg["format_version"], 1)
        self.assertEqual((cfg["num_classes"], cfg["num_attributes"]), (1601, 401))
        self.assertEqual((cfg["min_boxes"], cfg["max_boxes"]), (10, 100))
        self.assertEqual(cfg["conf_threshold"], 0.2)
        self.assertEqual(cfg["source"]["caffemodel"], os.path.basename(model))
        self.assertEqual(cfg["source"]["bytes"], os.path.getsize(model))
        self.assertEqual(len(cfg["source"]["sha256"]), 64)
        for fname in ("objects_vocab.txt", "attributes_vocab.txt"):
            with open(os.path.join(out, fname), "rb") as a, open(os.path.join(self.vocab, fname), "rb") as b:
                self.assertEqual(a.read(), b.read(), fname)
        self.assertEqual(sorted(os.listdir(out)),
                         ["attributes_vocab.txt", "detector.json", "objects_vocab.txt", "weights.safetensors"])
        # existing output: refused without --force, replaced with it
        rc, _, se = self.convert(model, out)
        self.assertEqual(rc, 2)
        self.assertIn("already exists", se)

    def test_cached_detector_dir(self):
        d = bc.make_detector_dir(seed=0, boxes="36", log=print)
        with open(os.path.join(d, "detector.json")) as f:
            cfg = json.load(f)
        self.assertEqual((cfg["min_boxes"], cfg["max_boxes"]), (36, 36))
        self.assertTrue(os.path.isfile(os.path.join(d, "weights.safetensors")))


class ErrorTest(Base):
    def test_missing_file(self):
        self.assert_bad(self.path("nope.caffemodel"), "caffemodel not found")

    def test_missing_vocab_dir(self):
        p = write_shape_only(self.path("m0.caffemodel"), shape_only_layers())
        self.assert_bad(p, "vocabulary directory not found", vocab=self.path("novocab"))

    def test_truncated(self):
        p = write_shape_only(self.path("full.caffemodel"), shape_only_layers())
        with open(p, "rb") as f:
            data = f.read()
        t = self.path("trunc.caffemodel")
        with open(t, "wb") as f:
            f.write(data[:-5])  # inside the last layer's last blob message
        self.assert_bad(t, ["not a Caffe .caffemodel or is truncated"])
        with open(t, "wb") as f:
            f.write(data[:len(data) // 2])  # may end on a layer boundary: then layers are missing
        self.assert_bad(t, ["truncated"])
        os.remove(t)
        os.remove(p)

    def test_truncated_real_size(self):
        model = bc.synthetic_caffemodel(0)
        t = self.path("trunc_big.caffemodel")
        with open(model, "rb") as f, open(t, "wb") as g:
            g.write(f.read(50 * 1000 * 1000 + 7))
        self.assert_bad(t, "truncated")
        os.remove(t)

    def test_garbage(self):
        g = self.path("garbage.caffemodel")
        rng = np.random.default_rng(5)
        with open(g, "wb") as f:
            f.write(rng.integers(0, 256, 100000, dtype=np.uint8).tobytes())
        self.assert_bad(g, "not a Caffe .caffemodel")
        os.remove(g)

    def test_empty_file(self):
        e = self.path("empty.caffemodel")
        open(e, "wb").close()
        self.assert_bad(e, "holds no layers")
        os.remove(e)

    def test_text_file(self):
        e = self.path("test.prototxt")
        with open(e, "w") as f:
            f.write('name: "ResNet-101"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n}\n')
        self.assert_bad(e, "not a Caffe .caffemodel")
        os.remove(e)

    def test_wrong_shape(self):
        p = write_shape_only(self.path("shape.caffemodel"),
                             shape_only_layers(reshape={"res4b5_branch2b": [(256, 256, 3, 1)]}))
        self.assert_bad(p, ["res4b5_branch2b", "256x256x3x1", "expected 256x256x3x3"])
        os.remove(p)

    def test_wrong_shape_fc(self):
        p = write_shape_only(self.path("shape2.caffemodel"),
                             shape_only_layers(reshape={"cls_score": [(1600, 2048), (1600,)]}))
        self.assert_bad(p, ["cls_score", "1600x2048", "expected 1601x2048"])
        os.remove(p)

    def test_wrong_bbox_pred_shape(self):
        p = write_shape_only(self.path("shape3.caffemodel"),
                             shape_only_layers(reshape={"bbox_pred": [(6400, 2048), (6400,)]}))
        self.assert_bad(p, ["bbox_pred", "6400x2048", "expected 6404x2048"])
        os.remove(p)

    def test_missing_layer(self):
        p = write_shape_only(self.path("missing.caffemodel"), shape_only_layers(drop=("bn5c_branch2c",)))
        self.assert_bad(p, ["missing layer bn5c_branch2c"])
        os.remove(p)

    def test_missing_layer_legacy_v1(self):
        p = write_shape_only(self.path("v1.caffemodel"), shape_only_layers(drop=("attr_score",)), v1=True)
        self.assert_bad(p, ["missing layer attr_score"])
        os.remove(p)

    def test_wrong_blob_count(self):
        p = write_shape_only(self.path("count.caffemodel"),
                             shape_only_layers(reshape={"bn_conv1": [(64,), (64,)]}))
        self.assert_bad(p, ["bn_conv1", "2 blobs, expected 3"])
        os.remove(p)

    def test_wrong_type(self):
        p = write_shape_only(self.path("type.caffemodel"),
                             shape_only_layers(extra={"fc_attr": ("Convolution", [(512, 2304), (512,)])}))
        self.assert_bad(p, ["fc_attr", "type Convolution, expected InnerProduct"])
        os.remove(p)

    def test_unexpected_layer(self):
        p = write_shape_only(self.path("extra.caffemodel"),
                             shape_only_layers(extra={"fc6": ("InnerProduct", [(4096, 2048), (4096,)])}))
        self.assert_bad(p, ["unexpected layer with parameters: fc6"])
        os.remove(p)

    def test_no_values(self):
        p = write_shape_only(self.path("novalues.caffemodel"), shape_only_layers())
        self.assert_bad(p, ["blob 0 has 0 values", "needs"])
        os.remove(p)

    def test_wrong_vocab_length(self):
        p = write_shape_only(self.path("m1.caffemodel"), shape_only_layers())
        bad = bc.write_synthetic_vocab(self.path("badvocab"), n_objects=1599)
        line = self.assert_bad(p, ["objects_vocab.txt", "1599 lines, expected 1600"], vocab=bad)
        self.assertNotIn("Traceback", line)
        bad2 = bc.write_synthetic_vocab(self.path("badvocab2"), n_attributes=401)
        self.assert_bad(p, ["attributes_vocab.txt", "401 lines, expected 400"], vocab=bad2)
        shutil.rmtree(bad)
        shutil.rmtree(bad2)
        os.remove(p)

    def test_missing_vocab_file(self):
        p = write_shape_only(self.path("m2.caffemodel"), shape_only_layers())
        d = bc.write_synthetic_vocab(self.path("partvocab"))
        os.remove(os.path.join(d, "attributes_vocab.txt"))
        self.assert_bad(p, ["vocabulary file not found", "attributes_vocab.txt"], vocab=d)
        shutil.rmtree(d)
        os.remove(p)


class CommandLineTest(Base):
    def test_help(self):
        r = subprocess.run([PYTHON, TOOL, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True)
        self.assertEqual(r.returncode, 0)
        for s in ("--vocab-dir", "--out", "--boxes", "10-100", "caffemodel"):
            self.assertIn(s, r.stdout)

    def test_subprocess_exit_code(self):
        bad = self.path("garbage2.caffemodel")
        with open(bad, "wb") as f:
            f.write(b"\xff" * 64)
        r = subprocess.run([PYTHON, TOOL, bad, "--vocab-dir", self.vocab, "--out", self.path("o")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertTrue(r.stderr.startswith(PROG + ": error: "), r.stderr)
        os.remove(bad)

    def test_bad_boxes_argument(self):
        r = subprocess.run([PYTHON, TOOL, "x", "--vocab-dir", self.vocab, "--out", self.path("o"),
                            "--boxes", "50"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--boxes", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
