"""The benchmark tools' flags (scan_bench, scan_bench_encoder, engine/tools/bench_util.h's
FlagParser): a bad flag exits 2 before any work, naming the tool, the flag and the reason, then the
tool's flag list; a table is never printed for a configuration nobody asked for."""
import os
import subprocess
import unittest

SOURCE_DIR = os.environ.get("SCANSERVE_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
BUILD_DIR = os.environ.get("SCANSERVE_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
SCAN_BENCH = os.path.join(BUILD_DIR, "engine", "scan_bench")
SCAN_BENCH_ENCODER = os.path.join(BUILD_DIR, "engine", "scan_bench_encoder")


class BenchFlagsTest(unittest.TestCase):
    def assert_refused(self, exe, args, message):
        if not os.path.exists(exe):
            self.skipTest(exe + " is not built")
        r = subprocess.run([exe] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 2, (args, r.stderr))
        self.assertEqual(r.stdout, "", args)  # no table, not even its header
        lines = r.stderr.splitlines()
        self.assertEqual(lines[0], os.path.basename(exe) + ": " + message, args)
        self.assertTrue(lines[1].startswith("flags: --"), r.stderr)

    def test_scan_bench_refuses_bad_flags(self):
        for args, message in [
                (["--batch=1,x"], "--batch: not an integer: 'x'"),
                (["--batch=4,0"], "--batch: values >= 1"),
                (["--images=-5"], "--images: values >= 1"),
                (["--images=100,200"], "--images: one value for the cpu backend"),
                (["--streaming_rows=-1"], "--streaming_rows: values >= 0"),
                (["--ref_blas_threads=0,-2"], "--ref_blas_threads: values >= 0"),
                (["--queries=ten"], "--queries: not an integer: 'ten'"),
                (["--images"], "expected --name=value, got '--images'"),
                (["images=5"], "expected --name=value, got 'images=5'"),
                (["--imagez=5"], "unknown flag --imagez"),
                (["--backend=tpu"], "--backend: cpu or cuda, got 'tpu'"),
                (["--product_mb=64"], "--product_mb: cuda backend only"),
                (["--backend=cuda", "--product_mb=0"], "--product_mb: values >= 1"),
                (["--kernels=fast"], "--kernels: gemm, gemm-serial, fused, fused-1, fused-s2 and/or auto"),
                (["--storage=int4"], "--storage: expected fp32, bf16 or fp8, got 'int4'"),
                (["--words=0"], "--words: expected a number >= 1"),
                (["--help"], "help")]:
            self.assert_refused(SCAN_BENCH, args, message)

    def test_scan_bench_encoder_refuses_bad_flags(self):
        for args, message in [
                (["--model=m", "--batch=1,x"], "--batch: not an integer: 'x'"),
                (["--model=m", "--batch=0"], "--batch: values >= 1"),
                (["--model=m", "--openmp=1,-1"], "--openmp: values >= 0"),
                (["--model=m", "--device=gpu"], "--device: cpu, cuda or cuda:N, got 'gpu'"),
                (["--model=m", "--device=cuda:-1"], "--device: cpu, cuda or cuda:N, got 'cuda:-1'"),
                (["--model=m", "--seed"], "expected --name=value, got '--seed'"),
                (["--model=m", "--batches=4"], "unknown flag --batches"),
                (["--batch=4"], "--model is required"),
                (["--model=m", "--words_min=9", "--words_max=3"],
                 "--queries, --reps and --words_min must be >= 1, words_min <= words_max, threads >= 0")]:
            self.assert_refused(SCAN_BENCH_ENCODER, args, message)


if __name__ == "__main__":
    unittest.main()
