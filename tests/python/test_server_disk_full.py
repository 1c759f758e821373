"""The real `scanserve` binary on a store whose disk fills up, then gets space back.

    SCANSERVE_BUILD_DIR=build /usr/bin/python3 tests/python/test_server_disk_full.py

The data directory is a 4 MB tmpfs (mounting needs root: skipped, exit 77, where it cannot).
Images are upserted one per call until the disk is full. Then:
  * the item that did not fit is RESOURCE_EXHAUSTED, saying "No space left"; so are later writes
    (an upsert, a delete) and a snapshot while the disk stays full; the deleted item stays served,
    and no half snapshot is left behind;
  * the server stays up and healthy, and searches go on over everything acknowledged;
  * /metrics counts the failed writes (scanserve_store_failed_writes_total) and shows the free space
    (scanserve_store_disk_free_bytes, also in GetStats), which the ScanserveStoreWritesFailing and
    ScanserveStoreDiskLow alerts of deploy/alerts.yml watch;
  * once the file system grows (as when an operator frees space), writes and snapshots succeed again
    within a minute, without a restart: RocksDB recovers by itself once its 64 MB write buffer fits;
  * after kill -9 and a restart on the same directory, the store holds exactly what was
    acknowledged: every acked upsert, no refused one, the acked delete gone;
  * with four writers, deletes, snapshots and scrapes at once as the disk fills, the server stays
    up (RocksDB's own info logger used to abort it, see the test).
And a server restarted on a full disk (its write-ahead log to replay, no room for it) exits with a
message saying how much space it needs (RocksDB alone names a file it could not write); it
starts once space is back.
"""

import os
import subprocess
import sys
import threading
import time
import unittest
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scanserve_harness as h  # noqa: E402

h.skip_if_server_disabled()
h.require_grpc()
import grpc  # noqa: E402

RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
FULL_SIZE = "4m"
GROWN_SIZE = "256m"  # more than RocksDB's 64 MB write buffer free: it can flush and resume
MAX_FILL_CALLS = 5000
RECOVERY_TIMEOUT_S = 60


def mount_tmpfs(path, size):
    """True when a tmpfs of `size` is mounted at `path` (root only)."""
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", path],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except OSError:  # no mount(8)
        return False


def skip_unless_mountable():
    """Exit 77 (skip) where this process cannot mount a tmpfs (not root, or no mount namespace)."""
    probe = h.make_tmp("scan_mount_probe_")
    mounted = mount_tmpfs(probe, "1m")
    if mounted:
        subprocess.run(["umount", probe])
    h.remove_tmp(probe)
    if not mounted:
        print("skipped: mounting a tmpfs needs root (this test fills a real file system)")
        sys.exit(77)


skip_unless_mountable()


class DiskFullTest(h.OneServerAtATime, unittest.TestCase):

    def setUp(self):
        h.require_executable(h.SERVER, "the scanserve server")
        self.tmp = h.make_tmp("scan_disk_full_")
        self.addCleanup(h.remove_tmp, self.tmp)
        self.mount = os.path.join(self.tmp, "disk")
        os.makedirs(self.mount)
        self.assertTrue(mount_tmpfs(self.mount, FULL_SIZE), "mounting a %s tmpfs at %s failed" % (FULL_SIZE, self.mount))
        self.addCleanup(subprocess.run, ["umount", self.mount])
        self.addCleanup(self.stop_server)
        self.pb, self.pb_grpc = h.generate_stubs(os.path.join(self.tmp, "stubs"))
        self.model_dir = h.make_model(self.tmp, seed=5)
        self.data_dir = os.path.join(self.mount, "data")
        self.snapshot_dir = os.path.join(self.mount, "snapshots")  # hard links: the same file system
        self.rng = np.random.default_rng(11)
        self.start_server()

    def start_server(self):
        self.serve(h.ServerProcess(self.tmp, "scanserve-%d" % time.monotonic_ns(), [self.model_dir],
                                   self.data_dir, extra=["--snapshot-dir", self.snapshot_dir]))

    def upsert_image(self, image_id):
        """The per-item status of one image upserted alone."""
        x = h.sc.random_region_features(self.rng, 36, h.IMG_DIM)
        request = self.pb.UpsertImagesRequest(images=[
            self.pb.Image(id=image_id, region_features=h.features_msg(self.pb, x))])
        return self.stub.UpsertImages(request, timeout=h.RPC_TIMEOUT_S).results[0]

    def metrics(self):
        return h.parse_metrics(self.server.scrape())

    def stored_image_ids(self):
        return h.list_image_ids(self.pb, self.stub)

    def test_writes_fail_cleanly_while_full_and_resume_when_space_returns(self):
        # Fill the disk.
        acked, refused = [], None
        for i in range(MAX_FILL_CALLS):
            result = self.upsert_image("img%05d" % i)
            if result.code == 0:
                acked.append(result.id)
                continue
            refused = result
            break
        self.assertIsNotNone(refused, "a %s disk never filled in %d upserts" % (FULL_SIZE, MAX_FILL_CALLS))
        self.assertGreater(len(acked), 10)
        self.assertEqual(refused.code, RESOURCE_EXHAUSTED, refused.message)
        self.assertIn("No space left", refused.message)

        # While full: writes are refused cleanly, reads and searches go on.
        again = self.upsert_image("while-full")
        self.assertEqual(again.code, RESOURCE_EXHAUSTED, again.message)
        deleted = acked[0]
        response = self.stub.Delete(self.pb.DeleteRequest(image_ids=[deleted]), timeout=h.RPC_TIMEOUT_S)
        self.assertEqual(response.image_results[0].code, RESOURCE_EXHAUSTED, response.image_results[0].message)
        self.assertTrue(self.server.alive(), self.server.log_tail())
        health = urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.server.metrics_port, timeout=10)
        self.assertEqual(health.status, 200)
        hits = self.stub.SearchImages(self.pb.SearchImagesRequest(queries=h.random_captions(self.rng, 1), top_k=5),
                                      timeout=h.RPC_TIMEOUT_S).results[0].hits
        self.assertEqual(len(hits), 5)
        self.assertTrue(all(hit.id in set(acked) for hit in hits))
        with self.assertRaises(grpc.RpcError) as snapshot:
            self.stub.CreateSnapshot(self.pb.CreateSnapshotRequest(), timeout=h.RPC_TIMEOUT_S)
        self.assertEqual(snapshot.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, snapshot.exception.details())
        self.assertEqual(os.listdir(self.snapshot_dir), [], "no half snapshot left behind")
        got = self.stub.GetItems(self.pb.GetItemsRequest(image_ids=[deleted]), timeout=h.RPC_TIMEOUT_S)
        self.assertEqual(got.images[0].status.code, 0, "the refused delete left %s served" % deleted)
        stats = self.stub.GetStats(self.pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S)
        self.assertEqual(stats.images, len(acked))
        self.assertLess(stats.store_disk_free_bytes, 1 << 20)
        samples = self.metrics()
        self.assertGreaterEqual(h.metric_value(samples, "scanserve_store_failed_writes_total"), 3)
        self.assertLess(h.metric_value(samples, "scanserve_store_disk_free_bytes"), 1 << 20)
        self.assertGreaterEqual(h.metric_value(samples, "scanserve_ingest_items_total", kind="image",
                                               code="ResourceExhausted"), 2)

        # Space comes back: writes resume without a restart.
        subprocess.check_call(["mount", "-o", "remount,size=%s" % GROWN_SIZE, self.mount])
        deadline, attempt, resumed = time.time() + RECOVERY_TIMEOUT_S, 0, None
        while time.time() < deadline:
            result = self.upsert_image("after%03d" % attempt)
            attempt += 1
            if result.code == 0:
                resumed = result.id
                break
            self.assertEqual(result.code, RESOURCE_EXHAUSTED, result.message)
            time.sleep(0.5)
        self.assertIsNotNone(resumed, "writes did not resume within %d s of the disk growing:\n%s"
                             % (RECOVERY_TIMEOUT_S, self.server.log_tail()))
        acked.append(resumed)
        more = self.upsert_image("after-resume")
        self.assertEqual(more.code, 0, more.message)
        acked.append(more.id)
        response = self.stub.Delete(self.pb.DeleteRequest(image_ids=[deleted]), timeout=h.RPC_TIMEOUT_S)
        self.assertEqual(response.image_results[0].code, 0, response.image_results[0].message)
        acked.remove(deleted)
        self.assertGreater(h.metric_value(self.metrics(), "scanserve_store_disk_free_bytes"), 64 << 20)
        snapshot = self.stub.CreateSnapshot(self.pb.CreateSnapshotRequest(name="after-resume"),
                                            timeout=h.RPC_TIMEOUT_S)
        self.assertEqual(snapshot.images, len(acked))

        # kill -9 and restart: exactly what was acknowledged.
        self.server.proc.kill()
        self.server.proc.wait()
        self.start_server()
        self.assertEqual(sorted(self.stored_image_ids()), sorted(acked))
        stats = self.stub.GetStats(self.pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S)
        self.assertEqual(stats.images, len(acked))

    def test_concurrent_writes_snapshots_and_scrapes_as_the_disk_fills(self):
        """Four writers, deletes and snapshots, and /metrics scrapes, until every writer is refused
        20 times, then a second more. RocksDB's own info logger asserted (SIGABRT) on its first line
        after a failed write, which its recovery thread writes at once: 9 of 10 such runs killed the
        server. The store now logs through its own logger, which drops lines it cannot write."""
        stop = threading.Event()
        errors = []

        def writer(k):
            rng = np.random.default_rng(100 + k)
            refused, i = 0, 0
            while refused < 20 and not stop.is_set():
                x = h.sc.random_region_features(rng, 36, h.IMG_DIM)
                request = self.pb.UpsertImagesRequest(images=[
                    self.pb.Image(id="w%d-%05d" % (k, i), region_features=h.features_msg(self.pb, x))])
                i += 1
                try:
                    result = self.stub.UpsertImages(request, timeout=h.RPC_TIMEOUT_S).results[0]
                except grpc.RpcError as e:
                    errors.append("writer %d: %s %s" % (k, e.code(), e.details()))
                    return
                if result.code != 0:
                    refused += 1
                    if result.code != RESOURCE_EXHAUSTED:
                        errors.append("writer %d: code %d %s" % (k, result.code, result.message))

        def scraper():
            while not stop.is_set():
                try:
                    self.metrics()
                except OSError as e:
                    errors.append("scrape: %s" % e)
                    return

        def deleter_and_snapshotter():
            n = 0
            while not stop.is_set():
                try:
                    self.stub.Delete(self.pb.DeleteRequest(image_ids=["w0-%05d" % n]), timeout=h.RPC_TIMEOUT_S)
                    self.stub.CreateSnapshot(self.pb.CreateSnapshotRequest(name="s%d" % n), timeout=h.RPC_TIMEOUT_S)
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        errors.append("snapshot: %s %s" % (e.code(), e.details()))
                        return
                n += 1
                time.sleep(0.05)

        writers = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        others = [threading.Thread(target=scraper), threading.Thread(target=deleter_and_snapshotter)]
        for t in writers + others:
            t.start()
        for t in writers:
            t.join()
        time.sleep(1.0)  # RocksDB's recovery thread logs as soon as it starts
        stop.set()
        for t in others:
            t.join()
        self.assertTrue(self.server.alive(), self.server.log_tail())
        self.assertEqual(errors, [], self.server.log_tail())
        self.assertNotIn("crash:", self.server.log_tail(100000))
        health = urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.server.metrics_port, timeout=10)
        self.assertEqual(health.status, 200)

    def fill_disk(self):
        """Writes a file until the tmpfs is full; returns its path."""
        filler = os.path.join(self.mount, "filler")
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (64 << 10))
                    f.flush()
            except OSError:
                pass
        return filler

    def test_a_restart_on_a_full_disk_is_refused_clearly_and_succeeds_once_space_is_back(self):
        acked = []
        for i in range(5):
            result = self.upsert_image("kept%d" % i)
            self.assertEqual(result.code, 0, result.message)
            acked.append(result.id)
        # kill -9: the items are only in the write-ahead log, which the next start replays.
        self.server.proc.kill()
        self.server.proc.wait()
        self.stop_server()
        filler = self.fill_disk()

        refused = h.ServerProcess(self.tmp, "scanserve-full", [self.model_dir], self.data_dir).start()
        try:
            code = refused.proc.wait(timeout=h.START_TIMEOUT_S)
        finally:
            refused.kill()
        log = refused.log_tail(20000)
        self.assertEqual(code, 1, "a clean refusal saying how much space is needed:\n" + log)
        self.assertIn("RESOURCE_EXHAUSTED", log)
        self.assertIn("free some space", log)

        os.remove(filler)
        self.start_server()
        self.assertEqual(sorted(self.stored_image_ids()), sorted(acked))


if __name__ == "__main__":
    unittest.main()
