"""Bounded loopback load test of the real `scanserve` binary.

    SCANSERVE_BUILD_DIR=build /usr/bin/python3 tests/python/test_load.py

A tiny random SCAN model serves 200 stored images on a free loopback port. 32 client threads (one gRPC
channel each) send 500 single-caption SearchImages each (16,000 calls; SCANSERVE_LOAD_CALLS overrides the
500). Checked:
  * zero errors (every call OK, with top_k hits);
  * the dynamic batcher merged concurrent searches: scanserve_batch_size (scraped from /metrics) has
    sum > count, i.e. some engine call scored more than one query;
  * memory is flat: the server's VmRSS after the full run is < 25 % above its VmRSS after a warm-up
    round (32 x 20 calls).
Bounded: every call has a deadline, the whole run a wall-clock limit (RUN_LIMIT_S).
Skips (exit 77) when the build was configured with SCANSERVE_BUILD_SERVER=OFF.
"""

import os
import sys
import threading
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scanserve_harness as h  # noqa: E402

h.skip_if_server_disabled()
h.require_grpc()
import grpc  # noqa: E402

N_IMAGES = 200
N_THREADS = 32
CALLS_PER_THREAD = int(os.environ.get("SCANSERVE_LOAD_CALLS", "500"))
WARMUP_CALLS_PER_THREAD = 20
TOP_K = 10
RUN_LIMIT_S = 240          # the full run must finish within this
RSS_GROWTH_LIMIT = 0.25


class LoadTest(unittest.TestCase):

    def setUp(self):
        h.require_executable(h.SERVER, "the scanserve server")
        self.tmp = h.make_tmp("scan_load_")
        self.pb, self.pb_grpc = h.generate_stubs(os.path.join(self.tmp, "stubs"))
        model = h.make_model(self.tmp, seed=1)
        self.server = h.ServerProcess(self.tmp, "scanserve", [model], os.path.join(self.tmp, "data"),
                                      extra=["--max-queue-size", "1024"]).start()
        self.server.wait_listening()
        rng = np.random.default_rng(11)
        self.queries = h.random_captions(rng, 64)
        channel = grpc.insecure_channel("127.0.0.1:%d" % self.server.port, options=h.CHANNEL_OPTIONS)
        self.addCleanup(channel.close)
        stub = self.pb_grpc.ScanServiceStub(channel)
        images = h.random_images(rng, N_IMAGES)
        for start in range(0, N_IMAGES, 50):
            req = self.pb.UpsertImagesRequest()
            for i in range(start, min(start + 50, N_IMAGES)):
                req.images.add(id="img%d" % i).region_features.CopyFrom(h.features_msg(self.pb, images[i]))
            resp = stub.UpsertImages(req, timeout=h.RPC_TIMEOUT_S)
            self.assertEqual([r.code for r in resp.results], [0] * len(req.images), [r.message for r in resp.results])

    def tearDown(self):
        self.server.kill()
        h.remove_tmp(self.tmp)

    def round(self, calls_per_thread):
        """N_THREADS threads x calls_per_thread SearchImages; returns (ok count, list of errors)."""
        ok = [0] * N_THREADS
        errors = []
        lock = threading.Lock()
        deadline = time.time() + RUN_LIMIT_S

        def worker(t):
            channel = grpc.insecure_channel("127.0.0.1:%d" % self.server.port, options=h.CHANNEL_OPTIONS)
            try:
                stub = self.pb_grpc.ScanServiceStub(channel)
                for n in range(calls_per_thread):
                    if time.time() > deadline:
                        with lock:
                            errors.append("thread %d: run limit of %d s reached after %d calls" % (t, RUN_LIMIT_S, n))
                        return
                    q = self.queries[(t * 7 + n) % len(self.queries)]
                    try:
                        resp = stub.SearchImages(self.pb.SearchImagesRequest(queries=[q], top_k=TOP_K),
                                                 timeout=h.RPC_TIMEOUT_S)
                        if len(resp.results) != 1 or len(resp.results[0].hits) != TOP_K:
                            raise AssertionError("bad response shape: %d results" % len(resp.results))
                        ok[t] += 1
                    except Exception as e:  # noqa: BLE001  (every failure is counted)
                        with lock:
                            if len(errors) < 20:
                                errors.append("thread %d call %d: %r" % (t, n, e))
                            else:
                                errors.append("...")
            finally:
                channel.close()

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(N_THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(RUN_LIMIT_S + 60)
        self.assertFalse(any(th.is_alive() for th in threads), "client threads hung")
        return sum(ok), errors

    def test_concurrent_searches(self):
        t0 = time.time()
        ok, errors = self.round(WARMUP_CALLS_PER_THREAD)
        self.assertEqual(errors, [], self.server.log_tail())
        self.assertEqual(ok, N_THREADS * WARMUP_CALLS_PER_THREAD)
        rss_warm = self.server.rss_kib()
        warm_s = time.time() - t0

        t0 = time.time()
        ok, errors = self.round(CALLS_PER_THREAD)
        run_s = time.time() - t0
        self.assertEqual(errors[:20], [], "%d errors\n%s" % (len(errors), self.server.log_tail()))
        self.assertEqual(ok, N_THREADS * CALLS_PER_THREAD)
        self.assertTrue(self.server.alive(), self.server.log_tail())
        rss_end = self.server.rss_kib()

        samples = h.parse_metrics(self.server.scrape())
        batches = h.metric_value(samples, "scanserve_batch_size_count")
        queries = h.metric_value(samples, "scanserve_batch_size_sum")
        handled_ok = h.metric_value(samples, "grpc_server_handled_total", grpc_method="SearchImages", grpc_code="OK")
        print("\nload: %d x %d SearchImages in %.1f s (%.0f/s; warm-up %.1f s); %d engine batches, %.2f queries "
              "per batch; RSS %d -> %d KiB (%+.1f %%)"
              % (N_THREADS, CALLS_PER_THREAD, run_s, ok / run_s, warm_s, batches, queries / max(batches, 1),
                 rss_warm, rss_end, 100.0 * (rss_end - rss_warm) / rss_warm), file=sys.stderr)

        total = N_THREADS * (CALLS_PER_THREAD + WARMUP_CALLS_PER_THREAD)
        self.assertEqual(handled_ok, total)
        self.assertEqual(queries, total, "every query went through the batcher")
        self.assertGreater(queries, batches, "no batch merged more than one query")
        self.assertLess(rss_end, rss_warm * (1 + RSS_GROWTH_LIMIT),
                        "server RSS grew from %d to %d KiB" % (rss_warm, rss_end))


if __name__ == "__main__":
    unittest.main(verbosity=2)
