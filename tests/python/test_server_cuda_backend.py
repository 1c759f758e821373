"""scanserve with --backend cuda against scanserve with --backend cpu, through gRPC.

    SCANSERVE_BUILD_DIR=build /usr/bin/python3 tests/python/test_server_cuda_backend.py

The CUDA server is SCANSERVE_CUDA_SERVER when set (on a GPU machine: the real `server/scanserve`),
else the build's `tests/cuda_emulation/scanserve_emulated_cuda`: the same server, its CUDA backend
running on the CPU against the emulated CUDA (tests/cuda_emulation/README.md). Skips (exit 77) when
there is neither.

Both servers load the same tiny random model and receive the same images and captions; the CUDA
one stores fp32, so the two must agree to rounding. Checked:
  * --cuda-kernels fused on bf16 against the CPU on bf16: the same hits and scores, and every
    pass on the fused kernel (scanserve_scorer_passes_total{kernel}); --cuda-kernels auto: the
    same, with passes on both kernels (it times both before it chooses);
  * --cuda-query-precision bf16 (rounded queries) against the CPU on bf16: the same hits, scores
    within bf16's tolerance but not within the split queries' (the rounding is on);
  * text -> image and image -> text (stored id and raw features) give the same hits and scores,
    with and without a collection filter (the filtered search is answered from the device's top
    list: scanserve_engine_ranked_queries_total{path="top_lists"} grows);
  * after deletes and upserts (the device copy compacts), still the same;
  * after a restart the CUDA server reloads its store into device memory and answers the same;
  * emulated device only (its size is an environment variable there): /metrics reports the
    device's memory; a device too small for the ingest refuses the overflow with
    RESOURCE_EXHAUSTED per item, keeps what it acked, and stays SERVING;
  * emulated device only (it can inject failures): a device copy that fails while a delete is
    applied does not crash the server; health turns NOT_SERVING, searches fail, and a restart
    serves exactly what the store holds.
"""
import time

import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scanserve_harness as h  # noqa: E402

h.skip_if_server_disabled()

EMULATED_SERVER = os.path.join(h.BUILD_DIR, "tests", "cuda_emulation", "scanserve_emulated_cuda")
CUDA_SERVER = os.environ.get("SCANSERVE_CUDA_SERVER") or EMULATED_SERVER
EMULATED = os.path.realpath(CUDA_SERVER) == os.path.realpath(EMULATED_SERVER)
if not os.path.isfile(CUDA_SERVER):
    print("skipped: no CUDA server (%s not built, SCANSERVE_CUDA_SERVER not set)" % CUDA_SERVER)
    sys.exit(77)

h.require_grpc()
import grpc  # noqa: E402

SCORE_TOL = 1e-4
# Queries rounded to bf16 (~2^-9 relative) as well as the items: bf16 storage's tolerance against
# exact scoring (tests/engine/scoring/scoring_test_util.h, kBf16MaxRelErr; scores here are < 1).
BF16_QUERY_TOL = 3e-3
N_IMAGES = 60
N_CAPTIONS = 40


def cuda_server(tmp, name, model, data_dir, env=None, extra=("--storage", "fp32")):
    """A started CUDA server storing fp32 by default (so that it agrees with the CPU server to
    rounding)."""
    return h.ServerProcess(tmp, name, [model], data_dir, extra=["--backend", "cuda"] + list(extra),
                           binary=CUDA_SERVER, env=env).start()


class CudaBackendTest(unittest.TestCase):

    def setUp(self):
        h.require_executable(h.SERVER, "the scanserve server")
        self.tmp = h.make_tmp("scan_cuda_backend_")
        self.addCleanup(h.remove_tmp, self.tmp)
        self.pb, self.pb_grpc = h.generate_stubs(os.path.join(self.tmp, "stubs"))
        self.model = h.make_model(self.tmp, seed=3)
        rng = np.random.default_rng(5)
        self.images = h.random_images(rng, N_IMAGES, min_regions=1, max_regions=12)
        self.captions = h.random_captions(rng, N_CAPTIONS)
        self.queries = h.random_captions(rng, 6)

    def start(self, server):
        self.addCleanup(server.kill)
        server.wait_listening()
        channel = grpc.insecure_channel("127.0.0.1:%d" % server.port, options=h.CHANNEL_OPTIONS)
        self.addCleanup(channel.close)
        return self.pb_grpc.ScanServiceStub(channel)

    def upsert(self, stub, image_ids):
        req = self.pb.UpsertImagesRequest()
        for i in image_ids:
            img = req.images.add(id="img%d" % i, collection="odd" if i % 2 else "even")
            img.region_features.CopyFrom(h.features_msg(self.pb, self.images[i]))
        res = stub.UpsertImages(req, timeout=h.RPC_TIMEOUT_S)
        return [(r.id, r.code, r.message) for r in res.results]

    def fill(self, stub):
        for start in range(0, N_IMAGES, 20):
            for id_, code, message in self.upsert(stub, range(start, min(start + 20, N_IMAGES))):
                self.assertEqual(code, 0, "%s: %s" % (id_, message))
        req = self.pb.UpsertCaptionsRequest()
        for j, text in enumerate(self.captions):
            req.captions.add(id="cap%d" % j, text=text, collection="odd" if j % 2 else "even")
        for r in stub.UpsertCaptions(req, timeout=h.RPC_TIMEOUT_S).results:
            self.assertEqual(r.code, 0, r.message)

    def search_all(self, stub):
        """Every search this test compares: name -> list of hit lists [(id, score)]."""
        out = {}
        for collection in ("", "odd"):
            for top_k in (1, 7):
                req = self.pb.SearchImagesRequest(queries=self.queries, top_k=top_k)
                req.filter.collection = collection
                res = stub.SearchImages(req, timeout=h.RPC_TIMEOUT_S)
                out["t2i %r top %d" % (collection, top_k)] = [[(x.id, x.score) for x in r.hits] for r in res.results]
        req = self.pb.SearchCaptionsRequest(top_k=5)
        req.queries.add(image_id="img3")
        req.queries.add(image_id="img10")
        req.queries.add().region_features.CopyFrom(h.features_msg(self.pb, self.images[7]))
        res = stub.SearchCaptions(req, timeout=h.RPC_TIMEOUT_S)
        out["i2t"] = [[(x.id, x.score) for x in r.hits] for r in res.results]
        req.filter.collection = "even"
        res = stub.SearchCaptions(req, timeout=h.RPC_TIMEOUT_S)
        out["i2t 'even'"] = [[(x.id, x.score) for x in r.hits] for r in res.results]
        return out

    def assert_same(self, want_all, got_all, when, tol=SCORE_TOL):
        self.assertEqual(sorted(want_all), sorted(got_all))
        for name, want in want_all.items():
            got = got_all[name]
            self.assertEqual(len(got), len(want), "%s, %s" % (when, name))
            for q, (w, g) in enumerate(zip(want, got)):
                self.assertEqual(len(g), len(w), "%s, %s, query %d" % (when, name, q))
                for rank, ((wid, ws), (gid, gs)) in enumerate(zip(w, g)):
                    where = "%s, %s, query %d, rank %d" % (when, name, q, rank)
                    self.assertAlmostEqual(gs, ws, delta=tol, msg=where)
                    if gid != wid:  # only a tie to rounding may swap two hits
                        other = dict(w).get(gid)
                        self.assertIsNotNone(other, "%s: %s is not among the CPU's hits" % (where, gid))
                        self.assertAlmostEqual(other, gs, delta=tol, msg=where)

    def ranked(self, server, path):
        return h.metric_value(h.parse_metrics(server.scrape()), "scanserve_engine_ranked_queries_total", path=path)

    def test_cuda_server_answers_as_the_cpu_server(self):
        cpu = h.ServerProcess(self.tmp, "cpu", [self.model], os.path.join(self.tmp, "data_cpu"))
        cpu_stub = self.start(cpu.start())
        cuda = cuda_server(self.tmp, "cuda", self.model, os.path.join(self.tmp, "data_cuda"))
        cuda_stub = self.start(cuda)
        stats = cuda_stub.GetStats(self.pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S)
        self.assertTrue(stats.backend.startswith("cuda"), stats.backend)
        self.assertEqual(stats.storage, "fp32")

        self.fill(cpu_stub)
        self.fill(cuda_stub)
        top_lists_before = self.ranked(cuda, "top_lists")
        self.assert_same(self.search_all(cpu_stub), self.search_all(cuda_stub), "after ingest")
        self.assertGreater(self.ranked(cuda, "top_lists"), top_lists_before,
                           "filtered searches on the CUDA backend are answered from device top lists")

        # Deletes and re-upserts: the device copy compacts and the moved items are scored alike.
        for stub in (cpu_stub, cuda_stub):
            res = stub.Delete(self.pb.DeleteRequest(image_ids=["img%d" % i for i in (0, 5, 11, 12, 40)],
                                                    caption_ids=["cap1", "cap2"]), timeout=h.RPC_TIMEOUT_S)
            self.assertTrue(all(r.code == 0 for r in list(res.image_results) + list(res.caption_results)))
            self.assertTrue(all(code == 0 for _, code, _ in self.upsert(stub, [5, 20, 33])))
        self.assert_same(self.search_all(cpu_stub), self.search_all(cuda_stub), "after deletes and upserts")

        # A restart reloads the durable store into device memory.
        cuda.kill()
        cuda2 = cuda_server(self.tmp, "cuda2", self.model, os.path.join(self.tmp, "data_cuda"))
        cuda2_stub = self.start(cuda2)
        stats = cuda2_stub.GetStats(self.pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S)
        self.assertEqual(stats.images, N_IMAGES - 4)  # 5 deleted, 1 of them re-added
        self.assert_same(self.search_all(cpu_stub), self.search_all(cuda2_stub), "after a restart")

    def test_fused_and_auto_kernels_answer_as_the_cpu_server(self):
        """--cuda-kernels fused on bf16 storage against the CPU server on bf16: the same rounded
        items, the queries exact to ~2^-16 (bf16 hi + lo), so the same hits and scores to 1e-4;
        every pass took the fused kernel (scanserve_scorer_passes_total). --cuda-kernels auto:
        the same answers, from passes on both kernels."""
        cpu = h.ServerProcess(self.tmp, "cpu", [self.model], os.path.join(self.tmp, "data_cpu"),
                              extra=["--storage", "bf16"])
        cpu_stub = self.start(cpu.start())
        cuda = cuda_server(self.tmp, "cuda", self.model, os.path.join(self.tmp, "data_cuda"),
                           extra=["--storage", "bf16", "--cuda-kernels", "fused"])
        cuda_stub = self.start(cuda)
        self.fill(cpu_stub)
        self.fill(cuda_stub)
        self.assert_same(self.search_all(cpu_stub), self.search_all(cuda_stub), "fused, bf16")
        samples = h.parse_metrics(cuda.scrape())
        self.assertGreater(h.metric_value(samples, "scanserve_scorer_passes_total", kernel="fused"), 0)
        self.assertEqual(h.metric_value(samples, "scanserve_scorer_passes_total", kernel="gemm"), 0)
        # The CPU server has no scorer passes by kernel.
        self.assertEqual(h.metric_value(h.parse_metrics(cpu.scrape()), "scanserve_scorer_passes_total"), 0)

        # --cuda-kernels auto: each pass on one of the two, both timed first; the same answers.
        auto = cuda_server(self.tmp, "cuda_auto", self.model, os.path.join(self.tmp, "data_cuda_auto"),
                           extra=["--storage", "bf16", "--cuda-kernels", "auto"])
        auto_stub = self.start(auto)
        self.fill(auto_stub)
        for round_ in range(3):
            self.assert_same(self.search_all(cpu_stub), self.search_all(auto_stub), "auto, round %d" % round_)
        samples = h.parse_metrics(auto.scrape())
        self.assertGreater(h.metric_value(samples, "scanserve_scorer_passes_total", kernel="fused"), 0)
        self.assertGreater(h.metric_value(samples, "scanserve_scorer_passes_total", kernel="gemm"), 0)
        # What it chose, per direction and query rows: one kernel per decided range, and the
        # median times it chose by.
        chosen = [(labels, v) for name, labels, v in samples if name == "scanserve_scorer_kernel_chosen"]
        decided = {(l["direction"], l["query_rows"]) for l, v in chosen if v == 1}
        self.assertTrue(decided, chosen)
        for direction, rows in decided:
            self.assertEqual(sum(v for l, v in chosen
                                 if (l["direction"], l["query_rows"]) == (direction, rows)), 1)
            self.assertGreater(h.metric_value(samples, "scanserve_scorer_kernel_pass_seconds",
                                              direction=direction, query_rows=rows, kernel="fused"), 0)
            self.assertGreater(h.metric_value(samples, "scanserve_scorer_kernel_pass_seconds",
                                              direction=direction, query_rows=rows, kernel="gemm"), 0)

    def test_rounded_queries_rank_as_the_cpu_server_to_bf16_tolerance(self):
        """--cuda-query-precision bf16 (queries rounded to bf16 too, half the tensor work) on bf16
        storage against the CPU server on bf16: the same hits, scores within bf16's tolerance
        (3e-3), and different from the CPU's by more than the split queries' ~1e-6 (so the
        rounding is really on); GetStats says which queries each server runs. With
        --cuda-kernels auto, so that both kernels score rounded queries."""
        cpu = h.ServerProcess(self.tmp, "cpu", [self.model], os.path.join(self.tmp, "data_cpu"),
                              extra=["--storage", "bf16"])
        cpu_stub = self.start(cpu.start())
        rounded = cuda_server(self.tmp, "cuda_q_bf16", self.model, os.path.join(self.tmp, "data_cuda"),
                              extra=["--storage", "bf16", "--cuda-query-precision", "bf16",
                                     "--cuda-kernels", "auto"])
        rounded_stub = self.start(rounded)
        get_stats = lambda stub: stub.GetStats(self.pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S)
        self.assertEqual(get_stats(cpu_stub).query_precision, "fp32")
        self.assertEqual(get_stats(rounded_stub).query_precision, "bf16")
        self.fill(cpu_stub)
        self.fill(rounded_stub)
        want = self.search_all(cpu_stub)
        largest = 0.0
        for round_ in range(3):
            got = self.search_all(rounded_stub)
            self.assert_same(want, got, "queries rounded to bf16, round %d" % round_, tol=BF16_QUERY_TOL)
            for name in want:
                for w, g in zip(want[name], got[name]):
                    scores = dict(w)
                    largest = max([largest] + [abs(gs - scores[gid]) for gid, gs in g if gid in scores])
        print("rounded queries: largest |score - CPU bf16 score| %.3g" % largest)
        self.assertGreater(largest, 2e-5, "the queries are not rounded")
        samples = h.parse_metrics(rounded.scrape())
        self.assertEqual(h.metric_value(samples, "scanserve_scorer_info", storage="bf16", query_precision="bf16"), 1)
        self.assertEqual(h.metric_value(h.parse_metrics(cpu.scrape()), "scanserve_scorer_info",
                                        backend="cpu", storage="bf16", query_precision="fp32"), 1)
        self.assertGreater(h.metric_value(samples, "scanserve_scorer_passes_total", kernel="fused"), 0)
        self.assertGreater(h.metric_value(samples, "scanserve_scorer_passes_total", kernel="gemm"), 0)

    def health(self, server):
        """(exit code, output) of `scanctl health` against the server."""
        r = h.subprocess.run([os.path.join(h.BUILD_DIR, "client", "scanctl"), "--server",
                              "127.0.0.1:%d" % server.port, "health"], stdout=h.subprocess.PIPE,
                             stderr=h.subprocess.STDOUT, universal_newlines=True, timeout=30)
        return r.returncode, r.stdout

    @unittest.skipUnless(EMULATED, "needs the emulated device, which can inject failures")
    def test_device_fault_turns_not_serving_and_a_restart_recovers(self):
        fault_file = os.path.join(self.tmp, "fault")
        data = os.path.join(self.tmp, "data_fault")
        server = cuda_server(self.tmp, "fault", self.model, data,
                             env={"SCANSERVE_CUDA_EMULATION_FAULT_FILE": fault_file})
        stub = self.start(server)
        self.fill(stub)
        with open(fault_file, "w") as f:
            f.write("memcpy-d2d\n")
        res = stub.Delete(self.pb.DeleteRequest(image_ids=["img3", "img8"]), timeout=h.RPC_TIMEOUT_S)
        self.assertFalse(os.path.exists(fault_file), "the injected fault fired")
        self.assertEqual([r.code for r in res.image_results], [0, 0], "the delete is durable")
        deadline = time.time() + 20
        while time.time() < deadline and self.health(server)[0] == 0:
            time.sleep(0.2)
        code, out = self.health(server)
        self.assertNotEqual(code, 0, out)
        self.assertIn("NOT_SERVING", out)
        with self.assertRaises(grpc.RpcError) as caught:
            stub.SearchImages(self.pb.SearchImagesRequest(queries=self.queries[:1]), timeout=h.RPC_TIMEOUT_S)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INTERNAL)
        self.assertTrue(server.alive(), "the server keeps running")

        server.kill()
        restarted = cuda_server(self.tmp, "fault2", self.model, data)
        stub = self.start(restarted)
        self.assertEqual(self.health(restarted)[0], 0)
        res = stub.SearchImages(self.pb.SearchImagesRequest(queries=self.queries[:1], top_k=N_IMAGES),
                                timeout=h.RPC_TIMEOUT_S)
        ids = sorted(x.id for x in res.results[0].hits)
        self.assertEqual(ids, sorted("img%d" % i for i in range(N_IMAGES) if i not in (3, 8)))

    def limit_on(self, name, device_bytes):
        """(server, stub, feature_bytes_limit) of a CUDA server on an emulated device of that size."""
        server = cuda_server(self.tmp, name, self.model, os.path.join(self.tmp, "data_" + name),
                             env={"SCANSERVE_CUDA_EMULATION_MEMORY_BYTES": str(device_bytes)})
        stub = self.start(server)
        return server, stub, stub.GetStats(self.pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S).feature_bytes_limit

    @unittest.skipUnless(EMULATED, "needs the emulated device, whose size the test sets")
    def test_full_device_refuses_ingest_with_resource_exhausted(self):
        # The limit is the device's size, less 5 %, less what the scorers hold besides the store:
        # measured on a large device, then a device sized for ~30 images.
        big = 600 << 20
        server, _, limit = self.limit_on("big", big)
        server.kill()
        overhead = big - big // 20 - limit
        target = 60000
        small = (overhead + target) * 20 // 19 + 1
        server, stub, limit = self.limit_on("small", small)
        print("device %d bytes: feature_bytes_limit %d" % (small, limit))
        self.assertGreater(limit, 0)
        self.assertLess(limit, 2 * target)
        samples = h.parse_metrics(server.scrape())
        self.assertEqual(h.metric_value(samples, "scanserve_device_memory_total_bytes"), small)
        self.assertGreater(h.metric_value(samples, "scanserve_device_memory_free_bytes"), 0)

        accepted, refused = [], []
        for start in range(0, N_IMAGES, 10):
            for id_, code, message in self.upsert(stub, range(start, start + 10)):
                if code == 0:
                    accepted.append(id_)
                else:
                    self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "%s: %s" % (id_, message))
                    self.assertIn("device memory", message)
                    refused.append(id_)
        self.assertTrue(accepted and refused, "a device sized for about 30 images takes some of %d" % N_IMAGES)
        stats = stub.GetStats(self.pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S)
        self.assertEqual(stats.images, len(accepted))
        self.assertLessEqual(stats.feature_bytes_committed, limit)

        def served_ids(stub):
            res = stub.SearchImages(self.pb.SearchImagesRequest(queries=self.queries[:1], top_k=N_IMAGES),
                                    timeout=h.RPC_TIMEOUT_S)
            return sorted(x.id for x in res.results[0].hits)
        self.assertEqual(served_ids(stub), sorted(accepted))
        code, out = self.health(server)
        self.assertEqual(code, 0, out)
        self.assertIn("SERVING", out)

        # What was acked is reloaded onto the same small device after a restart.
        server.kill()
        server = cuda_server(self.tmp, "small2", self.model, os.path.join(self.tmp, "data_small"),
                             env={"SCANSERVE_CUDA_EMULATION_MEMORY_BYTES": str(small)})
        self.assertEqual(served_ids(self.start(server)), sorted(accepted))


if __name__ == "__main__":
    unittest.main()
