"""End-to-end: the real `scanserve` binary, driven from Python over gRPC (interop with the C++ server).

    SCANSERVE_BUILD_DIR=build /usr/bin/python3 tests/python/test_server_e2e.py

A tiny random SCAN model (scan_checkpoints.py -> tools/convert_scan_checkpoint.py) is served on a free
loopback port; Python stubs are generated at test time from proto/ with grpc_tools.protoc. Checked:
  * health SERVING after start (Check and Watch), reflection lists the service, SIGTERM exits 0;
  * every RPC: UpsertImages, UpsertCaptions, Ingest, SearchImages (with filter and explain),
    SearchCaptions (stored id and raw features), Delete, GetStats;
  * search scores equal the engine's direct scores: scan_score on the same features and captions
    (rel_err <= SCORE_TOL), also for a two-model ensemble;
  * bad inputs get their codes (empty query, wrong feature dim, bad byte length, unknown id,
    top_k out of range, oversized message, missing / wrong token) and the server keeps serving;
  * TLS with a self-signed certificate; mutual TLS (--tls-client-ca: CA-signed client certificates
    only, for gRPC clients and scanctl); the /metrics and /healthz endpoint;
  * scanctl: exit codes, --json output, import precomp (resumable) and import tsv;
  * durability: kill -9 right after an acknowledged upsert or delete, restart, state kept.

Skips (exit 77) when the build was configured with SCANSERVE_BUILD_SERVER=OFF; fails when the server
or scan_score is missing from an ON build.
"""

import base64
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("SCANSERVE_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
BUILD_DIR = os.environ.get("SCANSERVE_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")
SERVER = os.path.join(BUILD_DIR, "server", "scanserve")
SCANCTL = os.path.join(BUILD_DIR, "client", "scanctl")
SCAN_SCORE = os.path.join(BUILD_DIR, "engine", "scan_score")
PROTO_DIR = os.path.join(SOURCE_DIR, "proto")

SCORE_TOL = 1e-5          # rel_err of served scores vs scan_score (same engine, same fp32 backend)
START_TIMEOUT_S = 60
RPC_TIMEOUT_S = 30
SERVICE = "scanserve.v1.ScanService"


def build_server_disabled():
    cache = os.path.join(BUILD_DIR, "CMakeCache.txt")
    if not os.path.exists(cache):
        return False
    with open(cache) as f:
        return any(line.strip() == "SCANSERVE_BUILD_SERVER:BOOL=OFF" for line in f)


if build_server_disabled():
    print("skipped: %s was configured with SCANSERVE_BUILD_SERVER=OFF" % BUILD_DIR)
    sys.exit(77)

try:
    import grpc  # noqa: E402  (python3-grpcio)
    import grpc_tools  # noqa: E402,F401  (python3-grpc-tools: protoc for the stubs)
except ImportError as e:
    raise SystemExit("test_server_e2e needs python3-grpcio and python3-grpc-tools under %s: %s" % (sys.executable, e))

sys.path.insert(0, HERE)
import scan_checkpoints as sc  # noqa: E402
import scanserve_harness as harness  # noqa: E402
from scanserve_harness import (features_msg, free_port, make_model, random_captions,  # noqa: E402
                               require_executable)

REFLECTION_PROTO = """
syntax = "proto3";
package grpc.reflection.v1alpha;
service ServerReflection {
  rpc ServerReflectionInfo(stream ServerReflectionRequest) returns (stream ServerReflectionResponse);
}
message ServerReflectionRequest {
  string host = 1;
  oneof message_request {
    string file_by_filename = 3;
    string file_containing_symbol = 4;
    string list_services = 7;
  }
}
message ServerReflectionResponse {
  string valid_host = 1;
  ServerReflectionRequest original_request = 2;
  oneof message_response {
    FileDescriptorResponse file_descriptor_response = 4;
    ListServiceResponse list_services_response = 6;
    ErrorResponse error_response = 7;
  }
}
message FileDescriptorResponse { repeated bytes file_descriptor_proto = 1; }
message ListServiceResponse { repeated ServiceResponse service = 1; }
message ServiceResponse { string name = 1; }
message ErrorResponse { int32 error_code = 1; string error_message = 2; }
"""

WORDS = sorted(w for w in sc.BASE_WORDS if w.isalpha())


# ------------------------------------------------------------------------------------------------
# Shared fixtures: stubs, models, data, scan_score oracle



def generate_stubs(out):
    """Python modules for scanserve.v1, grpc.health.v1 (as `health_pb2`, so it does not collide with the
    installed `grpc` package) and grpc.reflection.v1alpha (as `reflection_pb2`)."""
    extra = os.path.join(out, "extra_protos")
    os.makedirs(extra)
    shutil.copy(os.path.join(PROTO_DIR, "grpc", "health", "v1", "health.proto"), os.path.join(extra, "health.proto"))
    with open(os.path.join(extra, "reflection.proto"), "w") as f:
        f.write(REFLECTION_PROTO)
    for include, files in ((PROTO_DIR, [os.path.join(PROTO_DIR, "scanserve", "v1", "scanserve.proto")]),
                           (extra, [os.path.join(extra, "health.proto"), os.path.join(extra, "reflection.proto")])):
        r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", include, "--python_out", out,
                            "--grpc_python_out", out] + files, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True)
        if r.returncode != 0:
            raise AssertionError("grpc_tools.protoc failed:\n%s" % r.stderr)
    sys.path.insert(0, out)
    from scanserve.v1 import scanserve_pb2, scanserve_pb2_grpc  # noqa: E402
    import health_pb2  # noqa: E402
    import health_pb2_grpc  # noqa: E402
    import reflection_pb2  # noqa: E402
    import reflection_pb2_grpc  # noqa: E402
    return scanserve_pb2, scanserve_pb2_grpc, health_pb2, health_pb2_grpc, reflection_pb2, reflection_pb2_grpc








def scan_score(model_dirs, images, captions, d):
    """The engine's direct similarity matrix (n_images x n_captions) for these features and captions."""
    os.makedirs(d, exist_ok=True)
    np.save(os.path.join(d, "regions.npy"), np.concatenate(images).astype(np.float32))
    np.save(os.path.join(d, "counts.npy"), np.array([im.shape[0] for im in images], dtype=np.int64))
    with open(os.path.join(d, "captions.txt"), "w") as f:
        f.write("\n".join(captions) + "\n")
    out = os.path.join(d, "sims.npy")
    argv = [SCAN_SCORE]
    for m in model_dirs:
        argv += ["--model", m]
    argv += ["--regions", os.path.join(d, "regions.npy"), "--region-counts", os.path.join(d, "counts.npy"),
             "--captions", os.path.join(d, "captions.txt"), "--out", out, "--threads", "2"]
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError("scan_score failed (%d): %s" % (r.returncode, r.stderr[-2000:]))
    return np.load(out)


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-3)) if a.size else 0.0


class ServerProcess(harness.ServerProcess):
    """The harness's scanserve process, remembered so that none outlives the test run, with a fixed
    port on request (a restart must come back on the same address), a checked stop and kill -9."""

    started = []  # every process started

    def __init__(self, tmp, name, model_dirs, data_dir, extra=(), port=None):
        super().__init__(tmp, name, model_dirs, data_dir, extra)
        if port:
            self.port = port
            self.fixed_ports = True

    def start(self):
        super().start()
        ServerProcess.started.append(self)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("%s did not exit within %d s of signal %d\n%s" % (self.name, timeout, sig,
                                                                                 self.log_tail()))
        finally:
            self.log.close()

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()


def wait_listening(server, timeout=START_TIMEOUT_S):
    """Until the server logs that it serves (then create channels: a channel dialled before the port
    is open sits in reconnect backoff for seconds)."""
    server.wait_listening(timeout)


def wait_serving(server, channel, health_pb2, health_grpc, timeout=START_TIMEOUT_S):
    stub = health_grpc.HealthStub(channel)
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if not server.alive():
            raise AssertionError("%s exited with %s during start-up:\n%s" % (server.name, server.proc.returncode,
                                                                           server.log_tail()))
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            if r.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = r.status
        except grpc.RpcError as e:
            last = e.code()
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise AssertionError("%s not SERVING after %d s (last: %s)\n%s" % (server.name, timeout, last, server.log_tail()))


# Short reconnect backoff: the channel is created before the server listens, and the default backoff
# (1 s, growing) would add seconds to every start-up.
# (Not grpc.min_reconnect_backoff_ms: it is also the connect timeout, too short for a TLS handshake.)
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
                   ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 300)]




class E2EBase(unittest.TestCase):
    """Builds what every server test needs once: stubs, two models, a small dataset and its oracle."""

    shared = None

    @classmethod
    def setUpShared(cls):
        if E2EBase.shared is not None:
            return E2EBase.shared
        require_executable(SERVER, "the scanserve server")
        require_executable(SCANCTL, "scanctl")
        require_executable(SCAN_SCORE, "scan_score")
        tmp = tempfile.mkdtemp(prefix="scan_e2e_")
        s = type("Shared", (), {})()
        s.tmp = tmp
        (s.pb, s.pb_grpc, s.health_pb2, s.health_grpc, s.refl_pb2, s.refl_grpc) = generate_stubs(
            os.path.join(tmp, "stubs"))
        s.model_a = make_model(tmp, seed=1)
        s.model_b = make_model(tmp, seed=2)
        rng = np.random.default_rng(7)
        s.img_dim = sc.SMALL_DIMS["img_dim"]
        s.counts = [3, 5, 1, 7, 4, 6]
        s.images = [sc.random_region_features(rng, k, s.img_dim) for k in s.counts]
        s.captions = random_captions(rng, 8)
        s.sims = scan_score([s.model_a], s.images, s.captions, os.path.join(tmp, "oracle_a"))
        s.sims_ens = scan_score([s.model_a, s.model_b], s.images, s.captions, os.path.join(tmp, "oracle_ab"))
        E2EBase.shared = s
        return s

    @classmethod
    def start_class_server(cls, name, model_dirs, data_dir, extra=(), channel=None):
        """Starts the class's server and waits until it is SERVING; `channel` (a function of nothing)
        makes the channel once it listens, plaintext by default."""
        cls.server = ServerProcess(cls.s.tmp, name, model_dirs, data_dir, extra=extra)
        cls.server.start()
        wait_listening(cls.server)
        cls.channel = channel() if channel else grpc.insecure_channel("127.0.0.1:%d" % cls.server.port,
                                                                      options=CHANNEL_OPTIONS)
        wait_serving(cls.server, cls.channel, cls.s.health_pb2, cls.s.health_grpc)
        cls.stub = cls.s.pb_grpc.ScanServiceStub(cls.channel)

    @classmethod
    def stop_class_server(cls):
        """Stops the class's server (it must exit 0) and closes its channel."""
        if cls.server.alive():
            code = cls.server.stop()
            assert code == 0, cls.server.log_tail()
        cls.channel.close()

    def rpc_ok(self, fn, request, what):
        try:
            return fn(request, timeout=RPC_TIMEOUT_S, **self.call_kwargs())
        except grpc.RpcError as e:
            self.fail("%s failed: %s %s\n%s" % (what, e.code(), e.details(), self.server.log_tail()))

    def call_kwargs(self):
        return {}

    def expect_code(self, code, fn, request, what, **kwargs):
        kw = self.call_kwargs()
        kw.update(kwargs)
        with self.assertRaises(grpc.RpcError, msg=what) as ctx:
            fn(request, timeout=RPC_TIMEOUT_S, **kw)
        self.assertEqual(ctx.exception.code(), code, "%s: %s" % (what, ctx.exception.details()))
        self.assert_still_serving(what)

    def assert_still_serving(self, after):
        self.assertTrue(self.server.alive(), "the server died after %s:\n%s" % (after, self.server.log_tail()))
        self.rpc_ok(self.stub.GetStats, self.s.pb.GetStatsRequest(), "GetStats after %s" % after)

    def upsert_all(self, boxes=True, collection="main"):
        pb = self.s.pb
        req = pb.UpsertImagesRequest()
        for i, x in enumerate(self.s.images):
            im = req.images.add(id="img%d" % i, collection=collection)
            im.metadata["parity"] = "even" if i % 2 == 0 else "odd"
            im.region_features.CopyFrom(features_msg(pb, x))
            if boxes and i % 2 == 0:
                for r in range(x.shape[0]):
                    im.boxes.add(x1=r, y1=2 * r, x2=r + 10, y2=2 * r + 20)
                    im.labels.append("label%d" % r)
        resp = self.rpc_ok(self.stub.UpsertImages, req, "UpsertImages")
        self.assertEqual([r.code for r in resp.results], [0] * len(self.s.images),
                         [r.message for r in resp.results])
        self.assertEqual([r.id for r in resp.results], ["img%d" % i for i in range(len(self.s.images))])
        creq = pb.UpsertCaptionsRequest()
        for j, c in enumerate(self.s.captions):
            creq.captions.add(id="cap%d" % j, text=c, collection=collection)
        cresp = self.rpc_ok(self.stub.UpsertCaptions, creq, "UpsertCaptions")
        self.assertEqual([r.code for r in cresp.results], [0] * len(self.s.captions),
                         [r.message for r in cresp.results])

    def check_search_parity(self, sims, what):
        """Every caption as a query against every stored image, and every image against every caption,
        must reproduce the oracle matrix."""
        pb = self.s.pb
        n_img, n_cap = sims.shape
        resp = self.rpc_ok(self.stub.SearchImages, pb.SearchImagesRequest(queries=self.s.captions, top_k=n_img),
                           "SearchImages (%s)" % what)
        self.assertEqual(len(resp.results), n_cap)
        got = np.full(sims.shape, np.nan)
        for j, hits in enumerate(resp.results):
            self.assertEqual(len(hits.hits), n_img, "%s: query %d returned %d hits" % (what, j, len(hits.hits)))
            scores = [h.score for h in hits.hits]
            self.assertEqual(scores, sorted(scores, reverse=True), "%s: hits not best-first" % what)
            for h in hits.hits:
                got[int(h.id[3:]), j] = h.score
        self.assertLessEqual(rel_err(got, sims), SCORE_TOL, "%s text->image scores vs scan_score" % what)

        req = pb.SearchCaptionsRequest(top_k=n_cap)
        for i in range(n_img):
            req.queries.add(image_id="img%d" % i)
        req.queries.add(region_features=features_msg(pb, self.s.images[2]))
        resp = self.rpc_ok(self.stub.SearchCaptions, req, "SearchCaptions (%s)" % what)
        self.assertEqual(len(resp.results), n_img + 1)
        got = np.full((n_img + 1, n_cap), np.nan)
        for i, hits in enumerate(resp.results):
            self.assertEqual(len(hits.hits), n_cap)
            for h in hits.hits:
                got[i, int(h.id[3:])] = h.score
                self.assertEqual(h.text, self.s.captions[int(h.id[3:])])
        self.assertLessEqual(rel_err(got[:n_img], sims), SCORE_TOL, "%s image->text scores vs scan_score" % what)
        self.assertLessEqual(rel_err(got[n_img], sims[2]), SCORE_TOL, "%s raw-feature query vs scan_score" % what)

    def scanctl(self, args, expect=None, input_env=None):
        argv = [SCANCTL, "--server", "127.0.0.1:%d" % self.server.port] + list(args)
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                           timeout=120, env=dict(os.environ, **(input_env or {})))
        if expect is not None:
            self.assertEqual(r.returncode, expect, "scanctl %s exited %d (want %d)\nstdout: %s\nstderr: %s" % (
                " ".join(args), r.returncode, expect, r.stdout[-2000:], r.stderr[-2000:]))
        return r


# ------------------------------------------------------------------------------------------------

class ServerTest(E2EBase):
    """One server (single model, plaintext, no auth) through a sequence of checks."""

    @classmethod
    def setUpClass(cls):
        cls.s = cls.setUpShared()
        cls.data_dir = os.path.join(cls.s.tmp, "data_main")
        cls.start_class_server("main", [cls.s.model_a], cls.data_dir)

    @classmethod
    def tearDownClass(cls):
        if cls.server.alive():
            cls.server.stop()
        cls.channel.close()

    def test_01_health_and_reflection(self):
        h, hg = self.s.health_pb2, self.s.health_grpc
        stub = hg.HealthStub(self.channel)
        for service in ("", SERVICE):
            self.assertEqual(stub.Check(h.HealthCheckRequest(service=service), timeout=5).status,
                             h.HealthCheckResponse.SERVING, service)
        watch = stub.Watch(h.HealthCheckRequest(service=SERVICE), timeout=5)
        self.assertEqual(next(watch).status, h.HealthCheckResponse.SERVING)
        watch.cancel()
        with self.assertRaises(grpc.RpcError) as ctx:
            stub.Check(h.HealthCheckRequest(service="no.such.Service"), timeout=5)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.NOT_FOUND)

        r, rg = self.s.refl_pb2, self.s.refl_grpc
        refl = rg.ServerReflectionStub(self.channel)
        responses = list(refl.ServerReflectionInfo(iter([
            r.ServerReflectionRequest(list_services=""),
            r.ServerReflectionRequest(file_containing_symbol=SERVICE)]), timeout=10))
        names = [s.name for s in responses[0].list_services_response.service]
        self.assertIn(SERVICE, names)
        self.assertIn("grpc.health.v1.Health", names)
        self.assertGreater(len(responses[1].file_descriptor_response.file_descriptor_proto), 0)

    def test_02_upsert_and_search_match_scan_score(self):
        self.upsert_all()
        stats = self.rpc_ok(self.stub.GetStats, self.s.pb.GetStatsRequest(), "GetStats")
        self.assertEqual(stats.images, len(self.s.images))
        self.assertEqual(stats.captions, len(self.s.captions))
        self.check_search_parity(self.s.sims, "single model")

    def test_03_concurrent_searches_are_batched_correctly(self):
        pb = self.s.pb
        n_img = len(self.s.images)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [(j, k, pool.submit(self.stub.SearchImages,
                                          pb.SearchImagesRequest(queries=[self.s.captions[j]], top_k=k),
                                          timeout=RPC_TIMEOUT_S))
                       for j in range(len(self.s.captions)) for k in (1, 3, n_img)]
            for j, k, f in futures:
                hits = f.result().results[0].hits
                self.assertEqual(len(hits), k)
                want = np.argsort(-self.s.sims[:, j], kind="stable")[:k]
                self.assertEqual([int(h.id[3:]) for h in hits], list(want), "query %d top_%d" % (j, k))
                for h in hits:
                    self.assertAlmostEqual(h.score, self.s.sims[int(h.id[3:]), j], delta=1e-5)

    def test_04_filters_and_explain(self):
        pb = self.s.pb
        req = pb.SearchImagesRequest(queries=[self.s.captions[0]], top_k=10, explain=True)
        req.filter.metadata["parity"] = "even"
        resp = self.rpc_ok(self.stub.SearchImages, req, "SearchImages with filter")
        ids = [h.id for h in resp.results[0].hits]
        self.assertEqual(sorted(ids), ["img0", "img2", "img4"])
        n_words = len(self.s.captions[0].split())
        for h in resp.results[0].hits:
            i = int(h.id[3:])
            self.assertEqual(h.metadata["parity"], "even")
            self.assertEqual(h.collection, "main")
            self.assertGreaterEqual(len(h.explanation), n_words, "one entry per query word (at least)")
            for w in h.explanation:
                self.assertTrue(0 <= w.region < self.s.counts[i], (h.id, w.region))
                self.assertTrue(0.0 <= w.attention <= 1.0 + 1e-6, w.attention)
                self.assertTrue(w.HasField("box"), "img%d was ingested with boxes" % i)
                self.assertEqual(w.box.x1, float(w.region))
                self.assertEqual(w.label, "label%d" % w.region)
        req = pb.SearchImagesRequest(queries=[self.s.captions[0]], top_k=10, explain=True)
        req.filter.collection = "nothing-here"
        self.assertEqual(len(self.rpc_ok(self.stub.SearchImages, req, "empty filter").results[0].hits), 0)
        req = pb.SearchImagesRequest(queries=[self.s.captions[1]], top_k=10)
        req.filter.metadata["parity"] = "odd"
        hits = self.rpc_ok(self.stub.SearchImages, req, "odd").results[0].hits
        self.assertEqual(sorted(h.id for h in hits), ["img1", "img3", "img5"])
        for h in hits:
            self.assertEqual(len(h.explanation), 0, "no explanation unless asked")

    def test_05_ingest_stream(self):
        pb = self.s.pb
        items = [
            pb.IngestRequest(caption=pb.Caption(id="stream/cap0", text="a dog on the grass", collection="stream")),
            pb.IngestRequest(caption=pb.Caption(id="stream/cap1", text="two men playing", collection="stream")),
            pb.IngestRequest(image=pb.Image(id="stream/img0", collection="stream",
                                            region_features=features_msg(pb, self.s.images[1]))),
            pb.IngestRequest(image=pb.Image(id="stream/bad-dim", collection="stream",
                                            region_features=features_msg(pb, np.ones((2, self.s.img_dim + 1))))),
            pb.IngestRequest(),
            pb.IngestRequest(image=pb.Image(id="stream/img1", collection="stream",
                                            region_features=features_msg(pb, self.s.images[3]))),
        ]
        responses = list(self.stub.Ingest(iter(items), timeout=RPC_TIMEOUT_S))
        self.assertEqual(len(responses), len(items))
        codes = [r.result.code for r in responses]
        invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
        self.assertEqual(codes, [0, 0, 0, invalid, invalid, 0], [r.result.message for r in responses])
        self.assertEqual([r.is_caption for r in responses], [True, True, False, False, False, False])
        self.assertEqual(responses[2].result.id, "stream/img0")
        req = pb.SearchCaptionsRequest(queries=[pb.ImageQuery(image_id="stream/img0")], top_k=10)
        req.filter.collection = "stream"
        hits = self.rpc_ok(self.stub.SearchCaptions, req, "SearchCaptions in stream collection").results[0].hits
        self.assertEqual(sorted(h.id for h in hits), ["stream/cap0", "stream/cap1"])

        # A message that does not parse (other clients than Python's can send one) ends the stream with
        # INVALID_ARGUMENT after the answers to the items before it; nothing after it is read.
        # gRPC's typed stream would take it for the client's end of the stream and answer OK.
        raw_items = [pb.IngestRequest(caption=pb.Caption(id="stream/raw0", text="a cat", collection="stream"))
                     .SerializeToString(),
                     b"\x12\x05\x0a\x03" + b"a\xffb",  # a caption whose id is not UTF-8
                     pb.IngestRequest(caption=pb.Caption(id="stream/raw2", text="a bird", collection="stream"))
                     .SerializeToString()]
        call = self.channel.stream_stream("/scanserve.v1.ScanService/Ingest",
                                          response_deserializer=pb.IngestResponse.FromString)
        answers = call(iter(raw_items), timeout=RPC_TIMEOUT_S, metadata=self.call_kwargs().get("metadata", []))
        got = []
        with self.assertRaises(grpc.RpcError) as ctx:
            for answer in answers:
                got.append(answer)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, ctx.exception.details())
        self.assertIn("Ingest message 2 cannot be parsed", ctx.exception.details())
        self.assertEqual([(r.result.id, r.result.code) for r in got], [("stream/raw0", 0)])
        items = self.rpc_ok(self.stub.GetItems, pb.GetItemsRequest(caption_ids=["stream/raw0", "stream/raw2"]),
                            "GetItems after the broken stream")
        self.assertEqual([c.status.code for c in items.captions], [0, grpc.StatusCode.NOT_FOUND.value[0]],
                         "acked and stored; nothing after it")

    def test_06_bad_inputs_get_their_codes(self):
        pb, INVALID = self.s.pb, grpc.StatusCode.INVALID_ARGUMENT
        self.expect_code(INVALID, self.stub.SearchImages, pb.SearchImagesRequest(queries=[""]), "empty query")
        self.expect_code(INVALID, self.stub.SearchImages, pb.SearchImagesRequest(queries=[]), "no queries")
        # Refused on its length before it is tokenised or joins a batch (the engine's validation).
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.SearchImages(pb.SearchImagesRequest(queries=["a dog", "a" * (64 * 1024 + 1)]),
                                   timeout=RPC_TIMEOUT_S, **self.call_kwargs())
        self.assertEqual(ctx.exception.code(), INVALID)
        self.assertIn("query 1 has 65537 bytes", ctx.exception.details())
        self.expect_code(INVALID, self.stub.SearchImages, pb.SearchImagesRequest(queries=["a dog"], top_k=100000),
                         "top_k too large")
        self.expect_code(INVALID, self.stub.SearchImages, pb.SearchImagesRequest(queries=["a dog"], top_k=-1),
                         "negative top_k")
        self.expect_code(INVALID, self.stub.SearchImages, pb.SearchImagesRequest(queries=["a dog"] * 65),
                         "65 queries")
        wrong_dim = features_msg(pb, np.ones((3, self.s.img_dim - 1), dtype=np.float32))
        self.expect_code(INVALID, self.stub.SearchCaptions,
                         pb.SearchCaptionsRequest(queries=[pb.ImageQuery(region_features=wrong_dim)]),
                         "wrong feature dim")
        bad_len = features_msg(pb, self.s.images[0])
        bad_len.values = bad_len.values[:-3]
        self.expect_code(INVALID, self.stub.SearchCaptions,
                         pb.SearchCaptionsRequest(queries=[pb.ImageQuery(region_features=bad_len)]),
                         "bad byte length")
        self.expect_code(grpc.StatusCode.NOT_FOUND, self.stub.SearchCaptions,
                         pb.SearchCaptionsRequest(queries=[pb.ImageQuery(image_id="no-such-image")]), "unknown id")
        self.expect_code(grpc.StatusCode.FAILED_PRECONDITION, self.stub.SearchCaptions,
                         pb.SearchCaptionsRequest(queries=[pb.ImageQuery(image_bytes=b"\xff\xd8\xff")]),
                         "image bytes without a detector")
        self.expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, self.stub.SearchImages,
                         pb.SearchImagesRequest(queries=["a " * (40 << 20)]), "message over 64 MiB")

        # Per-item errors of a batched upsert: the good item still goes in.
        req = pb.UpsertImagesRequest()
        req.images.add(id="bad/dim", region_features=wrong_dim)
        req.images.add(id="bad/len", region_features=bad_len)
        req.images.add(id="bad/none")
        req.images.add(id="good/one", region_features=features_msg(pb, self.s.images[0]), collection="bad")
        resp = self.rpc_ok(self.stub.UpsertImages, req, "UpsertImages with bad items")
        self.assertEqual([r.code for r in resp.results], [INVALID.value[0]] * 3 + [0],
                         [r.message for r in resp.results])
        resp = self.rpc_ok(self.stub.Delete, pb.DeleteRequest(image_ids=["good/one", "never-stored"],
                                                              caption_ids=["never-stored"]), "Delete")
        self.assertEqual([r.code for r in resp.image_results], [0, grpc.StatusCode.NOT_FOUND.value[0]])
        self.assertEqual([r.code for r in resp.caption_results], [grpc.StatusCode.NOT_FOUND.value[0]])

        # Requests gRPC cannot parse (other clients than Python's can send them): INVALID_ARGUMENT, as
        # a client's mistake, not gRPC's bare INTERNAL, which would count as a server error.
        md = self.call_kwargs().get("metadata", [])
        for method, raw, what in (
                ("SearchImages", b"\x0a\x03a\xffb", "a query that is not UTF-8"),
                ("UpsertCaptions", b"\x0a\x08\x0a\x02\xff\xfe\x22\x02hi", "a caption id that is not UTF-8"),
                ("GetItems", b"\xff\xff\xff", "bytes that are not a protobuf message"),
                ("Delete", b"\x0a\x05ab", "a field cut short")):
            call = self.channel.unary_unary("/scanserve.v1.ScanService/" + method)
            with self.assertRaises(grpc.RpcError, msg=what) as ctx:
                call(raw, timeout=10, metadata=md)
            self.assertEqual(ctx.exception.code(), INVALID, what)
            self.assertIn("request cannot be parsed", ctx.exception.details(), what)
            self.assertNotIn(method + " INTERNAL", self.server.log_tail(20000), "no server-error log line")

        # Compressed requests are refused by default: gRPC would inflate this 100 KB of gzip to 100 MiB
        # before noticing it is over --max-message-bytes.
        before = self.server.peak_rss_kib()
        bomb = b"\x0a\x80\x80\x80\x32" + b"a" * (100 << 20)  # queries[0]: 100 MiB
        for raw, what in ((bomb, "a gzip bomb"), (pb.SearchImagesRequest(queries=["a dog"]).SerializeToString(),
                                                  "a small compressed request")):
            with self.assertRaises(grpc.RpcError, msg=what) as ctx:
                self.channel.unary_unary("/scanserve.v1.ScanService/SearchImages")(
                    raw, timeout=60, compression=grpc.Compression.Gzip, metadata=md)
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNIMPLEMENTED, what)
            self.assertIn("is disabled", ctx.exception.details(), what)
        self.assertLess(self.server.peak_rss_kib() - before, 50 << 10, "the bomb was not inflated")
        self.assert_still_serving("the bad inputs")

    def test_07_stats_and_metrics(self):
        stats = self.rpc_ok(self.stub.GetStats, self.s.pb.GetStatsRequest(), "GetStats")
        self.assertEqual(len(stats.models), 1)
        self.assertEqual(stats.models[0].model_dir, self.s.model_a)
        self.assertTrue(stats.models[0].summary)
        self.assertTrue(stats.backend.startswith("cpu"), stats.backend)
        self.assertEqual(stats.storage, "fp32")
        self.assertTrue(stats.version)
        self.assertFalse(stats.detector_loaded)
        self.assertGreater(stats.feature_bytes, 0)
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.server.metrics_port, timeout=10).read()
        text = text.decode()
        for needle in ('grpc_server_started_total{grpc_method="SearchImages",grpc_service="%s",grpc_type="unary"}'
                       % SERVICE,
                       'grpc_server_handled_total{grpc_code="OK",grpc_method="SearchImages"',
                       'grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="SearchImages"',
                       'grpc_server_handled_total{grpc_code="OK",grpc_method="Ingest",grpc_service="%s",'
                       'grpc_type="bidi_stream"}' % SERVICE,
                       "grpc_server_handling_seconds_bucket", "scanserve_batch_size_bucket",
                       "scanserve_queue_depth", "scanserve_queue_wait_seconds_count",
                       "scanserve_engine_search_seconds_count", "scanserve_images_stored",
                       "scanserve_captions_stored", 'scanserve_feature_bytes{device=',
                       'scanserve_ingest_items_total{code="OK",kind="image"}'):
            self.assertIn(needle, text)
        for line in text.splitlines():
            self.assertNotIn("img0", line, "no per-id labels")
        health = urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.server.metrics_port, timeout=10)
        self.assertEqual(health.status, 200)

    def test_08_scanctl(self):
        r = self.scanctl(["health"], expect=0)
        self.assertIn("SERVING", r.stdout)
        r = self.scanctl(["stats", "--json"], expect=0)
        self.assertGreaterEqual(int(json.loads(r.stdout)["images"]), len(self.s.images))
        r = self.scanctl(["--json", "search-images", self.s.captions[0], "--top-k", "3", "--collection", "main"],
                         expect=0)
        hits = json.loads(r.stdout)["results"][0]["hits"]
        want = np.argsort(-self.s.sims[:, 0], kind="stable")[:3]
        self.assertEqual([int(h["id"][3:]) for h in hits], list(want))
        r = self.scanctl(["search-images", self.s.captions[0], "--explain", "--top-k", "2"], expect=0)
        self.assertIn("rank", r.stdout)
        self.assertIn("explain", r.stdout)
        r = self.scanctl(["search-captions", "--image-id", "img1", "--top-k", "2", "--json"], expect=0)
        self.assertEqual(len(json.loads(r.stdout)["results"][0]["hits"]), 2)
        feats = os.path.join(self.s.tmp, "query_feats.npy")
        np.save(feats, self.s.images[4])
        r = self.scanctl(["search-captions", "--features", feats, "--top-k", "1", "--collection", "main"], expect=0)
        best = int(np.argmax(self.s.sims[4]))
        self.assertIn("cap%d" % best, r.stdout)
        self.scanctl(["upsert-caption", "cli/cap", "a man riding a bike", "--collection", "cli"], expect=0)
        boxes = os.path.join(self.s.tmp, "query_boxes.npy")
        np.save(boxes, np.tile(np.array([[0, 0, 5, 5]], dtype=np.float32), (self.s.counts[4], 1)))
        self.scanctl(["upsert-image", "cli/img", "--features", feats, "--boxes", boxes, "--collection", "cli",
                      "--meta", "source=cli"], expect=0)
        r = self.scanctl(["--json", "search-captions", "--image-id", "cli/img", "--collection", "cli"], expect=0)
        self.assertEqual([h["id"] for h in json.loads(r.stdout)["results"][0]["hits"]], ["cli/cap"])
        # Reading back: what was sent (boxes, metadata, text), from the real store.
        r = self.scanctl(["--json", "get", "--image", "cli/img", "--caption", "cli/cap", "--image", "nope"], expect=3)
        got = json.loads(r.stdout)
        self.assertEqual(got["images"][0]["num_regions"], self.s.counts[4])
        self.assertEqual(got["images"][0]["image"]["metadata"], {"source": "cli"})
        self.assertEqual(len(got["images"][0]["image"]["boxes"]), self.s.counts[4])
        self.assertEqual(got["images"][0]["image"]["boxes"][0]["x2"], 5)
        self.assertEqual(got["images"][1]["status"]["code"], 5)  # NOT_FOUND
        self.assertEqual(got["captions"][0]["caption"]["text"], "a man riding a bike")
        r = self.scanctl(["get", "--caption", "cli/cap"], expect=0)
        self.assertIn("a man riding a bike", r.stdout)
        # Metadata changes without the features again; filters see them, the store keeps them.
        self.scanctl(["update", "--image", "cli/img", "--collection", "cli2", "--meta", "tag=t1",
                      "--remove-meta", "source"], expect=0)
        self.scanctl(["update", "--image", "nope", "--meta", "a=b"], expect=3)
        self.scanctl(["update", "--image", "cli/img"], expect=2)
        got = json.loads(self.scanctl(["--json", "get", "--image", "cli/img"], expect=0).stdout)
        self.assertEqual(got["images"][0]["image"]["collection"], "cli2")
        self.assertEqual(got["images"][0]["image"]["metadata"], {"tag": "t1"})
        r = self.scanctl(["--json", "search-images", self.s.captions[0], "--collection", "cli2"], expect=0)
        self.assertEqual([h["id"] for h in json.loads(r.stdout)["results"][0]["hits"]], ["cli/img"])
        self.scanctl(["update", "--image", "cli/img", "--collection", "cli", "--meta", "source=cli",
                      "--remove-meta", "tag"], expect=0)
        r = self.scanctl(["list", "images", "--collection", "cli"], expect=0)
        self.assertEqual(r.stdout.split(), ["cli/img"])
        # Every page followed: each stored id once, in byte order (earlier tests stored others too).
        r = self.scanctl(["list", "images", "--page-size", "2"], expect=0)
        ids = r.stdout.split()
        stats = self.rpc_ok(self.stub.GetStats, self.s.pb.GetStatsRequest(), "GetStats")
        self.assertEqual(len(ids), stats.images)
        self.assertEqual(ids, sorted(set(ids)))
        self.assertTrue({"img%d" % i for i in range(len(self.s.images))} | {"cli/img"} <= set(ids))
        all_captions = self.scanctl(["list", "captions"], expect=0).stdout.split()
        self.assertEqual(len(all_captions), stats.captions)
        r = self.scanctl(["--json", "list", "captions", "--page-size", "2", "--limit", "3"], expect=0)
        listed = json.loads(r.stdout)
        self.assertEqual(listed["ids"], all_captions[:3])
        self.assertEqual(listed["next_page_token"], all_captions[2])
        self.scanctl(["list", "things"], expect=2)
        self.scanctl(["get"], expect=2)
        self.scanctl(["delete", "--image", "cli/img", "--caption", "cli/cap"], expect=0)
        self.scanctl(["delete", "--image", "cli/img"], expect=3)
        r = self.scanctl(["search-captions", "--image-id", "cli/img"], expect=3)
        # A failed call names the request id the server's log line for it would carry.
        self.assertRegex(r.stderr, r"SearchCaptions: NOT_FOUND: .* \(request [0-9a-f]{16}\)\n")
        self.scanctl(["search-images", ""], expect=1)
        self.scanctl(["search-images", "x", "--bogus"], expect=2)
        self.scanctl(["frobnicate"], expect=2)
        self.scanctl(["search-captions"], expect=2)
        r = subprocess.run([SCANCTL, "--server", "127.0.0.1:%d" % free_port(), "--timeout", "3", "health"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 4, r.stderr)

    def test_09_scanctl_import_precomp_resumes(self):
        d = os.path.join(self.s.tmp, "precomp")
        os.makedirs(d, exist_ok=True)
        rng = np.random.default_rng(11)
        ims = np.stack([sc.random_region_features(rng, 4, self.s.img_dim) for _ in range(3)])
        np.save(os.path.join(d, "mini_ims.npy"), ims.astype(np.float32))
        caps = random_captions(rng, 15)
        with open(os.path.join(d, "mini_caps.txt"), "w") as f:
            f.write("\n".join(caps) + "\n")
        args = ["import", "precomp", "--data-dir", d, "--split", "mini", "--collection", "pre", "--no-progress"]
        r = self.scanctl(args + ["--json"], expect=0)
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual((summary["total"], summary["acked"], summary["failed"], summary["skipped"]), (18, 18, 0, 0))
        with open(os.path.join(d, "mini.scanctl-import.json")) as f:
            self.assertEqual(json.load(f)["acked_through"], 17)
        r = self.scanctl(args + ["--json"], expect=0)
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual((summary["skipped"], summary["sent"]), (18, 0), "a rerun skips acknowledged items")
        # A partial checkpoint resumes in the middle.
        with open(os.path.join(d, "mini.scanctl-import.json"), "r+") as f:
            ck = json.load(f)
            ck["acked_through"] = 9
            f.seek(0)
            f.truncate()
            json.dump(ck, f)
        r = self.scanctl(args + ["--json"], expect=0)
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual((summary["skipped"], summary["sent"], summary["acked"]), (10, 8, 8))
        # A damaged checkpoint is a usage error naming the field, until --restart starts over.
        checkpoint = os.path.join(d, "mini.scanctl-import.json")
        for damaged, named in (('{"source": "x", "total": "18", "acked_through": 3}', "field 'total'"),
                               ('{"source": "x", "total": 18}', "field 'acked_through' is missing"),
                               ("[1, 2", "not valid JSON (at line 1, column 6"),
                               ("[1, 2]", "not a JSON object (array)")):
            with open(checkpoint, "w") as f:
                f.write(damaged)
            r = self.scanctl(args, expect=2)
            self.assertIn(named, r.stderr)
            self.assertIn("--restart", r.stderr)
        r = self.scanctl(args + ["--json", "--restart"], expect=0)
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual((summary["skipped"], summary["acked"]), (0, 18))
        req = self.s.pb.SearchCaptionsRequest(queries=[self.s.pb.ImageQuery(image_id="mini/img/1")], top_k=20)
        req.filter.collection = "pre"
        hits = self.rpc_ok(self.stub.SearchCaptions, req, "captions of the imported split").results[0].hits
        self.assertEqual(len(hits), 15)
        self.assertEqual({h.metadata["image"] for h in hits}, {"mini/img/0", "mini/img/1", "mini/img/2"})
        self.scanctl(["import", "precomp", "--data-dir", d, "--split", "nonexistent", "--no-progress"], expect=2)

    def test_10_scanctl_import_tsv(self):
        path = os.path.join(self.s.tmp, "mini.tsv")
        rng = np.random.default_rng(5)
        rows = []
        for i in range(3):
            k = 2 + i
            boxes = rng.random((k, 4)).astype("<f4") * 100
            feats = sc.random_region_features(rng, k, self.s.img_dim).astype("<f4")
            rows.append("\t".join(["tsv%d" % i, "640", "480", str(k), base64.b64encode(boxes.tobytes()).decode(),
                                   base64.b64encode(feats.tobytes()).decode()]))
        with open(path, "w") as f:
            f.write("\n".join(rows) + "\n")
        r = self.scanctl(["import", "tsv", path, "--collection", "tsv", "--feature-dim", str(self.s.img_dim),
                          "--no-progress", "--json"], expect=0)
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual((summary["acked"], summary["failed"]), (3, 0))
        req = self.s.pb.SearchImagesRequest(queries=["a dog"], top_k=10, explain=True)
        req.filter.collection = "tsv"
        hits = self.rpc_ok(self.stub.SearchImages, req, "search the TSV images").results[0].hits
        self.assertEqual(sorted(h.id for h in hits), ["tsv0", "tsv1", "tsv2"])
        self.assertTrue(all(w.HasField("box") for h in hits for w in h.explanation))
        self.assertEqual(hits[0].metadata["image_w"], "640")

    def test_99_sigterm_shuts_down_cleanly(self):
        code = self.server.stop(signal.SIGTERM, timeout=30)
        self.assertEqual(code, 0, self.server.log_tail())
        log = self.server.log_tail(20000)
        self.assertIn("stopped", log)
        self.assertIn(self.s.model_a, log, "the start-up log names the model")


class SecureEnsembleTest(E2EBase):
    """A second configuration: a two-model ensemble behind TLS and a bearer token, with a 1 MiB limit."""

    TOKEN = "e2e-s3cret"

    @classmethod
    def setUpClass(cls):
        cls.s = cls.setUpShared()
        tmp = os.path.join(cls.s.tmp, "tls")
        os.makedirs(tmp, exist_ok=True)
        cls.cert, cls.key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        # A self-signed certificate for localhost; without the openssl CLI the server runs plaintext.
        cls.tls = shutil.which("openssl") is not None
        if cls.tls:
            r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", cls.key,
                                "-out", cls.cert, "-days", "1", "-subj", "/CN=localhost",
                                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
            if r.returncode != 0:
                raise AssertionError("openssl failed: %s" % r.stderr)
        else:
            print("openssl not found: SecureEnsembleTest runs without TLS", file=sys.stderr)
        cls.token_file = os.path.join(tmp, "token")
        cls.write_tokens(cls.TOKEN)
        extra = ["--auth-token-file", cls.token_file, "--credential-reload-s", "1", "--max-message-bytes", "1M",
                 "--compressed-requests", "accept"]
        if cls.tls:
            extra += ["--tls-cert", cls.cert, "--tls-key", cls.key]
        def tls_channel():
            with open(cls.cert, "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
            # Dial the IP (resolving "localhost" can stall in a sandbox) and verify the name "localhost".
            return grpc.secure_channel("127.0.0.1:%d" % cls.server.port, creds, options=CHANNEL_OPTIONS + [
                ("grpc.ssl_target_name_override", "localhost")])
        cls.start_class_server("secure", [cls.s.model_a, cls.s.model_b], os.path.join(cls.s.tmp, "data_secure"),
                               extra=extra, channel=tls_channel if cls.tls else None)

    @classmethod
    def tearDownClass(cls):
        cls.stop_class_server()

    def call_kwargs(self):
        return {"metadata": [("authorization", "Bearer " + self.TOKEN)]}

    @classmethod
    def write_tokens(cls, *tokens):
        with open(cls.token_file + ".tmp", "w") as f:
            f.write("".join(t + "\n" for t in tokens))
        os.replace(cls.token_file + ".tmp", cls.token_file)

    def stats_code(self, token):
        try:
            self.stub.GetStats(self.s.pb.GetStatsRequest(), timeout=10,
                               metadata=[("authorization", "Bearer " + token)])
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()

    def wait_for_code(self, token, code):
        deadline = time.time() + 15
        while self.stats_code(token) != code and time.time() < deadline:
            time.sleep(0.2)
        self.assertEqual(self.stats_code(token), code, "token %s" % token)

    def test_token_rotation_without_a_restart(self):
        """The token file is read again every --credential-reload-s: tokens rotate without a restart."""
        try:
            self.write_tokens(self.TOKEN, "rotated-token")
            self.wait_for_code("rotated-token", grpc.StatusCode.OK)
            self.assertEqual(self.stats_code(self.TOKEN), grpc.StatusCode.OK, "both during the rotation")
            self.write_tokens("rotated-token")
            self.wait_for_code(self.TOKEN, grpc.StatusCode.PERMISSION_DENIED)
            self.write_tokens()  # emptied: refused, the tokens in service stay
            time.sleep(2.5)
            self.assertEqual(self.stats_code("rotated-token"), grpc.StatusCode.OK)
            self.assertIn("auth_tokens changed but cannot be served", self.server.log_tail(20000))
        finally:
            self.write_tokens(self.TOKEN)
            self.wait_for_code(self.TOKEN, grpc.StatusCode.OK)

    def test_auth_codes(self):
        pb = self.s.pb
        req = pb.SearchImagesRequest(queries=["a dog"])
        self.expect_code(grpc.StatusCode.UNAUTHENTICATED, self.stub.SearchImages, req, "no token", metadata=[])
        self.expect_code(grpc.StatusCode.PERMISSION_DENIED, self.stub.SearchImages, req, "wrong token",
                         metadata=[("authorization", "Bearer nope")])
        self.expect_code(grpc.StatusCode.UNAUTHENTICATED, self.stub.GetStats, pb.GetStatsRequest(), "no token",
                         metadata=[])
        with self.assertRaises(grpc.RpcError) as ctx:
            list(self.stub.Ingest(iter([pb.IngestRequest(caption=pb.Caption(id="x", text="y"))]), timeout=10))
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        h = self.s.health_pb2
        status = self.s.health_grpc.HealthStub(self.channel).Check(h.HealthCheckRequest(service=SERVICE), timeout=5)
        self.assertEqual(status.status, h.HealthCheckResponse.SERVING, "health needs no token")
        self.expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, self.stub.SearchImages,
                         pb.SearchImagesRequest(queries=["a " * (1 << 20)]), "message over --max-message-bytes 1M")

    def test_compressed_requests_when_accepted(self):
        stats = self.stub.GetStats(self.s.pb.GetStatsRequest(), timeout=10, compression=grpc.Compression.Gzip,
                                   **self.call_kwargs())
        self.assertEqual(len(stats.models), 2)

    def test_ensemble_scores_match_scan_score(self):
        self.upsert_all()
        self.check_search_parity(self.s.sims_ens, "ensemble")
        stats = self.rpc_ok(self.stub.GetStats, self.s.pb.GetStatsRequest(), "GetStats")
        self.assertEqual([m.model_dir for m in stats.models], [self.s.model_a, self.s.model_b])

    def test_scanctl_tls_and_token(self):
        base = ["--server", "localhost:%d" % self.server.port] + (["--tls-ca", self.cert] if self.tls else [])
        r = subprocess.run([SCANCTL] + base + ["--token", self.TOKEN, "stats", "--json"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(json.loads(r.stdout)["models"]), 2)
        r = subprocess.run([SCANCTL] + base + ["stats"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 1, "no token: an RPC error")
        self.assertIn("UNAUTHENTICATED", r.stderr)
        r = subprocess.run([SCANCTL] + base + ["health"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        # --token-file: the server's format (blank and '#' lines skipped), holding exactly one token.
        client_tokens = os.path.join(self.s.tmp, "client-token")
        with open(client_tokens, "w") as f:
            f.write("# issued to the e2e client\n\n  %s  \n" % self.TOKEN)
        r = subprocess.run([SCANCTL] + base + ["--token-file", client_tokens, "stats", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(client_tokens, "a") as f:
            f.write("another-token\n")
        r = subprocess.run([SCANCTL] + base + ["--token-file", client_tokens, "stats"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 2, "two tokens: a usage error")
        self.assertIn("holds 2 tokens", r.stderr)
        # A token gRPC cannot send as metadata (it aborts on one): a usage error too.
        r = subprocess.run([SCANCTL] + base + ["--token", "two\nlines", "stats"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("printable ASCII only", r.stderr)


def openssl(*args):
    r = subprocess.run(["openssl"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    if r.returncode != 0:
        raise AssertionError("openssl %s failed: %s" % (args[0], r.stderr))


class MutualTlsTest(E2EBase):
    """--tls-client-ca: only clients with a certificate signed by that CA get through the handshake."""

    @classmethod
    def setUpClass(cls):
        if shutil.which("openssl") is None:
            raise unittest.SkipTest("openssl not found: cannot make the certificates for mutual TLS")
        cls.s = cls.setUpShared()
        tmp = os.path.join(cls.s.tmp, "mtls")
        os.makedirs(tmp, exist_ok=True)
        p = lambda name: os.path.join(tmp, name)  # noqa: E731
        cls.ca = p("ca.pem")
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p("ca.key"), "-out", cls.ca, "-days",
                "1", "-subj", "/CN=scanserve-test-ca")
        with open(p("server.ext"), "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")

        def signed(name, cn, ext=None):
            openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", p(name + ".key"), "-out", p(name + ".csr"),
                    "-subj", "/CN=" + cn)
            openssl("x509", "-req", "-in", p(name + ".csr"), "-CA", cls.ca, "-CAkey", p("ca.key"),
                    "-CAcreateserial", "-out", p(name + ".pem"), "-days", "1", *(["-extfile", ext] if ext else []))
            return p(name + ".pem"), p(name + ".key")

        cls.server_cert, cls.server_key = signed("server", "localhost", p("server.ext"))
        cls.client_cert, cls.client_key = signed("client", "scanctl")
        # A client certificate the server's CA did not sign.
        cls.rogue_cert, cls.rogue_key = p("rogue.pem"), p("rogue.key")
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", cls.rogue_key, "-out", cls.rogue_cert,
                "-days", "1", "-subj", "/CN=rogue")
        # The server's client-CA file, a copy it re-reads on SIGHUP only (--credential-reload-s 0).
        cls.client_cas = p("client-cas.pem")
        shutil.copyfile(cls.ca, cls.client_cas)
        cls.start_class_server("mtls", [cls.s.model_a], os.path.join(cls.s.tmp, "data_mtls"),
                               extra=["--tls-cert", cls.server_cert, "--tls-key", cls.server_key,
                                      "--tls-client-ca", cls.client_cas, "--credential-reload-s", "0",
                                      "--log-format", "json"],
                               channel=lambda: cls.open_channel(cls.client_cert, cls.client_key))

    @classmethod
    def open_channel(cls, cert=None, key=None):
        def read(path):
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()
        creds = grpc.ssl_channel_credentials(root_certificates=read(cls.ca), private_key=read(key),
                                             certificate_chain=read(cert))
        return grpc.secure_channel("127.0.0.1:%d" % cls.server.port, creds, options=CHANNEL_OPTIONS + [
            ("grpc.ssl_target_name_override", "localhost")])

    @classmethod
    def tearDownClass(cls):
        cls.stop_class_server()

    def test_only_clients_with_a_ca_signed_certificate_get_through(self):
        stats = self.rpc_ok(self.stub.GetStats, self.s.pb.GetStatsRequest(), "GetStats with the client certificate")
        self.assertEqual(stats.images, 0)
        for what, cert, key in (("no client certificate", None, None),
                                ("a certificate the CA did not sign", self.rogue_cert, self.rogue_key)):
            channel = self.open_channel(cert, key)
            try:
                with self.assertRaises(grpc.RpcError, msg=what) as ctx:
                    self.s.pb_grpc.ScanServiceStub(channel).GetStats(self.s.pb.GetStatsRequest(), timeout=10)
                self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAVAILABLE, what)
            finally:
                channel.close()
        self.assert_still_serving("refused handshakes")

    def rogue_code(self):
        channel = self.open_channel(self.rogue_cert, self.rogue_key)
        try:
            self.s.pb_grpc.ScanServiceStub(channel).GetStats(self.s.pb.GetStatsRequest(), timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()
        finally:
            channel.close()

    def set_client_cas(self, *paths):
        text = ""
        for path in paths:
            with open(path) as f:
                text += f.read()
        with open(self.client_cas + ".tmp", "w") as f:
            f.write(text)
        os.replace(self.client_cas + ".tmp", self.client_cas)

    def wait_for_rogue(self, code):
        deadline = time.time() + 10  # gRPC's watcher takes the new CAs within a second
        while self.rogue_code() != code and time.time() < deadline:
            time.sleep(0.2)
        self.assertEqual(self.rogue_code(), code)

    def test_sighup_reads_rotated_client_cas(self):
        """With --credential-reload-s 0 the files are read at start and on SIGHUP only."""
        try:
            self.set_client_cas(self.ca, self.rogue_cert)  # the rogue certificate is its own CA
            time.sleep(2.5)
            self.assertEqual(self.rogue_code(), grpc.StatusCode.UNAVAILABLE, "not read again without SIGHUP")
            self.server.proc.send_signal(signal.SIGHUP)
            self.wait_for_rogue(grpc.StatusCode.OK)
            self.rpc_ok(self.stub.GetStats, self.s.pb.GetStatsRequest(), "the CA-signed client still gets through")
            self.assertIn("received SIGHUP: credential files read again, 1 replaced", self.server.log_tail(20000))
        finally:
            self.set_client_cas(self.ca)
            self.server.proc.send_signal(signal.SIGHUP)
            self.wait_for_rogue(grpc.StatusCode.UNAVAILABLE)
        self.assert_still_serving("SIGHUP")

    def test_json_log_lines(self):
        """--log-format json: every stderr line is one JSON object, gRPC's (failed handshakes) and
        protobuf's (a request string that is not UTF-8) too."""
        self.assertEqual(self.rogue_code(), grpc.StatusCode.UNAVAILABLE)
        with self.assertRaises(grpc.RpcError) as ctx:
            self.channel.unary_unary("/scanserve.v1.ScanService/SearchImages")(b"\x0a\x03" + b"a\xffb", timeout=10)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        deadline = time.time() + 10
        while time.time() < deadline:
            with open(self.server.log_path, "rb") as f:
                lines = f.read().decode("utf-8").splitlines()
            records = []
            for line in lines:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    self.fail("not a JSON line: %r" % line)
            if {"grpc", "protobuf"} <= {r.get("source") for r in records}:
                break
            time.sleep(0.2)
        for r in records:
            self.assertEqual(set(r) >= {"time", "level", "msg"}, True, r)
            self.assertIn(r["level"], ("info", "warning", "error"))
        self.assertTrue(any(r["msg"].startswith("serving scanserve.v1.ScanService") for r in records))
        grpc_lines = [r for r in records if r.get("source") == "grpc"]
        self.assertTrue(grpc_lines, "the refused handshake's gRPC line")
        self.assertTrue(all(isinstance(r["line"], int) and r["file"] for r in grpc_lines), grpc_lines[:1])
        self.assertTrue(any("andshake" in r["msg"] for r in grpc_lines), grpc_lines[:3])
        protobuf_lines = [r for r in records if r.get("source") == "protobuf"]
        self.assertTrue(any("UTF-8" in r["msg"] for r in protobuf_lines), protobuf_lines[:3])

    def test_scanctl_with_a_client_certificate(self):
        base = [SCANCTL, "--server", "localhost:%d" % self.server.port, "--tls-ca", self.ca]
        r = subprocess.run(base + ["--tls-cert", self.client_cert, "--tls-key", self.client_key, "stats", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(json.loads(r.stdout)["models"]), 1)
        r = subprocess.run(base + ["--timeout", "10", "stats"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=60)
        self.assertNotEqual(r.returncode, 0, "without a client certificate the handshake fails")
        r = subprocess.run(base + ["--tls-cert", self.client_cert, "stats"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 2, "a certificate without its key is a usage error")
        self.assertIn("--tls-cert and --tls-key go together", r.stderr)


class SyntheticBenchTest(E2EBase):
    """--synthetic-images/--synthetic-captions (benchmark items, never stored) and `scanctl bench`, the
    end-to-end load generator: its counts, error accounting and exit codes."""

    @classmethod
    def setUpClass(cls):
        cls.s = cls.setUpShared()
        cls.data_dir = os.path.join(cls.s.tmp, "data_synthetic")
        cls.start_class_server("synthetic", [cls.s.model_a], cls.data_dir,
                               extra=["--synthetic-images", "300", "--synthetic-captions", "120"])

    @classmethod
    def tearDownClass(cls):
        cls.stop_class_server()

    def bench(self, args, expect):
        r = self.scanctl(["--json", "bench"] + args, expect=expect)
        return json.loads(r.stdout)

    def test_synthetic_items_and_bench(self):
        pb = self.s.pb
        stats = self.rpc_ok(self.stub.GetStats, pb.GetStatsRequest(), "GetStats")
        self.assertEqual((stats.images, stats.captions), (300, 120))
        self.assertEqual((stats.synthetic_images, stats.synthetic_captions), (300, 120))
        self.assertIn("300 synthetic", self.scanctl(["stats"], expect=0).stdout)
        self.upsert_all(collection="real")
        hits = self.rpc_ok(self.stub.SearchImages, pb.SearchImagesRequest(queries=[self.s.captions[0]], top_k=5,
                                                                           filter=pb.Filter(collection="synthetic")),
                           "SearchImages").results[0].hits
        self.assertEqual(len(hits), 5)
        self.assertTrue(all(h.id.startswith("synthetic/") and h.collection == "synthetic" for h in hits))

        # Text -> image, two levels of a fixed number of calls: every call answered and counted.
        caps = os.path.join(self.s.tmp, "bench_caps.txt")
        with open(caps, "w") as f:
            f.write("\n".join(self.s.captions) + "\n\n")
        doc = self.bench(["--captions", caps, "--concurrency", "1,4", "--requests", "24", "--warmup", "0.2",
                          "--queries-per-call", "2"], expect=0)
        self.assertEqual(doc["direction"], "text_to_image")
        self.assertEqual([lv["concurrency"] for lv in doc["levels"]], [1, 4])
        for lv in doc["levels"]:
            self.assertEqual((lv["calls"], lv["errors"]), (24, 0), lv)
            self.assertGreater(lv["queries_per_second"], 0)
            self.assertAlmostEqual(lv["queries_per_second"], 48 / lv["seconds"], delta=1e-6 * 48 / lv["seconds"])
            self.assertTrue(0 < lv["p50_ms"] <= lv["p90_ms"] <= lv["p99_ms"] <= lv["max_ms"], lv)

        # Image -> text by stored ids: synthetic images are made again from their index; a real one too.
        ids = os.path.join(self.s.tmp, "bench_ids.txt")
        with open(ids, "w") as f:
            f.write("\n".join(["synthetic/%d" % i for i in range(0, 300, 7)] + ["img1"]) + "\n")
        doc = self.bench(["--image-ids", ids, "--concurrency", "3", "--requests", "30", "--warmup", "0"], expect=0)
        self.assertEqual(doc["direction"], "image_to_text")
        self.assertEqual((doc["levels"][0]["calls"], doc["levels"][0]["errors"]), (30, 0))

        # By duration: calls keep going for about that long.
        doc = self.bench(["a dog", "--duration", "1", "--warmup", "0"], expect=0)
        self.assertGreater(doc["levels"][0]["calls"], 0)
        self.assertGreaterEqual(doc["levels"][0]["seconds"], 0.9)

        # Failing calls are counted by code and make the exit code 1; an unknown id is NOT_FOUND.
        r = self.scanctl(["--json", "bench", "--image-id", "nope", "--requests", "5", "--warmup", "0"], expect=1)
        lv = json.loads(r.stdout)["levels"][0]
        self.assertEqual((lv["calls"], lv["errors"], lv["error_codes"]), (5, 5, {"NOT_FOUND": 5}))
        self.assertIn("NOT_FOUND", r.stderr)
        self.scanctl(["bench", "--captions", caps, "--image-id", "img1"], expect=2)
        self.scanctl(["bench", "a dog", "--concurrency", "0"], expect=2)

        # Every client connects before the first level: nothing listening is UNAVAILABLE (exit 4)
        # once --timeout has passed, not failed calls.
        r = subprocess.run([SCANCTL, "--server", "127.0.0.1:%d" % free_port(), "--timeout", "1", "bench", "a dog",
                            "--requests", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 4, r.stderr)
        self.assertIn("no connection to", r.stderr)
        self.scanctl(["bench", "a dog", "--duration", "1", "--requests", "3"], expect=2)
        self.assert_still_serving("the bench runs")

        # Never stored: a restart without the flags has only the real items.
        self.stop_class_server()
        server = ServerProcess(self.s.tmp, "synthetic2", [self.s.model_a], self.data_dir).start()
        try:
            wait_listening(server)
            channel = grpc.insecure_channel("127.0.0.1:%d" % server.port, options=CHANNEL_OPTIONS)
            wait_serving(server, channel, self.s.health_pb2, self.s.health_grpc)
            stats = self.s.pb_grpc.ScanServiceStub(channel).GetStats(pb.GetStatsRequest(), timeout=RPC_TIMEOUT_S)
            self.assertEqual((stats.images, stats.captions), (len(self.s.images), len(self.s.captions)))
            self.assertEqual(stats.synthetic_images, 0)
            channel.close()
        finally:
            self.assertEqual(server.stop(), 0, server.log_tail())


class SnapshotTest(E2EBase):
    """scanctl snapshot on a server with --snapshot-dir; a second server restored from it answers as
    the first did when it was taken."""

    @classmethod
    def setUpClass(cls):
        cls.s = cls.setUpShared()
        cls.snapshots = os.path.join(cls.s.tmp, "snapshots", "scan")  # the server creates it
        cls.start_class_server("snap", [cls.s.model_a], os.path.join(cls.s.tmp, "data_snap"),
                               extra=["--snapshot-dir", cls.snapshots])

    @classmethod
    def tearDownClass(cls):
        cls.stop_class_server()

    def test_restored_server_answers_as_the_original_did(self):
        self.upsert_all()
        query = ["--json", "search-images", self.s.captions[0], "--top-k", "5"]
        before = json.loads(self.scanctl(query, expect=0).stdout)
        r = self.scanctl(["--json", "snapshot", "s1"], expect=0)
        snap = json.loads(r.stdout)
        self.assertEqual(snap["data_dir"], os.path.join(self.snapshots, "s1"))
        self.assertEqual(int(snap["images"]), len(self.s.images))
        self.assertEqual(int(snap["captions"]), len(self.s.captions))
        self.scanctl(["snapshot", "s1"], expect=1)  # ALREADY_EXISTS
        self.scanctl(["snapshot", "../escape"], expect=1)  # INVALID_ARGUMENT
        self.scanctl(["delete", "--image", "img0"], expect=0)

        restored = ServerProcess(self.s.tmp, "restored", [self.s.model_a], snap["data_dir"])
        restored.start()
        try:
            wait_listening(restored)
            argv = [SCANCTL, "--server", "127.0.0.1:%d" % restored.port]
            run = lambda args: subprocess.run(argv + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              universal_newlines=True, timeout=120)
            r = run(query)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout), before)
            self.assertEqual(run(["get", "--image", "img0"]).returncode, 0, "deleted after the snapshot")
            self.assertEqual(restored.stop(), 0, restored.log_tail())
        finally:
            if restored.alive():
                restored.kill()
        self.scanctl(["get", "--image", "img0"], expect=3)


class DurabilityTest(E2EBase):
    """Acknowledged writes survive kill -9; deletes too."""

    @classmethod
    def setUpClass(cls):
        cls.s = cls.setUpShared()
        cls.data_dir = os.path.join(cls.s.tmp, "data_durable")
        cls.server = None

    def start(self):
        port = self.server.port if self.server else None
        self.server = ServerProcess(self.s.tmp, "durable", [self.s.model_a], self.data_dir, port=port)
        self.server.start()
        wait_listening(self.server)
        self.channel = grpc.insecure_channel("127.0.0.1:%d" % self.server.port, options=CHANNEL_OPTIONS)
        wait_serving(self.server, self.channel, self.s.health_pb2, self.s.health_grpc)
        self.stub = self.s.pb_grpc.ScanServiceStub(self.channel)

    def restart_after_kill9(self):
        self.server.kill9()
        self.channel.close()
        self.start()

    def tearDown(self):
        if self.server and self.server.alive():
            self.server.stop()

    def test_kill9_after_ack(self):
        pb = self.s.pb
        self.start()
        resp = self.rpc_ok(self.stub.UpsertImages, pb.UpsertImagesRequest(images=[pb.Image(
            id="dur/img", collection="dur", region_features=features_msg(pb, self.s.images[3]))]), "UpsertImages")
        self.assertEqual(resp.results[0].code, 0, resp.results[0].message)
        responses = list(self.stub.Ingest(iter([pb.IngestRequest(caption=pb.Caption(
            id="dur/cap", text=self.s.captions[2], collection="dur"))]), timeout=RPC_TIMEOUT_S))
        self.assertEqual(responses[0].result.code, 0, responses[0].result.message)
        self.restart_after_kill9()  # immediately after the acks

        stats = self.rpc_ok(self.stub.GetStats, pb.GetStatsRequest(), "GetStats after restart")
        self.assertEqual((stats.images, stats.captions), (1, 1))
        hits = self.rpc_ok(self.stub.SearchCaptions, pb.SearchCaptionsRequest(
            queries=[pb.ImageQuery(image_id="dur/img")]), "SearchCaptions after restart").results[0].hits
        self.assertEqual([h.id for h in hits], ["dur/cap"])
        self.assertAlmostEqual(hits[0].score, self.s.sims[3, 2], delta=1e-5)

        resp = self.rpc_ok(self.stub.Delete, pb.DeleteRequest(image_ids=["dur/img"], caption_ids=["dur/cap"]),
                           "Delete")
        self.assertEqual([r.code for r in resp.image_results] + [r.code for r in resp.caption_results], [0, 0])
        self.restart_after_kill9()

        stats = self.rpc_ok(self.stub.GetStats, pb.GetStatsRequest(), "GetStats after the second restart")
        self.assertEqual((stats.images, stats.captions), (0, 0))
        self.expect_code(grpc.StatusCode.NOT_FOUND, self.stub.SearchCaptions,
                         pb.SearchCaptionsRequest(queries=[pb.ImageQuery(image_id="dur/img")]), "deleted image")
        hits = self.rpc_ok(self.stub.SearchImages, pb.SearchImagesRequest(queries=["a dog"]), "search").results[0]
        self.assertEqual(len(hits.hits), 0)
        self.assertEqual(self.server.stop(), 0, self.server.log_tail())


class CrashReportTest(E2EBase):
    """A process that dies of a fatal signal (a failed assertion in a library is SIGABRT) first
    writes its stack in the log's format, then dies of that signal as it would have."""

    @classmethod
    def setUpClass(cls):
        cls.s = cls.setUpShared()

    def crash(self, log_format, sig):
        server = ServerProcess(self.s.tmp, "crash-%s" % log_format, [self.s.model_a],
                               os.path.join(self.s.tmp, "data_crash_%s" % log_format),
                               extra=["--log-format", log_format]).start()
        wait_listening(server)
        os.kill(server.proc.pid, sig)
        code = server.proc.wait(timeout=30)
        server.log.close()
        return code, server.this_start_log()

    def test_text(self):
        code, log = self.crash("text", signal.SIGSEGV)
        self.assertEqual(code, -signal.SIGSEGV, log)
        lines = log.splitlines()
        first = [i for i, line in enumerate(lines) if "scanserve: crash: SIGSEGV in process" in line]
        self.assertEqual(len(first), 1, log)
        frames = lines[first[0] + 1:]
        self.assertGreaterEqual(len(frames), 3, log)
        for frame in frames:
            self.assertRegex(frame, r"^F \d{4}-\d\d-\d\dT[\d:.]+Z scanserve:   #\d+ 0x[0-9a-f]+", log)
        # The main thread waits for a signal: its frames name libc and scanserve's own functions.
        self.assertIn("libc.so", log)
        self.assertIn("scanserve _ZN9scanserve", log)

    def test_json(self):
        code, log = self.crash("json", signal.SIGABRT)
        self.assertEqual(code, -signal.SIGABRT, log)
        crash = [json.loads(line) for line in log.splitlines() if '"source":"crash"' in line]
        for line in log.splitlines():
            json.loads(line)  # every line, the report's included
        self.assertGreaterEqual(len(crash), 4, log)
        self.assertTrue(crash[0]["msg"].startswith("crash: SIGABRT in process"), crash[0])
        self.assertEqual({c["level"] for c in crash}, {"fatal"})


def tearDownModule():
    for server in ServerProcess.started:
        if server.alive():
            server.proc.kill()
            server.proc.wait()
    if E2EBase.shared is not None:
        if os.environ.get("SCANSERVE_KEEP_TMP"):
            print("kept %s" % E2EBase.shared.tmp)
        else:
            shutil.rmtree(E2EBase.shared.tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
