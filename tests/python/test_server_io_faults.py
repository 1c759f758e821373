"""The real `scanserve` binary when its store's disk fails with EIO (not a full disk).

    SCANSERVE_BUILD_DIR=build /usr/bin/python3 tests/python/test_server_io_faults.py

The server runs with tests/fault_injection's library preloaded: while a trigger file exists, write
and sync calls on files under the data directory fail with EIO ("all": writes and syncs; "sync":
syncs only, as a disk failing write-back). Skipped (exit 77) where the build has no such library
(sanitizer builds). Then:
  * a write that hits the fault is UNAVAILABLE and names the I/O error; RocksDB then refuses every
    write until the store is reopened, so later writes are UNAVAILABLE too, and GetStats and
    /metrics say that writes are stopped (the ScanserveStoreWritesStopped alert watches it);
  * searches, reads and health go on meanwhile;
  * once the disk works again the server reopens the store by itself, without a write or a
    restart, and writes succeed;
  * a write whose sync failed had its bytes replayed by the reopen: it is stored after all, and
    then served, so that what is served always equals what the store holds;
  * after kill -9 and a restart without faults, the server serves exactly what it served before;
  * with --log-format json every line parses, and the store's messages carry source "engine";
  * `scanctl import` rides out such an outage: an item answered UNAVAILABLE is resent, with a
    backoff, until it is stored, and every item of the import ends up stored;
  * with three writers, deletes, snapshots, searches and scrapes at once through four outages of
    both kinds, the server stays up, answers only OK, UNAVAILABLE or NOT_FOUND, and afterwards
    serves every acknowledged write and exactly what a restart loads.
"""

import json
import os
import random
import subprocess
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

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
FAULTS_LIBRARY = os.path.join(h.BUILD_DIR, "tests", "libscanserve_io_faults.so")
SCANCTL = os.path.join(h.BUILD_DIR, "client", "scanctl")
RECOVERY_TIMEOUT_S = 30  # the reopen's backoff grows to a few seconds while the fault lasts
MAX_TOP_K = 1000  # the server's default --max-top-k

if not os.path.isfile(FAULTS_LIBRARY):
    print("skipped: %s was not built (sanitizer builds leave it out)" % FAULTS_LIBRARY)
    sys.exit(77)


class IoFaultTest(h.OneServerAtATime, unittest.TestCase):

    def setUp(self):
        h.require_executable(h.SERVER, "the scanserve server")
        h.require_executable(SCANCTL, "the scanctl client")
        self.tmp = os.path.realpath(h.make_tmp("scan_io_faults_"))
        self.addCleanup(h.remove_tmp, self.tmp)
        self.pb, self.pb_grpc = h.generate_stubs(os.path.join(self.tmp, "stubs"))
        self.model_dir = h.make_model(self.tmp, seed=5)
        self.data_dir = os.path.join(self.tmp, "data")
        self.trigger = os.path.join(self.tmp, "io-faults")
        self.rng = np.random.default_rng(3)
        self.addCleanup(self.stop_server)

    def start_server(self, faults):
        env = {}
        if faults:
            env = {"LD_PRELOAD": FAULTS_LIBRARY, "SCANSERVE_IO_FAULTS_DIR": self.data_dir,
                   "SCANSERVE_IO_FAULTS_FILE": self.trigger}
        self.serve(h.ServerProcess(self.tmp, "scanserve-%d" % time.monotonic_ns(), [self.model_dir],
                                   self.data_dir, extra=["--log-format", "json", "--snapshot-dir",
                                                         os.path.join(self.tmp, "snapshots")], env=env))

    def fault(self, mode):
        """Arms the faults ("all" or "sync"); None disarms them."""
        if mode is None:
            os.remove(self.trigger)
        else:
            with open(self.trigger, "w") as f:
                f.write(mode)

    def upsert(self, image_id):
        x = h.sc.random_region_features(self.rng, 12, h.IMG_DIM)
        request = self.pb.UpsertImagesRequest(images=[
            self.pb.Image(id=image_id, region_features=h.features_msg(self.pb, x))])
        return self.stub.UpsertImages(request, timeout=h.RPC_TIMEOUT_S).results[0]

    def delete(self, image_id):
        response = self.stub.Delete(self.pb.DeleteRequest(image_ids=[image_id]), timeout=h.RPC_TIMEOUT_S)
        return response.image_results[0]

    def stats(self):
        return self.stub.GetStats(self.pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S)

    def served(self):
        """Ids listed, checked against a search over everything (its first MAX_TOP_K hits)."""
        ids = sorted(h.list_image_ids(self.pb, self.stub))
        hits = self.stub.SearchImages(self.pb.SearchImagesRequest(queries=h.random_captions(self.rng, 1),
                                                                  top_k=MAX_TOP_K), timeout=h.RPC_TIMEOUT_S)
        found = sorted(hit.id for hit in hits.results[0].hits)
        if len(ids) <= MAX_TOP_K:
            self.assertEqual(found, ids)
        else:
            self.assertEqual(len(found), MAX_TOP_K)
            self.assertTrue(set(found) <= set(ids))
        return ids

    def wait_writes_resume_by_themselves(self):
        deadline = time.time() + RECOVERY_TIMEOUT_S
        while time.time() < deadline:
            if not self.stats().store_writes_stopped:
                return
            time.sleep(0.2)
        self.fail("the store was not reopened within %d s of the disk working again:\n%s"
                  % (RECOVERY_TIMEOUT_S, self.server.log_tail()))

    def scanctl_stats(self):
        r = subprocess.run([SCANCTL, "--server", "127.0.0.1:%d" % self.server.port, "stats"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def metric(self, name):
        return h.metric_value(h.parse_metrics(self.server.scrape()), name)

    def test_writes_stop_on_an_io_error_and_resume_by_themselves(self):
        self.start_server(faults=True)
        acked = []
        for i in range(5):
            result = self.upsert("img%d" % i)
            self.assertEqual(result.code, 0, result.message)
            acked.append(result.id)
        self.assertFalse(self.stats().store_writes_stopped)
        self.assertEqual(self.metric("scanserve_store_writes_stopped"), 0)

        self.fault("all")
        failed = self.upsert("failed")
        self.assertEqual(failed.code, UNAVAILABLE, failed.message)
        self.assertIn("Input/output error", failed.message)
        refused = self.delete("img0")
        self.assertEqual(refused.code, UNAVAILABLE, refused.message)
        self.assertIn("stopped taking writes after an I/O error", refused.message)
        self.assertTrue(self.stats().store_writes_stopped)
        self.assertEqual(self.metric("scanserve_store_writes_stopped"), 1)
        self.assertIn("stopped by an I/O error", self.scanctl_stats())
        self.assertGreaterEqual(self.metric("scanserve_store_failed_writes_total"), 1)
        # Searches and health go on.
        self.assertTrue(set(self.served()) <= set(acked + ["failed"]))
        self.assertEqual(h.health_status(self.channel), 1)
        self.assertTrue(self.server.alive(), self.server.log_tail())

        self.fault(None)
        self.wait_writes_resume_by_themselves()
        self.assertEqual(self.metric("scanserve_store_writes_stopped"), 0)
        self.assertGreaterEqual(self.metric("scanserve_store_reopens_total"), 1)
        self.assertNotIn("stopped by an I/O error", self.scanctl_stats())
        after = self.upsert("after")
        self.assertEqual(after.code, 0, after.message)
        self.assertEqual(self.delete("img0").code, 0)
        served = self.served()
        self.assertIn("after", served)
        self.assertNotIn("img0", served)
        self.assertTrue(set(acked[1:]) <= set(served), "an acknowledged image was lost")

        # kill -9 and restart without faults: the same images.
        faulted_log = self.server.log_path
        self.server.proc.kill()
        self.server.proc.wait()
        self.start_server(faults=False)
        self.assertEqual(self.served(), served)
        self.check_json_log(faulted_log, ["stopped after an I/O error", "reopened"])

    def test_a_write_whose_sync_failed_is_served_once_the_reopen_finds_it_stored(self):
        self.start_server(faults=True)
        for i in range(3):
            self.assertEqual(self.upsert("img%d" % i).code, 0)
        self.fault("sync")
        failed = self.upsert("unsure")
        self.assertEqual(failed.code, UNAVAILABLE, failed.message)
        self.assertIn("fdatasync", failed.message)
        self.assertEqual(self.served(), ["img0", "img1", "img2"])
        self.fault(None)
        self.wait_writes_resume_by_themselves()
        # The reopen replayed the log's bytes, which the failed sync had left in the page cache.
        # The server reads back what it could not tell and serves it as stored.
        self.assertEqual(self.upsert("after").code, 0)
        served = self.served()
        self.assertEqual(served, ["after", "img0", "img1", "img2", "unsure"])
        faulted_log = self.server.log_path
        self.server.proc.kill()
        self.server.proc.wait()
        self.start_server(faults=False)
        self.assertEqual(self.served(), served)
        self.check_json_log(faulted_log, ["read back the 1 image(s) of failed store writes: 1 stored"])

    def test_an_import_rides_out_an_outage_of_the_store(self):
        d = os.path.join(self.tmp, "precomp")
        os.makedirs(d)
        n_images, n_captions = 400, 2000
        ims = np.stack([h.sc.random_region_features(self.rng, 4, h.IMG_DIM) for _ in range(n_images)])
        np.save(os.path.join(d, "long_ims.npy"), ims.astype(np.float32))
        with open(os.path.join(d, "long_caps.txt"), "w") as f:
            f.write("\n".join(h.random_captions(self.rng, n_captions)) + "\n")
        self.start_server(faults=True)
        # One item in flight at a time: the import lasts seconds, and the outage falls inside it.
        importer = subprocess.Popen([SCANCTL, "--server", "127.0.0.1:%d" % self.server.port, "--json", "import",
                                     "precomp", "--data-dir", d, "--split", "long", "--window", "1",
                                     "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    universal_newlines=True)
        deadline = time.time() + 60
        while self.stats().images + self.stats().captions < 100 and time.time() < deadline:
            time.sleep(0.05)
        self.fault("all")
        time.sleep(2)
        self.fault(None)
        out, err = importer.communicate(timeout=300)
        self.assertEqual(importer.returncode, 0, err + self.server.log_tail())
        summary = json.loads(out.strip().splitlines()[-1])
        total = n_images + n_captions
        self.assertEqual((summary["acked"], summary["failed"]), (total, 0), summary)
        self.assertIn("could not store item", err)
        self.assertGreaterEqual(summary["reconnects"], 1, err)
        stats = self.stats()
        self.assertEqual((stats.images, stats.captions), (n_images, n_captions))

    def test_faults_that_come_and_go_under_concurrent_writes(self):
        self.start_server(faults=True)
        stop = threading.Event()
        errors = []
        lock = threading.Lock()
        last = {}  # id -> (operation, acknowledged) of its last answered write

        def record(image_id, operation, code):
            if code not in (0, UNAVAILABLE):
                errors.append("%s %s: code %d" % (operation, image_id, code))
            with lock:
                last[image_id] = (operation, code == 0)

        def writer(k):
            rng = np.random.default_rng(100 + k)
            n = 0
            while not stop.is_set():
                ids = ["w%d-%05d" % (k, n + j) for j in range(3)]
                n += 3
                images = [self.pb.Image(id=i, region_features=h.features_msg(
                    self.pb, h.sc.random_region_features(rng, 6, h.IMG_DIM))) for i in ids]
                try:
                    results = self.stub.UpsertImages(self.pb.UpsertImagesRequest(images=images),
                                                     timeout=h.RPC_TIMEOUT_S).results
                except grpc.RpcError as e:
                    errors.append("upsert: %s %s" % (e.code(), e.details()))
                    return
                for r in results:
                    record(r.id, "put", r.code)

        def deleter_and_snapshotter():
            n = 0
            while not stop.is_set():
                image_id = "w0-%05d" % n
                n += 1
                try:
                    r = self.stub.Delete(self.pb.DeleteRequest(image_ids=[image_id]),
                                         timeout=h.RPC_TIMEOUT_S).image_results[0]
                    if r.code != grpc.StatusCode.NOT_FOUND.value[0]:
                        record(image_id, "delete", r.code)
                    self.stub.CreateSnapshot(self.pb.CreateSnapshotRequest(name="s%d" % n), timeout=h.RPC_TIMEOUT_S)
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE:
                        errors.append("snapshot: %s %s" % (e.code(), e.details()))
                        return
                time.sleep(0.02)

        def searcher_and_scraper():
            while not stop.is_set():
                try:
                    self.server.scrape()
                    self.stub.SearchImages(self.pb.SearchImagesRequest(queries=h.random_captions(self.rng, 1),
                                                                       top_k=5), timeout=h.RPC_TIMEOUT_S)
                except (OSError, grpc.RpcError) as e:
                    errors.append("search or scrape: %s" % e)
                    return

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
        threads += [threading.Thread(target=deleter_and_snapshotter), threading.Thread(target=searcher_and_scraper)]
        for t in threads:
            t.start()
        try:
            # Four outages of either kind, each switching modes midway, each over once the store
            # has reopened.
            chooser = random.Random(7)
            for outage in range(4):
                self.fault(["all", "sync"][outage % 2])
                time.sleep(chooser.uniform(0.1, 0.5))
                self.fault(["sync", "all"][outage % 2])
                time.sleep(chooser.uniform(0.1, 0.5))
                self.fault(None)
                self.wait_writes_resume_by_themselves()
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertEqual(errors, [])
        self.assertTrue(self.server.alive(), self.server.log_tail())
        self.assertGreaterEqual(self.metric("scanserve_store_reopens_total"), 1)
        # One more write settles the last failed ones (an outage may still be being recovered
        # from: one whose only failure was a snapshot's flush stops writes at the next write).
        deadline = time.time() + RECOVERY_TIMEOUT_S
        while self.upsert("final").code != 0:
            self.assertLess(time.time(), deadline, self.server.log_tail())
            time.sleep(0.2)
        served = self.served()
        lost = [i for i, (operation, acked) in last.items() if acked and (operation == "put") != (i in served)]
        self.assertEqual(lost, [], "acknowledged writes not served as acknowledged")
        self.server.proc.kill()
        self.server.proc.wait()
        self.start_server(faults=False)
        self.assertEqual(self.served(), served)

    def check_json_log(self, path, expected):
        """Every line of a server's log is a JSON object; the engine's lines name their source."""
        with open(path, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
        engine = [line["msg"] for line in lines if line.get("source") == "engine"]
        for text in expected:
            self.assertTrue(any(text in msg for msg in engine), "no engine line with %r in %s" % (text, engine))


if __name__ == "__main__":
    unittest.main()
