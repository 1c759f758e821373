"""End-to-end: the real `scanserve` binary with the REAL bottom-up detector (random weights), from Python.

    SCANSERVE_BUILD_DIR=build /usr/bin/python3 tests/python/test_server_detector.py

The detector directory comes from bottom_up_checkpoints.make_detector_dir (a synthetic Caffe model
converted by tools/convert_bottom_up_caffemodel.py, cached under $SCANSERVE_BUILD_DIR/test-detector/);
the SCAN model is a tiny random one with img_dim 2048. Checked:
  * the server logs the detector it loaded; health SERVING; GetStats reports detector_loaded and its
    summary;
  * Ingest of 2 real JPEGs (../shared/data/bottom-up-golden/images, or generated with cv2) as image
    bytes: stored, 36 regions each (the scorers' byte count grows exactly as for a 36-region
    features image), searchable, explain returns boxes inside the image and labels;
  * SearchCaptions with the same image's bytes scores like SearchCaptions by its stored id;
  * corrupt bytes, a truncated JPEG, zero bytes, text, and a PNG declaring 20000 x 20000 pixels are
    INVALID_ARGUMENT for that item only (a features item in the same call is stored), and for a
    SearchCaptions query; the server keeps serving;
  * scanctl sends image files as bytes (import images, upsert-image --image, search-captions --image);
  * restart on the same data directory: the images are still there and searchable with their boxes,
    and /metrics shows that the detector did not run again.
The real detector takes seconds per image on a CPU, so only 3 images are detected in all.

Skips (exit 77) when the build has no server, or when tests/python/bottom_up_checkpoints.py (or its
make_detector_dir) is not there yet.
"""

import glob
import inspect
import json
import os
import struct
import subprocess
import sys
import time
import unittest
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import scanserve_harness as harness  # noqa: E402

harness.skip_if_server_disabled()
harness.require_grpc()
import grpc  # noqa: E402

try:
    import bottom_up_checkpoints as buc  # noqa: E402
except ImportError as e:
    print("skipped: tests/python/bottom_up_checkpoints.py is not available (%s)" % e)
    sys.exit(77)
if not hasattr(buc, "make_detector_dir"):
    print("skipped: bottom_up_checkpoints.make_detector_dir is not there yet")
    sys.exit(77)

import scan_checkpoints as sc  # noqa: E402

SCANCTL = os.path.join(harness.BUILD_DIR, "client", "scanctl")
GOLDEN_IMAGES = os.path.join(harness.SOURCE_DIR, "..", "shared", "data", "bottom-up-golden", "images")
DETECT_TIMEOUT_S = 600     # an RPC that runs the detector (seconds per image on a CPU, first call slower)
START_TIMEOUT_S = 300      # loading ~200 MB of detector weights
SCORE_RTOL = 1e-4          # image bytes query vs the stored image (same detector, batched vs alone)
REGIONS = 36
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def detector_dir():
    kwargs = {"seed": 0, "boxes": "36"}
    params = inspect.signature(buc.make_detector_dir).parameters
    if "log" in params:
        kwargs["log"] = lambda s: print(s, flush=True)
    if "out_dir" in params:
        kwargs["out_dir"] = None  # the shared cache under $SCANSERVE_BUILD_DIR/test-detector/
    return buc.make_detector_dir(**kwargs)


def test_jpegs(tmp):
    """Two real JPEGs (bytes, width, height): the golden COCO images, or generated ones."""
    paths = sorted(glob.glob(os.path.join(GOLDEN_IMAGES, "*.jpg")))[:2]
    out = []
    if len(paths) == 2:
        import cv2
        for p in paths:
            with open(p, "rb") as f:
                data = f.read()
            img = cv2.imread(p)
            out.append((data, img.shape[1], img.shape[0]))
        return out
    import cv2
    rng = np.random.default_rng(7)
    for i in range(2):
        h, w = 360 + 40 * i, 480
        img = np.full((h, w, 3), 200, np.uint8)
        for _ in range(6):
            x, y = int(rng.integers(0, w - 100)), int(rng.integers(0, h - 100))
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.rectangle(img, (x, y), (x + int(rng.integers(30, 100)), y + int(rng.integers(30, 100))), color, -1)
        ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        out.append((enc.tobytes(), w, h))
    return out


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)


def huge_png(width=20000, height=20000, rows=16):
    """A valid PNG header declaring width x height RGB pixels, with the first `rows` rows of zeros (a
    few hundred bytes): a decoder that trusted the header would allocate 1.2 GB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + bytes(3 * width) for _ in range(rows))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw, 9)) +
            png_chunk(b"IEND", b""))


class DetectorServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.require_executable(harness.SERVER, "scanserve")
        cls.tmp = harness.make_tmp("scanserve-detector-")
        cls.pb, cls.pb_grpc = harness.generate_stubs(os.path.join(cls.tmp, "stubs"))
        t = time.time()
        cls.detector = detector_dir()
        print("detector directory %s (%.1f s)" % (cls.detector, time.time() - t), flush=True)
        cls.model = harness.make_model(cls.tmp, seed=0, img_dim=2048)  # the detector's pool5 width
        cls.data_dir = os.path.join(cls.tmp, "data")
        cls.images = test_jpegs(cls.tmp)
        cls.server = None
        cls.start_server("first")

    @classmethod
    def tearDownClass(cls):
        cls.stop_server()
        harness.remove_tmp(cls.tmp)

    @classmethod
    def start_server(cls, name):
        cls.server = harness.ServerProcess(cls.tmp, name, [cls.model], cls.data_dir,
                                           extra=["--detector-dir", cls.detector, "--detector-workers", "1",
                                                  "--detector-queue", "8"]).start()
        t = time.time()
        cls.server.wait_listening(timeout=START_TIMEOUT_S)
        print("%s server up in %.1f s" % (name, time.time() - t), flush=True)
        cls.channel = grpc.insecure_channel("127.0.0.1:%d" % cls.server.port, options=harness.CHANNEL_OPTIONS)
        cls.stub = cls.pb_grpc.ScanServiceStub(cls.channel)

    @classmethod
    def stop_server(cls):
        if cls.server is not None:
            cls.channel.close()
            cls.server.kill()
            cls.server = None

    def fail_with_log(self, message):
        self.fail("%s\n--- server log ---\n%s" % (message, self.server.log_tail()))

    def stats(self):
        return self.stub.GetStats(self.pb.GetStatsRequest(), timeout=harness.RPC_TIMEOUT_S)

    def metric(self, name, **labels):
        return harness.metric_value(harness.parse_metrics(self.server.scrape()), name, **labels)

    def search_images(self, text, top_k=10):
        return self.stub.SearchImages(self.pb.SearchImagesRequest(queries=[text], top_k=top_k, explain=True),
                                      timeout=harness.RPC_TIMEOUT_S).results[0].hits

    def check_explained(self, hits, ids):
        self.assertEqual(sorted(h.id for h in hits if h.id in ids), sorted(ids))
        sizes = {"photo/%d" % i: (w, h) for i, (_, w, h) in enumerate(self.images)}
        for hit in hits:
            if hit.id not in sizes:
                continue
            self.assertGreater(len(hit.explanation), 0, hit.id)
            w, h = sizes[hit.id]
            for word in hit.explanation:
                self.assertTrue(0 <= word.region < REGIONS, (hit.id, word.word, word.region))
                self.assertTrue(word.HasField("box"), (hit.id, word.word))
                b = word.box
                self.assertTrue(0 <= b.x1 <= b.x2 <= w and 0 <= b.y1 <= b.y2 <= h, (hit.id, w, h, b))
                self.assertTrue(word.label, "every detected region has a label: %s %s" % (hit.id, word.word))

    # ---- the steps run in name order and share the server ----

    def test_1_ingest_and_search(self):
        pb = self.pb
        self.assertIn("detector: %s" % self.detector, self.server.log_tail(200000), "the server logs its detector")
        self.assertEqual(harness.health_status(self.channel), 1)
        stats = self.stats()
        self.assertTrue(stats.detector_loaded)
        self.assertTrue(stats.detector, "GetStats carries the detector's summary")
        self.assertEqual(self.metric("scanserve_detector_seconds_count"), 0)

        before = stats.feature_bytes
        requests = [pb.IngestRequest(image=pb.Image(id="photo/%d" % i, collection="photos", image_bytes=data,
                                                    metadata={"file": "%d.jpg" % i}))
                    for i, (data, _, _) in enumerate(self.images)]
        t = time.time()
        responses = list(self.stub.Ingest(iter(requests), timeout=DETECT_TIMEOUT_S))
        print("ingest of 2 images through the detector: %.1f s" % (time.time() - t), flush=True)
        self.assertEqual([r.result.id for r in responses], ["photo/0", "photo/1"])
        for r in responses:
            if r.result.code != 0:
                self.fail_with_log("ingest of %s failed: %d %s" % (r.result.id, r.result.code, r.result.message))
        stats = self.stats()
        self.assertEqual(stats.images, 2)
        grown = stats.feature_bytes - before
        captions = [pb.Caption(id="cap/%d" % i, text=t)
                    for i, t in enumerate(["a man riding a horse on the beach", "two dogs play in the snow"])]
        r = self.stub.UpsertCaptions(pb.UpsertCaptionsRequest(captions=captions), timeout=harness.RPC_TIMEOUT_S)
        self.assertEqual([x.code for x in r.results], [0, 0])

        # 36 regions each: the scorers' bytes grow exactly as for a 36-region features image.
        rng = np.random.default_rng(3)
        probe = sc.random_region_features(rng, REGIONS, 2048)
        before = self.stats().feature_bytes
        r = self.stub.UpsertImages(pb.UpsertImagesRequest(images=[pb.Image(id="probe", region_features=harness.features_msg(pb, probe))]),
                                   timeout=harness.RPC_TIMEOUT_S)
        self.assertEqual(r.results[0].code, 0, r.results[0].message)
        per_36 = self.stats().feature_bytes - before
        d = self.stub.Delete(pb.DeleteRequest(image_ids=["probe"]), timeout=harness.RPC_TIMEOUT_S)
        self.assertEqual(d.image_results[0].code, 0)
        self.assertGreater(per_36, 0)
        self.assertEqual(grown, 2 * per_36, "each detected image holds %d regions" % REGIONS)

        hits = self.search_images("a man riding a horse")
        self.check_explained(hits, ["photo/0", "photo/1"])
        self.assertEqual(dict(next(h for h in hits if h.id == "photo/0").metadata), {"file": "0.jpg"})

        # Image bytes as a query: the same image's stored regions, scored alike.
        by_id = self.stub.SearchCaptions(pb.SearchCaptionsRequest(queries=[pb.ImageQuery(image_id="photo/1")], top_k=2),
                                         timeout=harness.RPC_TIMEOUT_S).results[0].hits
        by_bytes = self.stub.SearchCaptions(
            pb.SearchCaptionsRequest(queries=[pb.ImageQuery(image_bytes=self.images[1][0])], top_k=2),
            timeout=DETECT_TIMEOUT_S).results[0].hits
        self.assertEqual([h.id for h in by_bytes], [h.id for h in by_id])
        for a, b in zip(by_bytes, by_id):
            self.assertLessEqual(abs(a.score - b.score), SCORE_RTOL * max(1.0, abs(b.score)), (a, b))

        samples = harness.parse_metrics(self.server.scrape())
        self.assertEqual(harness.metric_value(samples, "scanserve_detector_images_total", result="OK"), 3)
        self.assertGreaterEqual(harness.metric_value(samples, "scanserve_detector_seconds_count"), 2)
        self.assertEqual(harness.metric_value(samples, "scanserve_detector_queue_depth"), 0)

    def test_2_bad_images_are_invalid_argument_and_the_server_keeps_serving(self):
        pb = self.pb
        jpeg = self.images[0][0]
        rng = np.random.default_rng(11)
        bad = {
            "corrupt": b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(),
            "truncated": jpeg[:len(jpeg) // 2],
            "empty": b"",
            "text": b"this is a caption, not an image\n" * 10,
            "huge": huge_png(),
        }
        images = [pb.Image(id="bad/" + name, image_bytes=data) for name, data in bad.items()]
        feats = sc.random_region_features(rng, 5, 2048)
        images.append(pb.Image(id="fine/features", region_features=harness.features_msg(pb, feats)))
        t = time.time()
        r = self.stub.UpsertImages(pb.UpsertImagesRequest(images=images), timeout=DETECT_TIMEOUT_S)
        print("5 bad images answered in %.1f s" % (time.time() - t), flush=True)
        self.assertEqual(len(r.results), len(images))
        for result, name in zip(r.results, list(bad) + ["features"]):
            if name == "features":
                self.assertEqual(result.code, 0, "a good item in the same call is stored: %s" % result.message)
            elif result.code != INVALID.value[0]:
                self.fail_with_log("%s image: expected INVALID_ARGUMENT, got %d %s" % (name, result.code, result.message))
            else:
                self.assertIn("bad/" + name, result.message, "the message names the image")
        self.assertEqual(self.stats().images, 3)

        # The same through the Ingest stream and as a SearchCaptions query.
        responses = list(self.stub.Ingest(iter([pb.IngestRequest(image=pb.Image(id="bad/stream", image_bytes=bad["truncated"]))]),
                                          timeout=DETECT_TIMEOUT_S))
        self.assertEqual(responses[0].result.code, INVALID.value[0], responses[0].result.message)
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.SearchCaptions(pb.SearchCaptionsRequest(queries=[pb.ImageQuery(image_bytes=bad["huge"])]),
                                     timeout=DETECT_TIMEOUT_S)
        self.assertEqual(ctx.exception.code(), INVALID, ctx.exception.details())

        # Still serving.
        self.assertTrue(self.server.alive(), self.server.log_tail())
        self.assertEqual(harness.health_status(self.channel), 1)
        self.check_explained(self.search_images("two dogs"), ["photo/0", "photo/1"])
        samples = harness.parse_metrics(self.server.scrape())
        self.assertGreaterEqual(harness.metric_value(samples, "scanserve_detector_images_total", result="InvalidArgument"), 7)
        d = self.stub.Delete(pb.DeleteRequest(image_ids=["fine/features"]), timeout=harness.RPC_TIMEOUT_S)
        self.assertEqual(d.image_results[0].code, 0)

    def test_2b_scanctl_sends_image_files_as_bytes(self):
        """scanctl upsert-image --image, search-captions --image and import images send the files' bytes
        (bad files here, so that the server's detector answers at once)."""
        if not os.path.isfile(SCANCTL):
            self.skipTest("scanctl not built")
        files = os.path.join(self.tmp, "files")
        os.makedirs(files, exist_ok=True)
        with open(os.path.join(files, "cut.jpg"), "wb") as f:
            f.write(self.images[0][0][:1000])
        with open(os.path.join(files, "notes.PNG"), "wb") as f:
            f.write(b"not a png")
        with open(os.path.join(files, "readme.txt"), "w") as f:
            f.write("not an image file name: not imported")
        base = [SCANCTL, "--server", "127.0.0.1:%d" % self.server.port, "--timeout", "120"]

        r = subprocess.run(base + ["--json", "import", "images", files, "--no-progress", "--restart"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        self.assertEqual(r.returncode, 1, r.stderr)
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual((summary["acked"], summary["failed"]), (2, 2), r.stdout + r.stderr)
        self.assertIn("INVALID_ARGUMENT", r.stderr)
        self.assertIn("'cut'", r.stderr)

        r = subprocess.run(base + ["upsert-image", "x", "--image", os.path.join(files, "notes.PNG")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("INVALID_ARGUMENT", r.stdout + r.stderr)
        r = subprocess.run(base + ["search-captions", "--image", os.path.join(files, "cut.jpg")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("INVALID_ARGUMENT", r.stdout + r.stderr)
        self.assertEqual(self.stats().images, 2)

    def test_3_restart_keeps_the_images_without_running_the_detector(self):
        type(self).stop_server()
        type(self).start_server("restarted")
        stats = self.stats()
        self.assertEqual(stats.images, 2)
        self.assertTrue(stats.detector_loaded)
        self.check_explained(self.search_images("a man riding a horse"), ["photo/0", "photo/1"])
        samples = harness.parse_metrics(self.server.scrape())
        self.assertEqual(harness.metric_value(samples, "scanserve_detector_seconds_count"), 0,
                         "stored images are not detected again")
        self.assertEqual(harness.metric_value(samples, "scanserve_detector_images_total"), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
