"""Moving a collection to other models: `scanserve --region-features keep` and `scanctl copy`.

    SCANSERVE_BUILD_DIR=build /usr/bin/python3 tests/python/test_scanctl_copy.py

  * a server with --region-features keep stores each image's input features: GetItems with
    include_region_features hands them back bit for bit (after a restart too), and at most 32 image
    ids per call then; without the flag, or for images stored before it, has_region_features is
    false and no features come back;
  * `scanctl copy` from such a server into one running other weights leaves the target answering
    both search directions exactly as a server of those weights fed the original features and
    captions does; ids, collections, metadata, boxes and labels arrive unchanged; images without
    kept features are listed and not copied (exit 1), synthetic benchmark items are skipped;
  * its checkpoint resumes after the last id copied, and a finished copy does nothing again;
  * a target restarted mid-copy (kill -9, a rolling update) costs retries, not items;
  * writes the source takes during the copy (upserts behind and ahead of the copy's place, metadata
    updates, deletes) reach the target from the source's change log: with --follow until SIGTERM,
    and again when the copy is rerun with its checkpoint; the target then holds exactly what the
    source holds, features bit for bit, and answers searches as the source does (same model);
  * a copy behind the source's --change-log-retention-s is refused (OUT_OF_RANGE, exit 1) and says
    to start again, as is one whose source was restored from a snapshot (ahead of the restored log,
    or, once that has passed the copy's place, on another log id); `scanctl changes` lists the log.
"""

import json
import os
import signal
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

SCANCTL = os.path.join(h.BUILD_DIR, "client", "scanctl")


class CopyTest(unittest.TestCase):

    def setUp(self):
        h.require_executable(h.SERVER, "the scanserve server")
        h.require_executable(SCANCTL, "the scanctl client")
        self.tmp = os.path.realpath(h.make_tmp("scan_copy_"))
        self.addCleanup(h.remove_tmp, self.tmp)
        self.pb, self.pb_grpc = h.generate_stubs(os.path.join(self.tmp, "stubs"))
        self.old_model = h.make_model(self.tmp, seed=5)
        self.new_model = h.make_model(self.tmp, seed=6)  # "retrained": other weights, same vocabulary
        self.rng = np.random.default_rng(11)
        self.servers = []

    def start(self, name, model, extra=()):
        server = h.ServerProcess(self.tmp, name, [model], os.path.join(self.tmp, name), extra=list(extra)).start()
        self.addCleanup(server.kill)
        server.wait_listening()
        channel = grpc.insecure_channel("127.0.0.1:%d" % server.port, options=h.CHANNEL_OPTIONS)
        self.addCleanup(channel.close)
        grpc.channel_ready_future(channel).result(timeout=h.START_TIMEOUT_S)
        return server, self.pb_grpc.ScanServiceStub(channel)

    def images(self, prefix, n):
        pb = self.pb
        out = []
        for i, x in enumerate(h.random_images(self.rng, n)):
            k = x.shape[0]
            boxes = [pb.Box(x1=float(r), y1=float(r) + 0.5, x2=float(r) + 10, y2=float(r) + 20.25) for r in range(k)]
            labels = ["object %d" % r for r in range(k)]
            out.append(pb.Image(id="%s/%d" % (prefix, i), collection="even" if i % 2 == 0 else "odd",
                                metadata={"n": str(i)}, region_features=h.features_msg(pb, x),
                                boxes=boxes if i % 3 else [], labels=labels if i % 3 else []))
        return out

    def captions(self, n):
        return [self.pb.Caption(id="cap/%02d" % i, text=t, collection="c%d" % (i % 3), metadata={"i": str(i)})
                for i, t in enumerate(h.random_captions(self.rng, n))]

    def upsert(self, stub, images=(), captions=()):
        if images:
            r = stub.UpsertImages(self.pb.UpsertImagesRequest(images=images), timeout=h.RPC_TIMEOUT_S)
            self.assertEqual([s.code for s in r.results], [0] * len(images), r)
        if captions:
            r = stub.UpsertCaptions(self.pb.UpsertCaptionsRequest(captions=captions), timeout=h.RPC_TIMEOUT_S)
            self.assertEqual([s.code for s in r.results], [0] * len(captions), r)

    def copy(self, source, target, *args):
        r = subprocess.run([SCANCTL, "--server", "127.0.0.1:%d" % source.port, "--json", "copy", "--to",
                            "127.0.0.1:%d" % target.port, "--no-progress"] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
        summary = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {}
        return r.returncode, summary, r.stderr

    def stored_state(self, stub):
        """Everything a store holds, as comparable values: ids, records, features."""
        pb = self.pb
        captions, token = [], ""
        while True:
            page = stub.ListItems(pb.ListItemsRequest(kind=2, page_size=1000, page_token=token), timeout=h.RPC_TIMEOUT_S)
            captions += page.ids
            token = page.next_page_token
            if not token:
                break
        images = h.list_image_ids(pb, stub)
        records = []
        for begin in range(0, len(images), 32):
            got = stub.GetItems(pb.GetItemsRequest(image_ids=images[begin:begin + 32], include_region_features=True),
                                timeout=h.RPC_TIMEOUT_S)
            records += [s.image.SerializeToString(deterministic=True) for s in got.images]
        got = stub.GetItems(pb.GetItemsRequest(caption_ids=captions), timeout=h.RPC_TIMEOUT_S) if captions else None
        records += [s.caption.SerializeToString(deterministic=True) for s in got.captions] if got else []
        return images, captions, records

    def wait_equal(self, source_stub, target_stub, what, timeout_s=60):
        deadline = time.time() + timeout_s
        while True:
            want, got = self.stored_state(source_stub), self.stored_state(target_stub)
            if want == got or time.time() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(got[0], want[0], what + ": image ids")
        self.assertEqual(got[1], want[1], what + ": caption ids")
        self.assertTrue(got[2] == want[2], what + ": stored records differ")

    def search_both_ways(self, stub, queries, image_ids):
        pb = self.pb
        t2i = stub.SearchImages(pb.SearchImagesRequest(queries=queries, top_k=50), timeout=h.RPC_TIMEOUT_S)
        i2t = stub.SearchCaptions(pb.SearchCaptionsRequest(queries=[pb.ImageQuery(image_id=i) for i in image_ids],
                                                           top_k=50), timeout=h.RPC_TIMEOUT_S)
        return ([[(hit.id, hit.score) for hit in r.hits] for r in t2i.results],
                [[(hit.id, hit.score) for hit in r.hits] for r in i2t.results])

    def assertSameRanking(self, got, want, what):
        self.assertEqual(len(got), len(want), what)
        for q, (g, w) in enumerate(zip(got, want)):
            self.assertEqual([i for i, _ in g], [i for i, _ in w], "%s, query %d" % (what, q))
            np.testing.assert_allclose([s for _, s in g], [s for _, s in w], rtol=1e-6, atol=1e-7,
                                       err_msg="%s, query %d" % (what, q))

    def test_kept_features_read_back_exactly(self):
        pb = self.pb
        plain, plain_stub = self.start("plain", self.old_model)
        kept, kept_stub = self.start("kept", self.old_model, ["--region-features", "keep"])
        images = self.images("img", 33)
        self.upsert(plain_stub, images[:2])
        self.upsert(kept_stub, images)

        got = plain_stub.GetItems(pb.GetItemsRequest(image_ids=["img/0", "img/1"], include_region_features=True),
                                  timeout=h.RPC_TIMEOUT_S)
        for stored in got.images:
            self.assertFalse(stored.has_region_features)
            self.assertFalse(stored.image.HasField("region_features"))

        ids = [im.id for im in images]
        for restart in range(2):
            got = kept_stub.GetItems(pb.GetItemsRequest(image_ids=ids[:32], include_region_features=True),
                                     timeout=h.RPC_TIMEOUT_S)
            for stored, sent in zip(got.images, images):
                self.assertTrue(stored.has_region_features, stored.status)
                self.assertEqual(stored.image.region_features.num_regions, sent.region_features.num_regions)
                self.assertEqual(stored.image.region_features.dim, sent.region_features.dim)
                self.assertEqual(stored.image.region_features.values, sent.region_features.values, sent.id)
            without = kept_stub.GetItems(pb.GetItemsRequest(image_ids=ids[:3]), timeout=h.RPC_TIMEOUT_S)
            self.assertTrue(all(s.has_region_features and not s.image.HasField("region_features")
                                for s in without.images))
            with self.assertRaises(grpc.RpcError) as refused:
                kept_stub.GetItems(pb.GetItemsRequest(image_ids=ids, include_region_features=True),
                                   timeout=h.RPC_TIMEOUT_S)
            self.assertEqual(refused.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("at most 32", refused.exception.details())
            if restart == 0:
                kept.kill()
                kept.start()
                kept.wait_listening()
        self.assertIn("keep their input region features", kept.this_start_log())

        r = subprocess.run([SCANCTL, "--server", "127.0.0.1:%d" % kept.port, "get", "--image", "img/1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("features kept", r.stdout)

    def test_copy_into_other_models_serves_as_a_fresh_ingest(self):
        pb = self.pb
        # The source stored one image before it kept features, then the rest with them.
        source, source_stub = self.start("source", self.old_model)
        early = self.images("early", 1)
        self.upsert(source_stub, early)
        source.kill()
        source.extra = ["--region-features", "keep", "--synthetic-images", "2", "--synthetic-captions", "3"]
        source.start()
        source.wait_listening()
        channel = grpc.insecure_channel("127.0.0.1:%d" % source.port, options=h.CHANNEL_OPTIONS)
        self.addCleanup(channel.close)
        source_stub = self.pb_grpc.ScanServiceStub(channel)
        images = self.images("img", 12)
        captions = self.captions(20)
        self.upsert(source_stub, images, captions)

        target, target_stub = self.start("target", self.new_model)
        fresh, fresh_stub = self.start("fresh", self.new_model)
        self.upsert(fresh_stub, images, captions)

        code, summary, stderr = self.copy(source, target, "--batch", "5", "--resume-file",
                                          os.path.join(self.tmp, "copy.json"))
        self.assertEqual(code, 1, "an image without kept features must fail the copy\n" + stderr)
        self.assertEqual((summary["images"], summary["captions"], summary["failed"]), (12, 20, 0), stderr)
        self.assertEqual(summary["images_without_region_features"], 1, summary)
        self.assertEqual(summary["synthetic_skipped"], 5, summary)
        self.assertIn("image 'early/0' was stored without its region features", stderr)

        queries = h.random_captions(self.rng, 6)
        image_ids = [im.id for im in images]
        want = self.search_both_ways(fresh_stub, queries, image_ids)
        got = self.search_both_ways(target_stub, queries, image_ids)
        self.assertSameRanking(got[0], want[0], "text->image")
        self.assertSameRanking(got[1], want[1], "image->text")
        before = self.search_both_ways(source_stub, queries, image_ids[:1])
        self.assertNotEqual([s for _, s in before[0][0]][:3], [s for _, s in got[0][0]][:3],
                            "the target must score with its own model")

        read = lambda stub: stub.GetItems(pb.GetItemsRequest(image_ids=image_ids, caption_ids=[c.id for c in captions]),
                                          timeout=h.RPC_TIMEOUT_S)
        copied, sent = read(target_stub), read(fresh_stub)
        self.assertEqual([s.image for s in copied.images], [s.image for s in sent.images])
        self.assertEqual([s.caption for s in copied.captions], [s.caption for s in sent.captions])
        self.assertEqual(h.list_image_ids(pb, target_stub), sorted(image_ids))

        # A finished copy only catches up (nothing was written since); a checkpoint inside the
        # captions resumes after its id.
        code, summary, stderr = self.copy(source, target, "--resume-file", os.path.join(self.tmp, "copy.json"))
        self.assertEqual((code, summary["images"], summary["captions"], summary["changes"]), (0, 0, 0, 0), stderr)
        self.assertIn("with the source's changes after sequence", stderr)
        target_stub.Delete(pb.DeleteRequest(caption_ids=[c.id for c in captions]), timeout=h.RPC_TIMEOUT_S)
        with open(os.path.join(self.tmp, "copy.json")) as f:
            checkpoint = json.load(f)
        checkpoint.update(kind="caption", after="cap/13")
        with open(os.path.join(self.tmp, "copy.json"), "w") as f:
            json.dump(checkpoint, f)
        code, summary, stderr = self.copy(source, target, "--resume-file", os.path.join(self.tmp, "copy.json"))
        self.assertEqual((code, summary["images"], summary["captions"]), (0, 0, 6), stderr)
        listed = target_stub.ListItems(pb.ListItemsRequest(kind=2), timeout=h.RPC_TIMEOUT_S)
        self.assertEqual(list(listed.ids), ["cap/%02d" % i for i in range(14, 20)])

        # Another copy's checkpoint is refused.
        code, _, stderr = self.copy(source, target, "--images-only", "--resume-file",
                                    os.path.join(self.tmp, "copy.json"))
        self.assertEqual(code, 2, stderr)
        self.assertIn("belongs to another copy", stderr)

    def test_a_target_restarted_mid_copy_loses_nothing(self):
        source, source_stub = self.start("source", self.old_model, ["--region-features", "keep"])
        images = self.images("img", 120)
        for begin in range(0, len(images), 40):
            self.upsert(source_stub, images[begin:begin + 40])
        target, target_stub = self.start("target", self.new_model)
        target.fixed_ports = True

        def restart_target():
            deadline = time.time() + 60
            while time.time() < deadline:
                stats = target_stub.GetStats(self.pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S)
                if stats.images >= 8:
                    break
                time.sleep(0.02)
            target.proc.kill()  # kill -9 mid-copy
            target.proc.wait()
            target.log.close()
            target.log = None
            time.sleep(0.5)
            target.start()

        restarter = threading.Thread(target=restart_target)
        restarter.start()
        code, summary, stderr = self.copy(source, target, "--batch", "2")
        restarter.join()
        self.assertEqual(code, 0, stderr)
        self.assertGreater(summary["retries"], 0, "the target was down for a while: %s\n%s" % (summary, stderr))
        self.assertEqual(summary["images"], len(images), summary)  # a batch is counted once, when answered
        target.wait_listening()
        channel = grpc.insecure_channel("127.0.0.1:%d" % target.port, options=h.CHANNEL_OPTIONS)
        self.addCleanup(channel.close)
        self.assertEqual(h.list_image_ids(self.pb, self.pb_grpc.ScanServiceStub(channel)),
                         sorted(im.id for im in images))

    def test_writes_during_and_after_a_copy_reach_the_target(self):
        pb = self.pb
        source, source_stub = self.start("source", self.old_model, ["--region-features", "keep"])
        source.fixed_ports = True  # restarted below, on the same address
        images = self.images("m", 90)
        captions = self.captions(30)
        for begin in range(0, len(images), 30):
            self.upsert(source_stub, images[begin:begin + 30])
        self.upsert(source_stub, captions=captions)
        # A replica: the same model, and features kept so that it can be copied on in turn.
        target, target_stub = self.start("target", self.old_model, ["--region-features", "keep"])
        checkpoint = os.path.join(self.tmp, "follow.json")
        follower = subprocess.Popen([SCANCTL, "--server", "127.0.0.1:%d" % source.port, "--json", "copy", "--to",
                                     "127.0.0.1:%d" % target.port, "--no-progress", "--batch", "1",
                                     "--resume-file", checkpoint, "--follow", "--max-retries", "1"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        self.addCleanup(lambda: follower.poll() is None and follower.kill())

        # Writes while the ids are being copied: behind its place ("a/..." sorts first), ahead of
        # it, metadata updates, deletes of images and captions.
        deadline = time.time() + 60
        while target_stub.GetStats(pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S).images < 5:
            self.assertLess(time.time(), deadline, "the copy never started")
            time.sleep(0.01)
        self.upsert(source_stub, self.images("a", 3) + self.images("z", 2), self.captions(33)[30:])
        source_stub.UpdateItems(pb.UpdateItemsRequest(images=[pb.ItemUpdate(id="m/1", set_metadata={"tag": "new"}),
                                                              pb.ItemUpdate(id="m/88", set_collection=True,
                                                                            collection="moved")]),
                                timeout=h.RPC_TIMEOUT_S)
        source_stub.Delete(pb.DeleteRequest(image_ids=["m/2", "m/89"], caption_ids=["cap/00"]), timeout=h.RPC_TIMEOUT_S)
        self.wait_equal(source_stub, target_stub, "following during the copy")

        # And after it, while it follows; through a source killed (-9) and restarted for longer
        # than --max-retries 1 would ride out.
        self.upsert(source_stub, self.images("b", 2))
        source_stub.Delete(pb.DeleteRequest(image_ids=["a/0"]), timeout=h.RPC_TIMEOUT_S)
        self.wait_equal(source_stub, target_stub, "following after the copy")
        source.proc.kill()
        source.proc.wait()
        source.log.close()
        source.log = None
        time.sleep(2)
        source.start()
        source.wait_listening()
        # A connection of its own: the old channel's may still be the killed server's socket.
        channel = grpc.insecure_channel("127.0.0.1:%d" % source.port,
                                        options=h.CHANNEL_OPTIONS + [("grpc.use_local_subchannel_pool", 1)])
        self.addCleanup(channel.close)
        grpc.channel_ready_future(channel).result(timeout=h.START_TIMEOUT_S)
        source_stub = self.pb_grpc.ScanServiceStub(channel)
        self.upsert(source_stub, self.images("b", 4)[2:])
        self.wait_equal(source_stub, target_stub, "following through a source restart")
        queries = h.random_captions(self.rng, 4)
        ids = ["m/0", "m/1", "a/1", "b/0"]
        self.assertSameRanking(self.search_both_ways(target_stub, queries, ids)[0],
                               self.search_both_ways(source_stub, queries, ids)[0], "text->image")
        self.assertSameRanking(self.search_both_ways(target_stub, queries, ids)[1],
                               self.search_both_ways(source_stub, queries, ids)[1], "image->text")

        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=60)
        self.assertEqual(follower.returncode, 0, err)
        summary = json.loads(out.strip().splitlines()[-1])
        # Every write after the copy began: 5 images, 3 captions, 2 updates, 3 deletes; then 2
        # images and a delete; then 2 images. Deletes of items the copy had not reached yet delete
        # nothing there.
        self.assertEqual(summary["changes"], 18, summary)
        self.assertEqual(summary["changes_behind"], 0, summary)  # in step when it stopped
        self.assertGreater(summary["retries"], 0, summary)
        self.assertGreaterEqual(summary["deleted"], 1, summary)  # a/0 at least
        last = source_stub.GetStats(pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S).last_change_sequence
        with open(checkpoint) as f:
            saved = json.load(f)
        self.assertEqual((saved["kind"], saved["changes_after"]), ("changes", last), saved)

        # Stopped: later writes wait for the next run, which catches up from the checkpoint.
        self.upsert(source_stub, self.images("c", 2))
        source_stub.Delete(pb.DeleteRequest(image_ids=["m/3"], caption_ids=["cap/01"]), timeout=h.RPC_TIMEOUT_S)
        code, summary, stderr = self.copy(source, target, "--resume-file", checkpoint)
        self.assertEqual(code, 0, stderr)
        self.assertEqual((summary["images"], summary["deleted"], summary["changes"]), (2, 2, 4), summary)
        self.wait_equal(source_stub, target_stub, "a rerun with the checkpoint", timeout_s=0)

        r = subprocess.run([SCANCTL, "--server", "127.0.0.1:%d" % source.port, "changes", "--after", str(last)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [line.split() for line in r.stdout.splitlines()[1:] if line.strip() and line[0].isdigit()]
        self.assertEqual([(row[2], row[3], row[4]) for row in rows],
                         [("image", "put", "c/0"), ("image", "put", "c/1"), ("image", "delete", "m/3"),
                          ("caption", "delete", "cap/01")], r.stdout)

    def test_a_copy_that_cannot_catch_up_must_start_again(self):
        pb = self.pb
        snapshots = os.path.join(self.tmp, "snapshots")
        source, source_stub = self.start("source", self.old_model,
                                         ["--region-features", "keep", "--change-log-retention-s", "0.2",
                                          "--snapshot-dir", snapshots])
        source.fixed_ports = True
        self.upsert(source_stub, self.images("x", 2))
        time.sleep(0.4)
        self.upsert(source_stub, self.images("y", 1))  # trims x's changes
        target, _ = self.start("target", self.old_model)
        checkpoint = os.path.join(self.tmp, "old.json")
        with open(checkpoint, "w") as f:
            json.dump({"copy": "127.0.0.1:%d -> 127.0.0.1:%d images captions" % (source.port, target.port),
                       "kind": "changes", "after": "", "changes_after": 0}, f)
        # A damaged checkpoint is a usage error naming the field (the file is left for --restart).
        with open(checkpoint) as f:
            good = f.read()
        for damaged, named in (({"kind": "sideways"}, "field 'kind' is unknown"),
                               ({"changes_after": -1}, "field 'changes_after' is out of range"),
                               ({"after": 7}, "field 'after' must be a string")):
            with open(checkpoint, "w") as f:
                json.dump(dict(json.loads(good), **damaged), f)
            code, _, stderr = self.copy(source, target, "--resume-file", checkpoint)
            self.assertEqual(code, 2, stderr)
            self.assertIn(named, stderr)
            self.assertIn("--restart", stderr)
        with open(checkpoint, "w") as f:
            f.write(good)
        # Behind the retention.
        code, summary, stderr = self.copy(source, target, "--resume-file", checkpoint)
        self.assertEqual(code, 1, stderr)
        self.assertIn("OUT_OF_RANGE", stderr)
        self.assertIn("--restart", stderr)
        code, summary, stderr = self.copy(source, target, "--resume-file", checkpoint, "--restart")
        self.assertEqual((code, summary["images"]), (0, 3), stderr)
        # A copy stopped partway through the changes (the target down, no retries) says how far
        # behind it is; the rerun catches up.
        target.fixed_ports = True
        target.kill()
        self.upsert(source_stub, self.images("w", 2))
        code, summary, stderr = self.copy(source, target, "--resume-file", checkpoint, "--max-retries", "0")
        self.assertNotEqual(code, 0, stderr)
        self.assertEqual((summary["images"], summary["changes_behind"]), (0, 2), stderr)
        target.start()
        target.wait_listening()
        code, summary, stderr = self.copy(source, target, "--resume-file", checkpoint)
        self.assertEqual((code, summary["images"], summary["changes_behind"]), (0, 2, 0), stderr)
        r = subprocess.run([SCANCTL, "--server", "127.0.0.1:%d" % source.port, "changes"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("no longer kept", r.stderr)

        # The source restored from a snapshot taken before later writes: its log is another, whose
        # next sequences repeat numbers the copy already applied from the original's.
        snapshot = source_stub.CreateSnapshot(pb.CreateSnapshotRequest(name="before"), timeout=h.RPC_TIMEOUT_S)
        self.upsert(source_stub, self.images("z", 2))
        code, summary, stderr = self.copy(source, target, "--resume-file", checkpoint)
        self.assertEqual((code, summary["images"]), (0, 2), stderr)
        source.kill()
        source.data_dir = snapshot.data_dir
        source.start()
        source.wait_listening()
        code, summary, stderr = self.copy(source, target, "--resume-file", checkpoint)
        self.assertEqual(code, 1, stderr)
        self.assertIn("not the change log the reader was following", stderr)  # ahead of the restored log
        self.assertNotIn("rerun the same command", stderr)
        channel = grpc.insecure_channel("127.0.0.1:%d" % source.port,
                                        options=h.CHANNEL_OPTIONS + [("grpc.use_local_subchannel_pool", 1)])
        self.addCleanup(channel.close)
        self.upsert(self.pb_grpc.ScanServiceStub(channel), self.images("w", 3))  # its sequences pass the copy's
        code, summary, stderr = self.copy(source, target, "--resume-file", checkpoint)
        self.assertEqual(code, 1, stderr)
        self.assertIn("restored from a snapshot", stderr)


if __name__ == "__main__":
    unittest.main()
