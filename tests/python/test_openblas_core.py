"""The restart with better OpenBLAS kernels (engine/common/openblas_core.h), seen through scan_bench:
where OpenBLAS falls back to its pre-AVX2 kernels (0.3.21 on CPUs newer than it) on a CPU with AVX2
or AVX-512, the program says so once on stderr and runs again with OPENBLAS_CORETYPE set; an
OPENBLAS_CORETYPE of the user's, even empty, is kept, and the restarted process does not restart.
OpenBLAS's own choice and the final one are read from OPENBLAS_VERBOSE=2's "Core: NAME" lines (one
per process) and the core in the OpenBLAS configuration that scan_bench prints."""
import os
import re
import subprocess
import sys
import unittest

SOURCE_DIR = os.environ.get("SCANSERVE_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
BUILD_DIR = os.environ.get("SCANSERVE_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
SCAN_BENCH = os.path.join(BUILD_DIR, "engine", "scan_bench")
TINY_RUN = ["--images=20", "--queries=2", "--batch=1", "--storage=fp32", "--ref_queries=0", "--reps=1",
            "--threads=1"]
MARKER = "SCANSERVE_OPENBLAS_REEXEC"
MODERN_CORES = {"haswell", "zen", "skylakex", "cooperlake", "sapphirerapids"}
RESTART = re.compile(r"^scan_bench: OpenBLAS chose its (\w+) kernels for a CPU with [\w-]+; "
                     r"restarting with OPENBLAS_CORETYPE=(\w+) ", re.M)


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = cpu_flags()
HAS_AVX2_FMA = {"avx2", "fma"} <= FLAGS
HAS_AVX512 = HAS_AVX2_FMA and {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"} <= FLAGS


class Run:
    """One scan_bench run: its output (stdout and stderr), the cores OpenBLAS reported per process,
    and the core in the configuration it printed."""

    def __init__(self, **env_changes):
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", MARKER)}
        env["OPENBLAS_VERBOSE"] = "2"
        env.update(env_changes)
        r = subprocess.run([SCAN_BENCH] + TINY_RUN, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
        self.output = r.stdout
        assert r.returncode == 0, self.output
        self.verbose_cores = re.findall(r"^Core: (\w+)", self.output, re.M)
        self.restarts = RESTART.findall(self.output)
        config = re.search(r"OpenBLAS \d\S* (.*)", self.output)
        self.config = config.group(1) if config else ""
        words = self.config.split()
        ends = [i for i, w in enumerate(words) if w.startswith("MAX_THREADS") or w == "SINGLE_THREADED"]
        self.config_core = words[ends[0] - 1] if ends and ends[0] > 0 else ""


class OpenBlasCoreTest(unittest.TestCase):
    def test_unset_runs_kernels_the_cpu_has(self):
        run = Run()
        self.assertTrue(run.verbose_cores, run.output)
        openblas_choice = run.verbose_cores[0]
        if openblas_choice.lower() in MODERN_CORES:  # OpenBLAS knows this CPU: nothing to do
            self.assertEqual(run.restarts, [], run.output)
            self.assertEqual(run.verbose_cores, [openblas_choice], run.output)
            self.assertEqual(run.config_core, openblas_choice, run.output)
            return
        expected = "SkylakeX" if HAS_AVX512 else "Haswell"
        self.assertEqual(run.restarts, [(openblas_choice, expected)], run.output)
        self.assertEqual(run.verbose_cores, [openblas_choice, expected], run.output)
        self.assertEqual(run.config_core, expected, run.output)

    def test_user_choice_is_kept(self):
        run = Run(OPENBLAS_CORETYPE="Prescott")
        self.assertEqual(run.restarts, [], run.output)
        self.assertEqual(run.verbose_cores, ["Prescott"], run.output)
        self.assertEqual(run.config_core, "Prescott", run.output)

    def test_empty_user_choice_is_kept(self):
        run = Run(OPENBLAS_CORETYPE="")
        self.assertEqual(run.restarts, [], run.output)
        self.assertEqual(len(run.verbose_cores), 1, run.output)

    def test_restarted_process_does_not_restart(self):
        run = Run(**{MARKER: "Prescott"})
        self.assertEqual(run.restarts, [], run.output)
        self.assertEqual(len(run.verbose_cores), 1, run.output)
        self.assertEqual(run.config_core, run.verbose_cores[0], run.output)


if __name__ == "__main__":
    if not os.path.isfile(SCAN_BENCH):
        print("skipped: scan_bench is not built (expected %s)" % SCAN_BENCH)
        sys.exit(77)
    if not HAS_AVX2_FMA:
        print("skipped: this CPU has no AVX2+FMA (/proc/cpuinfo), so no kernels better than OpenBLAS's choice")
        sys.exit(77)
    probe = Run(**{MARKER: "probe"})
    if "DYNAMIC_ARCH" not in probe.config or not probe.config_core:
        print("skipped: scan_bench's BLAS is not a DYNAMIC_ARCH OpenBLAS (%r)" % probe.config)
        sys.exit(77)
    unittest.main()
