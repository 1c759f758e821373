"""The real Prometheus server scrapes the real `scanserve` binary over loopback.

    SCANSERVE_BUILD_DIR=build /usr/bin/python3 tests/python/test_prometheus_scrape.py

scanserve (tiny random model, free loopback ports) gets some searches and upserts, one search that
fails with INVALID_ARGUMENT and one upsert item that fails with InvalidArgument. Then Debian's
/usr/bin/prometheus is started on loopback with a 1 s scrape interval against the metrics port, and
its HTTP query API (/api/v1/query) must report:
  * grpc_server_handled_total{grpc_method="SearchImages",grpc_code="OK"} == successful searches,
    the InvalidArgument count >= 1;
  * scanserve_images_stored == images ingested; scanserve_ingest_items_total by code;
  * grpc_server_handling_seconds_count > 0, scanserve_batch_size_count > 0;
  * the store metrics (scanserve_store_wal_bytes, scanserve_store_synced_writes_total,
    scanserve_store_sync_seconds_total) exist, synced writes >= 1; the change log's newest sequence
    number == items stored;
  * up == 1 for the target.
Skips (exit 77) only when /usr/bin/prometheus is absent (or the server build is disabled).
"""

import json
import os
import subprocess
import sys
import time
import unittest
import urllib.parse
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scanserve_harness as h  # noqa: E402

PROMETHEUS = "/usr/bin/prometheus"
if not os.path.isfile(PROMETHEUS):
    print("skipped: %s is absent (apt-get install prometheus)" % PROMETHEUS)
    sys.exit(77)
h.skip_if_server_disabled()
h.require_grpc()
import grpc  # noqa: E402

WAIT_S = 60          # for Prometheus to start and scrape
N_IMAGES = 7
N_CAPTIONS = 5
N_SEARCHES = 6


class PrometheusScrapeTest(unittest.TestCase):

    def setUp(self):
        h.require_executable(h.SERVER, "the scanserve server")
        self.tmp = h.make_tmp("scan_prom_")
        self.prom = None
        self.prom_log = None
        self.server = None
        self.pb, self.pb_grpc = h.generate_stubs(os.path.join(self.tmp, "stubs"))
        model = h.make_model(self.tmp, seed=1)
        self.server = h.ServerProcess(self.tmp, "scanserve", [model], os.path.join(self.tmp, "data")).start()
        self.server.wait_listening()

    def tearDown(self):
        h.stop_process(self.prom, timeout=15)
        if self.prom_log is not None:
            self.prom_log.close()
        if self.server is not None:
            self.server.kill()
        h.remove_tmp(self.tmp)

    def prom_log_tail(self, n=4000):
        try:
            with open(os.path.join(self.tmp, "prometheus.log"), "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def drive_server(self):
        """Upserts and searches; returns the number of successful SearchImages calls."""
        pb = self.pb
        rng = np.random.default_rng(3)
        with grpc.insecure_channel("127.0.0.1:%d" % self.server.port, options=h.CHANNEL_OPTIONS) as channel:
            stub = self.pb_grpc.ScanServiceStub(channel)
            req = pb.UpsertImagesRequest()
            for i, x in enumerate(h.random_images(rng, N_IMAGES)):
                req.images.add(id="img%d" % i).region_features.CopyFrom(h.features_msg(pb, x))
            # One item that fails: region features of the wrong dimension -> per-item InvalidArgument.
            bad = req.images.add(id="bad")
            bad.region_features.CopyFrom(h.features_msg(pb, np.ones((2, h.IMG_DIM - 1), dtype=np.float32)))
            resp = stub.UpsertImages(req, timeout=h.RPC_TIMEOUT_S)
            self.assertEqual([r.code for r in resp.results],
                             [0] * N_IMAGES + [grpc.StatusCode.INVALID_ARGUMENT.value[0]])
            creq = pb.UpsertCaptionsRequest()
            for j, c in enumerate(h.random_captions(rng, N_CAPTIONS)):
                creq.captions.add(id="cap%d" % j, text=c)
            cresp = stub.UpsertCaptions(creq, timeout=h.RPC_TIMEOUT_S)
            self.assertEqual([r.code for r in cresp.results], [0] * N_CAPTIONS)

            queries = h.random_captions(rng, N_SEARCHES)
            for q in queries:
                r = stub.SearchImages(pb.SearchImagesRequest(queries=[q], top_k=3), timeout=h.RPC_TIMEOUT_S)
                self.assertEqual(len(r.results[0].hits), 3)
            # A whole search that fails with INVALID_ARGUMENT (empty query text).
            with self.assertRaises(grpc.RpcError) as ctx:
                stub.SearchImages(pb.SearchImagesRequest(queries=[""]), timeout=h.RPC_TIMEOUT_S)
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        return len(queries)

    def start_prometheus(self):
        self.prom_port = h.free_port()
        config = os.path.join(self.tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n"
                    "  scrape_interval: 1s\n"
                    "  scrape_timeout: 1s\n"
                    "  evaluation_interval: 1s\n"
                    "scrape_configs:\n"
                    "  - job_name: scanserve\n"
                    "    static_configs:\n"
                    "      - targets: ['127.0.0.1:%d']\n" % self.server.metrics_port)
        self.prom_log = open(os.path.join(self.tmp, "prometheus.log"), "ab")
        self.prom = subprocess.Popen([PROMETHEUS, "--config.file=" + config,
                                      "--storage.tsdb.path=" + os.path.join(self.tmp, "tsdb"),
                                      "--web.listen-address=127.0.0.1:%d" % self.prom_port],
                                     stdout=self.prom_log, stderr=subprocess.STDOUT, cwd=self.tmp)

    def query(self, promql):
        """Instant query -> {frozenset(labels.items()): float}; raises on transport or API errors."""
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (self.prom_port, urllib.parse.urlencode({"query": promql}))
        body = json.loads(urllib.request.urlopen(url, timeout=5).read().decode())
        if body.get("status") != "success":
            raise AssertionError("query %s: %s" % (promql, body))
        return {frozenset(r["metric"].items()): float(r["value"][1]) for r in body["data"]["result"]}

    def scalar(self, promql):
        result = self.query(promql)
        self.assertEqual(len(result), 1, "%s -> %s" % (promql, result))
        return next(iter(result.values()))

    def wait_for_scrape(self):
        """Until Prometheus answers with the scanserve target up and the SearchImages counter present."""
        deadline = time.time() + WAIT_S
        last = None
        while time.time() < deadline:
            if self.prom.poll() is not None:
                if "address already in use" in self.prom_log_tail() and not getattr(self, "prom_retried", False):
                    self.prom_retried = True   # the free port was taken meanwhile: once more on another
                    self.prom_log.close()
                    self.start_prometheus()
                    continue
                self.fail("prometheus exited with %s:\n%s" % (self.prom.returncode, self.prom_log_tail()))
            try:
                up = self.query('up{job="scanserve"}')
                handled = self.query('grpc_server_handled_total{grpc_method="SearchImages",grpc_code="OK"}')
                if up and handled and all(v == 1 for v in up.values()):
                    return
                last = (up, handled)
            except (OSError, ValueError) as e:  # not listening yet / not ready (503)
                last = e
            time.sleep(0.5)
        self.fail("no scrape of scanserve in Prometheus within %d s (last: %r)\nprometheus:\n%s\nscanserve:\n%s"
                  % (WAIT_S, last, self.prom_log_tail(), self.server.log_tail()))

    def test_prometheus_scrapes_scanserve(self):
        searches_ok = self.drive_server()
        t0 = time.time()
        self.start_prometheus()
        self.wait_for_scrape()
        print("\nprometheus: first scrape visible after %.1f s" % (time.time() - t0), file=sys.stderr)

        target = 'job="scanserve",instance="127.0.0.1:%d"' % self.server.metrics_port
        self.assertEqual(self.scalar("up{%s}" % target), 1)
        self.assertEqual(self.scalar('sum(grpc_server_handled_total{%s,grpc_method="SearchImages",grpc_code="OK"})'
                                     % target), searches_ok)
        self.assertGreaterEqual(
            self.scalar('sum(grpc_server_handled_total{%s,grpc_method="SearchImages",grpc_code="InvalidArgument"})'
                        % target), 1)
        self.assertEqual(self.scalar('sum(grpc_server_started_total{%s,grpc_method="SearchImages"})' % target),
                         searches_ok + 1)
        self.assertEqual(self.scalar("scanserve_images_stored{%s}" % target), N_IMAGES)
        self.assertEqual(self.scalar("scanserve_captions_stored{%s}" % target), N_CAPTIONS)
        self.assertEqual(self.scalar('scanserve_ingest_items_total{%s,kind="image",code="OK"}' % target), N_IMAGES)
        self.assertEqual(self.scalar('scanserve_ingest_items_total{%s,kind="image",code="InvalidArgument"}'
                                     % target), 1)
        self.assertGreater(self.scalar("sum(grpc_server_handling_seconds_count{%s})" % target), 0)
        self.assertGreater(self.scalar('scanserve_batch_size_count{%s,direction="text_to_image"}' % target), 0)
        # Every search query went through the batcher (the empty one too: the engine rejects it).
        self.assertGreaterEqual(self.scalar('scanserve_batch_size_sum{%s,direction="text_to_image"}' % target),
                                searches_ok)
        # Store metrics: the WAL gauge and the durable-write counters.
        self.assertGreaterEqual(self.scalar("scanserve_store_wal_bytes{%s}" % target), 0)
        self.assertGreaterEqual(self.scalar("scanserve_store_synced_writes_total{%s}" % target), 1)
        self.assertGreaterEqual(self.scalar("scanserve_store_sync_seconds_total{%s}" % target), 0)
        # Every stored item is one change in the log; the refused one is not.
        self.assertEqual(self.scalar("scanserve_store_change_log_last_sequence{%s}" % target),
                         N_IMAGES + N_CAPTIONS)
        self.assertEqual(self.scalar("scanserve_store_change_log_trimmed_through{%s}" % target), 0)
        # The engine's search time, split: encoding the captions and scoring the stored images.
        for phase in ("encode", "score"):
            self.assertGreater(self.scalar('scanserve_engine_%s_seconds_total{%s,direction="text_to_image"}'
                                           % (phase, target)), 0)
        # Histograms are usable in PromQL (buckets carry le labels).
        self.assertTrue(self.query("histogram_quantile(0.5, sum by (le) (rate(grpc_server_handling_seconds_bucket"
                                   "{%s}[1m])))" % target) is not None)


if __name__ == "__main__":
    unittest.main(verbosity=2)
