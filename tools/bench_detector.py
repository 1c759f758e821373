#!/usr/bin/python3
"""Detector speed, same run: scan_extract (the LibTorch C++ port) against the independent PyTorch
reference of the same network (tests/python/bottom_up_reference.py) on the same images and threads.

  /usr/bin/python3 tools/bench_detector.py [--build build] [--images DIR_OR_FILES...] [--threads 2]
      [--detector DIR] [--batch 2] [--precision fp32 bf16] [--skip-reference]

Without --detector it builds (and caches under BUILD/test-detector/) a random-weight detector in the
converted format: the speed of the network does not depend on the weights' values, except through
the number of proposals, which is 300 on real photos either way. Without --images it uses the 10
COCO images of ../shared/data/bottom-up-golden/images. --precision times scan_extract in each
listed precision (fp32 is the original's arithmetic; bf16 is opt-in). Prints a Markdown table.
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--images", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--detector")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args()

    os.environ.setdefault("SCANSERVE_BUILD_DIR", os.path.abspath(args.build))
    import torch
    import bottom_up_checkpoints
    import bottom_up_reference

    detector = args.detector or bottom_up_checkpoints.make_detector_dir(seed=0, boxes="36")
    images = []
    for spec in args.images or [os.path.join(ROOT, "..", "shared", "data", "bottom-up-golden", "images")]:
        images += sorted(glob.glob(os.path.join(spec, "*.jpg"))) if os.path.isdir(spec) else [spec]
    if not images:
        sys.exit("bench_detector: no images")
    extract = os.path.join(args.build, "engine", "scan_extract")

    cpp_seconds = {}
    for precision in args.precision:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [extract, "--detector", detector, "--out", os.path.join(tmp, "out.tsv"), "--threads",
                   str(args.threads), "--batch", str(args.batch), "--device", args.device,
                   "--precision", precision, "--quiet"] + images
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit("bench_detector: scan_extract failed:\n" + proc.stderr)
            # "scan_extract: N images in X.Xs (...)": the timed loop, after the weights are loaded.
            m = re.search(r"(\d+) images in ([0-9.]+)s", proc.stderr)
            cpp_seconds[precision] = float(m.group(2))

    ref_seconds = None
    if not args.skip_reference:
        torch.set_num_threads(args.threads)
        ref = bottom_up_reference.BottomUpReference(detector)
        ref.run_file(images[0])  # warm-up (allocator, oneDNN primitives), not timed
        start = time.time()
        for path in images:
            ref.run_file(path)
        ref_seconds = time.time() - start

    n = len(images)
    print("| implementation | images | threads | seconds | images/s | s/image |")
    print("|---|---|---|---|---|---|")
    for precision, seconds in cpp_seconds.items():
        print("| scan_extract (LibTorch C++, batch %d, %s, %s) | %d | %d | %.1f | %.3f | %.2f |"
              % (args.batch, args.device, precision, n, args.threads, seconds, n / seconds, seconds / n))
    if ref_seconds is not None:
        print("| PyTorch reference (tests/python/bottom_up_reference.py) | %d | %d | %.1f | %.3f | %.2f |"
              % (n, args.threads, ref_seconds, n / ref_seconds, ref_seconds / n))
        for precision, seconds in cpp_seconds.items():
            print("\nsame-run speed-up of scan_extract (%s) over the reference: %.2fx"
                  % (precision, ref_seconds / seconds))


if __name__ == "__main__":
    main()
