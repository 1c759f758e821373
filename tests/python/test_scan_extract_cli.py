"""scan_extract's command line: bad arguments exit 2 naming the flag, before any detector loads;
--resume skips ids already in the output and cuts off a torn last line (an earlier run killed
mid-write) before appending. The resume test uses random weights from tools/make_random_detector.py
and only images that are already done, so the network never runs."""
import os
import subprocess
import sys
import tempfile
import unittest

SOURCE_DIR = os.environ.get("SCANSERVE_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
BUILD_DIR = os.environ.get("SCANSERVE_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
SCAN_EXTRACT = os.path.join(BUILD_DIR, "engine", "scan_extract")

# Smallest valid PNG (1x1 grey): scan_extract only lists the files, the ids come from their names.
PNG_1X1 = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010800000000"
                        "3a7e9b550000000a49444154789c63600000000200015e2e2d3b0000000049454e44ae426082")


def run_extract(*args):
    return subprocess.run([SCAN_EXTRACT] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)


class ArgumentsTest(unittest.TestCase):
    def test_bad_arguments_exit_2_naming_the_flag(self):
        for args, message in [
                (["--detector", "d", "--conf-thresh", "1.5"], "--conf-thresh needs a number in [0, 1]"),
                (["--detector", "d", "--conf-thresh=nan"], "--conf-thresh needs a number in [0, 1]"),
                (["--detector", "d", "--batch", "0"], "--batch needs an integer >= 1"),
                (["--detector", "d", "--max-boxes=x"], "--max-boxes needs an integer >= 1"),
                (["--detector", "d", "--layout", "csv"], "--layout is lxmert or generate_tsv"),
                (["--detector", "d", "--precision", "fp16"], "--precision: "),
                (["--detector", "d", "--bogus", "x.jpg"], "unknown argument '--bogus'"),
                (["--detector", "d", "--resume=yes"], "--resume takes no value"),
                (["--detector"], "--detector needs a value"),
                (["--out=o.tsv", "x.jpg"], "--detector is required"),
                (["--detector=d", "x.jpg"], "--out is required"),
                (["--detector", "d", "--out", "o.tsv"], "no images given"),
        ]:
            r = run_extract(*args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn("scan_extract: " + message, r.stderr, args)

    def test_help_goes_to_stdout(self):
        r = run_extract("--detector", "d", "--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Usage: scan_extract", r.stdout)


class ResumeTest(unittest.TestCase):
    def test_skips_done_ids_and_cuts_a_torn_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            detector = os.path.join(tmp, "detector")
            subprocess.run([sys.executable, os.path.join(SOURCE_DIR, "tools", "make_random_detector.py"),
                            detector], check=True, stdout=subprocess.DEVNULL)
            images = os.path.join(tmp, "images")
            os.makedirs(images)
            for name in ("a", "b"):
                with open(os.path.join(images, name + ".png"), "wb") as f:
                    f.write(PNG_1X1)
            out = os.path.join(tmp, "out.tsv")
            done = "a\t480\t640\t1\tAAAA\tBBBB\nb\t480\t640\t1\tCCCC\tDDDD\n"
            with open(out, "w") as f:
                f.write(done + "c\t480\t64")  # killed while writing c
            r = subprocess.run([SCAN_EXTRACT, "--detector", detector, "--out", out, "--resume", "--quiet",
                                images], stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("2 skipped as done", r.stderr)
            self.assertIn("0 images in", r.stderr)
            with open(out) as f:
                self.assertEqual(f.read(), done)


if __name__ == "__main__":
    if not os.path.isfile(SCAN_EXTRACT):
        print("skipped: scan_extract is not built (expected %s)" % SCAN_EXTRACT)
        sys.exit(77)
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("skipped: numpy is missing")
        sys.exit(77)
    unittest.main()
