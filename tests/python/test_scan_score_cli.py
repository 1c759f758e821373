"""scan_score's and scan_eval's command lines: a bad call or input exits 2 with a message naming the
flag or file at fault, before any scoring (an output directory that does not exist is found before the
models load); a good call writes the matrix or the metrics, with --threads applied. The models are
tiny random ones from tools/make_random_scan_model.py; their scores are not checked here
(test_engine_parity does that)."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

SOURCE_DIR = os.environ.get("SCANSERVE_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
BUILD_DIR = os.environ.get("SCANSERVE_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
SCAN_SCORE = os.path.join(BUILD_DIR, "engine", "scan_score")
SCAN_EVAL = os.path.join(BUILD_DIR, "engine", "scan_eval")
IMG_DIM = 2048  # make_random_scan_model.py's
CAPTIONS = ["a man riding a bike", "two dogs on the grass", "a red car", "people near a building",
            "a child with a ball", "a woman wearing a hat", "the beach", "a cat under a table",
            "snow in the city", "an old tree"]


def run(exe, *args):
    return subprocess.run([exe] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300)


class ToolsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.tmp.name
        cls.model = os.path.join(d, "model")
        subprocess.run([sys.executable, os.path.join(SOURCE_DIR, "tools", "make_random_scan_model.py"), cls.model,
                        "--vocab-size", "200", "--embed-size", "32", "--seed", "3"], check=True,
                       stdout=subprocess.DEVNULL)
        rng = np.random.default_rng(0)
        # scan_score's inputs: 3 images of 2, 3 and 4 regions, stacked.
        cls.regions = os.path.join(d, "regions.npy")
        np.save(cls.regions, rng.random((9, IMG_DIM), dtype=np.float32))
        cls.counts = os.path.join(d, "counts.npy")
        np.save(cls.counts, np.array([2, 3, 4], np.int64))
        cls.narrow = os.path.join(d, "narrow.npy")
        np.save(cls.narrow, rng.random((9, 16), dtype=np.float32))
        cls.bad_counts = os.path.join(d, "bad_counts.npy")
        np.save(cls.bad_counts, np.array([2, 3, 5], np.int64))
        cls.captions = os.path.join(d, "captions.txt")
        with open(cls.captions, "w") as f:
            f.write("\n".join(CAPTIONS[:4]) + "\n")
        # scan_eval's split: 2 images of 5 regions, 5 captions each.
        cls.data = os.path.join(d, "data")
        os.makedirs(cls.data)
        np.save(os.path.join(cls.data, "test_ims.npy"), rng.random((2, 5, IMG_DIM), dtype=np.float32))
        with open(os.path.join(cls.data, "test_caps.txt"), "w") as f:
            f.write("\n".join(CAPTIONS) + "\n")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def assert_refused(self, exe, args, message):
        """`exe args` exits 2, its stderr naming the tool and saying `message`."""
        r = run(exe, *args)
        self.assertEqual(r.returncode, 2, (args, r.stderr))
        self.assertIn(os.path.basename(exe) + ": ", r.stderr)
        self.assertIn(message, r.stderr, args)

    def score_args(self, **over):
        args = {"--model": self.model, "--regions": self.regions, "--region-counts": self.counts,
                "--captions": self.captions, "--out": os.path.join(self.tmp.name, "sims.npy")}
        args.update(over)
        return [w for k, v in args.items() if v is not None for w in (k, v)]

    def test_scan_score_refuses_bad_calls_naming_the_cause(self):
        missing_dir = os.path.join(self.tmp.name, "no_such_dir")
        for extra, message in [
                (self.score_args(**{"--threads": "-1"}), "--threads: expected a non-negative integer, got '-1'"),
                (self.score_args(**{"--threads": "x"}), "--threads: expected a non-negative integer, got 'x'"),
                (self.score_args(**{"--backend": "tpu"}), "--backend: expected"),
                (self.score_args(**{"--storage": "int4"}), "--storage: expected"),
                (self.score_args(**{"--stored": "both"}), "--stored: expected images or captions, got 'both'"),
                (self.score_args(**{"--model": None}), "--model is required"),
                (self.score_args(**{"--out": None}), "--out is required"),
                (self.score_args(**{"--out": os.path.join(missing_dir, "s.npy")}),
                 "--out: the directory %s of %s does not exist" % (missing_dir, os.path.join(missing_dir, "s.npy"))),
                # Found before the models load: the model directory is missing too.
                (self.score_args(**{"--out": os.path.join(missing_dir, "s.npy"), "--model": missing_dir}),
                 "--out: the directory %s" % missing_dir),
                (self.score_args(**{"--region-counts": self.bad_counts}), "the counts sum to more than the 9 rows"),
                (self.score_args(**{"--model": missing_dir}), missing_dir),
                (self.score_args(**{"--regions": self.narrow}),
                 "holds 16-d region features; the model in %s expects 2048-d" % self.model),
        ]:
            self.assert_refused(SCAN_SCORE, extra, message)

    def test_scan_score_writes_the_matrix(self):
        out = os.path.join(self.tmp.name, "ok.npy")
        # The model twice: an ensemble of two.
        r = run(SCAN_SCORE, *self.score_args(**{"--out": out, "--threads": "1"}), "--model", self.model)
        self.assertEqual(r.returncode, 0, r.stderr)
        sims = np.load(out)
        self.assertEqual(sims.shape, (3, 4))
        self.assertTrue(np.isfinite(sims).all())
        self.assertGreater(np.ptp(sims), 0, "every pair scored the same")

    def test_scan_eval_refuses_bad_calls_naming_the_cause(self):
        missing = os.path.join(self.tmp.name, "no_such_dir", "sims.npy")
        base = ["--model", self.model, "--data-dir", self.data]
        for extra, message in [
                (base + ["--threads=-2"], "--threads: expected a non-negative integer, got '-2'"),
                (base + ["--fold-images", "0"], "--fold-images: expected a positive integer, got '0'"),
                (base + ["--save-sims", missing], "--save-sims: the directory %s of %s does not exist" % (
                    os.path.dirname(missing), missing)),
                # Found before the models load: the model directory is missing too.
                (["--model", missing, "--data-dir", self.data, "--save-sims", missing],
                 "--save-sims: the directory %s" % os.path.dirname(missing)),
                (base + ["--fold5"], "--fold5 needs exactly 5 x 1000 = 5000 images; split 'test' has 2"),
                (base + ["--split", "val"], "val"),
                (["--model", self.model], "--data-dir is required"),
        ]:
            self.assert_refused(SCAN_EVAL, extra, message)

    def test_scan_eval_reports_the_metrics(self):
        sims_path = os.path.join(self.tmp.name, "eval_sims.npy")
        r = run(SCAN_EVAL, "--model", self.model, "--data-dir", self.data, "--threads", "1", "--json",
                "--save-sims", sims_path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("model 1: %s" % self.model, r.stdout)
        got = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual((got["n_images"], got["n_captions"], got["threads"]), (2, 10, 1))
        self.assertEqual(np.load(sims_path).shape, (2, 10))
        for side in ("i2t", "t2i"):
            self.assertTrue(0 <= got[side]["r1"] <= got[side]["r5"] <= got[side]["r10"] <= 100, got)


if __name__ == "__main__":
    for exe in (SCAN_SCORE, SCAN_EVAL):
        if not os.path.isfile(exe):
            print("skipped: %s is not built" % exe)
            sys.exit(77)
    unittest.main()
