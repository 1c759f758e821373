"""scanserve's connection management, with a real server and Python client.

    SCANSERVE_BUILD_DIR=build /usr/bin/python3 tests/python/test_server_connections.py

--max-connection-age-s: behind an L4 load balancer (a Kubernetes Service) a gRPC client keeps its
first connection, and so its first replica, for good. With the flag the server sends GOAWAY to
connections older than that, and clients reconnect (through the balancer). Searching every 100 ms
for 5 s, every call succeeds, and with a 1 s age the channel's connection is replaced at least twice
(it leaves READY and comes back); without the flag it stays on its first connection.

--min-client-ping-interval-s: clients that keep their idle connections alive with keepalive pings
(through NATs and balancers that drop idle ones) are closed by gRPC's default policy with
"too_many_pings". A client pinging every 1.5 s on an idle connection keeps it for 5 s with the flag
at 1 s; one pinging every second loses it without the flag.

--shutdown-delay-s: after SIGTERM a Kubernetes Service keeps sending new calls to a pod for a few
seconds, until its endpoint is removed everywhere. With the flag at 3 s the server reports
NOT_SERVING (grpc.health.v1 and /healthz) at once but answers every call, new connections included,
for those seconds, then shuts down and exits 0; without it calls fail within half a second.

--grpc-memory-quota: gRPC buffers every request it is receiving, on every connection, without a
bound of its own: 12 clients uploading 24 MiB each at once grew the server by ~600 MB. With a 64 MiB
quota, gRPC refuses the calls buffering the most instead (RESOURCE_EXHAUSTED, or UNAVAILABLE where
it closes a connection): some of those uploads are refused, the server's peak memory grows by less than
the uploads' bytes (~180 MiB), and it serves on. Under a sanitizer (SCANSERVE_SANITIZED), whose allocator
adds its own few hundred MiB, the check is that 24 clients grow the peak by less than half of the
12 extra uploads' bytes over what 12 do.

The same ages close long Ingest streams: `scanctl import` reopens the stream where it stopped and
resends what was unanswered, so an import of 3,600 items one at a time, over many connections'
lives, stores every item.

--keepalive-s: the server pings idle connections (to drop dead clients and keep NAT state). Through
a counting proxy, an idle connection receives PING frames within 5 s with the flag at 1 s, and
nothing without it.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scanserve_harness as h  # noqa: E402

h.skip_if_server_disabled()
h.require_grpc()
import grpc  # noqa: E402

WINDOW_S = 5.0
CALL_EVERY_S = 0.1
# scripts/sanitize-check.sh names the sanitizer the server was built with.
SANITIZED = os.environ.get("SCANSERVE_SANITIZED", "")


class ConnectionsTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        h.require_executable(h.SERVER, "the scanserve server")
        cls.tmp = h.make_tmp("scan_connections_")
        cls.pb, cls.pb_grpc = h.generate_stubs(os.path.join(cls.tmp, "stubs"))
        cls.model_dir = h.make_model(cls.tmp, seed=4)

    @classmethod
    def tearDownClass(cls):
        h.remove_tmp(cls.tmp)

    @contextlib.contextmanager
    def connected(self, extra, name, channel_options=(), via_proxy=False):
        """(stub, connectivity, proxy) of a channel to a fresh server started with `extra`."""
        server = h.ServerProcess(self.tmp, name, [self.model_dir], os.path.join(self.tmp, name), extra=extra).start()
        proxy, channel = None, None
        try:
            server.wait_listening()
            port = server.port
            if via_proxy:
                proxy = CountingProxy(server.port)
                port = proxy.port
            channel = grpc.insecure_channel("127.0.0.1:%d" % port, options=h.CHANNEL_OPTIONS + list(channel_options))
            connectivity = Connectivity(channel)
            grpc.channel_ready_future(channel).result(timeout=h.START_TIMEOUT_S)
            yield self.pb_grpc.ScanServiceStub(channel), connectivity, proxy
            connectivity.close()
        finally:
            if channel is not None:
                channel.close()
            if proxy is not None:
                proxy.close()
            server.kill()

    def search_for_a_while(self, extra, name):
        """(calls that failed, times the channel's connection was lost)."""
        with self.connected(extra, name) as (stub, connectivity, _):
            rng = np.random.default_rng(3)
            x = h.sc.random_region_features(rng, 5, h.IMG_DIM)
            stub.UpsertImages(self.pb.UpsertImagesRequest(images=[
                self.pb.Image(id="one", region_features=h.features_msg(self.pb, x))]), timeout=h.RPC_TIMEOUT_S)
            failures = []
            end = time.time() + WINDOW_S
            while time.time() < end:
                try:
                    # wait_for_ready: a call issued while the channel reconnects waits for the new
                    # connection (as a client behind a balancer would) instead of failing fast on a
                    # refused connect; a call the GOAWAY cut short would still fail.
                    hits = stub.SearchImages(self.pb.SearchImagesRequest(queries=h.random_captions(rng, 1)),
                                             timeout=h.RPC_TIMEOUT_S, wait_for_ready=True).results[0].hits
                    if [hit.id for hit in hits] != ["one"]:
                        failures.append("hits %s" % [hit.id for hit in hits])
                except grpc.RpcError as e:
                    failures.append("%s: %s" % (e.code(), e.details()))
                time.sleep(CALL_EVERY_S)
            return failures, connectivity.lost()

    def test_old_connections_are_replaced_without_failing_calls(self):
        failures, replaced = self.search_for_a_while(
            ["--max-connection-age-s", "1", "--max-connection-age-grace-s", "1"], "aged")
        self.assertEqual(failures, [])
        self.assertGreaterEqual(replaced, 2, "a 1 s connection age over %.0f s" % WINDOW_S)

    def test_without_the_flag_the_first_connection_stays(self):
        failures, replaced = self.search_for_a_while([], "unaged")
        self.assertEqual(failures, [])
        self.assertEqual(replaced, 0)

    def idle_with_keepalive_pings(self, extra, name, ping_ms):
        """Times a client pinging every ping_ms lost its idle connection over 5 s; a call then works."""
        pings = [("grpc.keepalive_time_ms", ping_ms), ("grpc.keepalive_timeout_ms", 5000),
                 ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
        with self.connected(extra, name, channel_options=pings) as (stub, connectivity, _):
            stub.GetStats(self.pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S)
            time.sleep(WINDOW_S)  # idle: only the pings
            lost = connectivity.lost()
            stub.GetStats(self.pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S, wait_for_ready=True)
            return lost

    def test_clients_may_keep_idle_connections_alive_with_pings(self):
        # Every 1.5 s against a 1 s minimum: a margin for timers.
        self.assertEqual(self.idle_with_keepalive_pings(["--min-client-ping-interval-s", "1"], "pinged", 1500), 0)

    def test_without_the_flag_frequent_pings_lose_the_connection(self):
        self.assertGreaterEqual(self.idle_with_keepalive_pings([], "too-many-pings", 1000), 1,
                                "gRPC's default ping policy should have closed the connection")

    def server_bytes_while_idle(self, extra, name):
        """Bytes the server sends a connected client during 5 idle seconds (through a counting proxy)."""
        with self.connected(extra, name, via_proxy=True) as (stub, _, proxy):
            stub.GetStats(self.pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S, wait_for_ready=True)
            time.sleep(0.5)  # the call's last frames
            before = proxy.downstream_bytes()
            time.sleep(WINDOW_S)
            return proxy.downstream_bytes() - before

    def test_the_server_pings_idle_connections(self):
        # An HTTP/2 PING frame is 17 bytes; the first goes out after a second of idleness.
        self.assertGreaterEqual(self.server_bytes_while_idle(["--keepalive-s", "1"], "keepalive"), 17)
        self.assertEqual(self.server_bytes_while_idle([], "no-keepalive"), 0)

    def calls_after_sigterm(self, extra, name, window_s):
        """(failed calls, health status and /healthz code just after SIGTERM, exit code, log) of a
        server searched every 100 ms by fresh connections for `window_s` after SIGTERM."""
        server = h.ServerProcess(self.tmp, name, [self.model_dir], os.path.join(self.tmp, name), extra=extra).start()
        try:
            server.wait_listening()
            target = "127.0.0.1:%d" % server.port
            with grpc.insecure_channel(target, options=h.CHANNEL_OPTIONS) as channel:
                self.assertEqual(h.health_status(channel), 1)
                server.proc.send_signal(signal.SIGTERM)
                time.sleep(0.3)
                try:
                    health = h.health_status(channel)
                except grpc.RpcError as e:
                    health = e.code()
            try:
                healthz = urllib.request.urlopen("http://127.0.0.1:%d/healthz" % server.metrics_port, timeout=5).status
            except urllib.error.HTTPError as e:
                healthz = e.code
            except OSError:
                healthz = None
            failures = []
            end = time.time() + window_s
            while time.time() < end:
                # A fresh connection each time, as a balancer's would be.
                with grpc.insecure_channel(target, options=h.CHANNEL_OPTIONS) as channel:
                    try:
                        self.pb_grpc.ScanServiceStub(channel).SearchImages(
                            self.pb.SearchImagesRequest(queries=["a dog"]), timeout=2)
                    except grpc.RpcError as e:
                        failures.append(e.code())
                time.sleep(CALL_EVERY_S)
            code = server.proc.wait(timeout=30)
            return failures, health, healthz, code, server.log_tail(20000)
        finally:
            server.kill()

    def test_shutdown_delay_serves_calls_while_health_says_not_serving(self):
        # 5 s of delay for 1.4 s of calls: the margin absorbs a slow call on a loaded CI machine.
        failures, health, healthz, code, log = self.calls_after_sigterm(["--shutdown-delay-s", "5"], "delayed", 1.4)
        self.assertEqual(failures, [], log)
        self.assertEqual((health, healthz), (2, 503), "NOT_SERVING at once")
        self.assertEqual(code, 0, log)
        self.assertIn("calls still served for 5 s", log)

    def test_without_a_shutdown_delay_calls_fail_at_once(self):
        failures, _, _, code, log = self.calls_after_sigterm([], "undelayed", 1.4)
        self.assertGreater(len(failures), 5, log)
        self.assertEqual(code, 0, log)


    def test_an_import_outlives_its_connections(self):
        """A server with --max-connection-age-s closes every connection after age + grace, long
        Ingest streams included: scanctl import reopens the stream where it stopped."""
        scanctl = os.path.join(h.BUILD_DIR, "client", "scanctl")
        h.require_executable(scanctl, "scanctl")
        d = os.path.join(self.tmp, "precomp")
        os.makedirs(d, exist_ok=True)
        rng = np.random.default_rng(21)
        n_images, n_captions = 600, 3000  # five captions per image, as the precomp layout has
        ims = np.stack([h.sc.random_region_features(rng, 4, h.IMG_DIM) for _ in range(n_images)])
        np.save(os.path.join(d, "long_ims.npy"), ims.astype(np.float32))
        with open(os.path.join(d, "long_caps.txt"), "w") as f:
            f.write("\n".join(h.random_captions(rng, n_captions)) + "\n")
        server = h.ServerProcess(self.tmp, "aged-import", [self.model_dir], os.path.join(self.tmp, "aged-import"),
                                 extra=["--max-connection-age-s", "1", "--max-connection-age-grace-s", "1"]).start()
        try:
            server.wait_listening()
            # One item in flight at a time: the import lasts seconds, beyond several connections' lives.
            r = subprocess.run([scanctl, "--server", "127.0.0.1:%d" % server.port, "--json", "import", "precomp",
                                "--data-dir", d, "--split", "long", "--window", "1", "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr + server.log_tail())
            summary = json.loads(r.stdout.strip().splitlines()[-1])
            total = n_images + n_captions
            self.assertEqual((summary["total"], summary["acked"], summary["failed"]), (total, total, 0), summary)
            self.assertGreater(summary["seconds"], 2.5, "the import must outlast a connection (age 1 s + grace 1 s)")
            self.assertGreaterEqual(summary["reconnects"], 1, r.stderr)
            self.assertIn("reconnecting", r.stderr)
            with grpc.insecure_channel("127.0.0.1:%d" % server.port, options=h.CHANNEL_OPTIONS) as channel:
                stats = self.pb_grpc.ScanServiceStub(channel).GetStats(self.pb.GetStatsRequest(),
                                                                       timeout=h.RPC_TIMEOUT_S)
            self.assertEqual((stats.images, stats.captions), (n_images, n_captions))
        finally:
            server.kill()

    def test_memory_quota_refuses_large_uploads_past_it(self):
        upload_mib, clients = 24, 12
        grown = self.upload_past_quota("quota", clients, upload_mib)
        if not SANITIZED:
            self.assertLess(grown, clients * upload_mib, "peak grew by %d MiB" % grown)
            return
        # A sanitizer's allocator adds a few hundred MiB of its own to the peak (AddressSanitizer: ~240
        # MiB more, with or without the quota), so the bound above does not hold there. What the quota
        # must still give: a peak that does not follow the clients. Twice as many grow it by less than
        # half of the extra uploads' bytes (without the quota they would add all of them).
        grown_twice = self.upload_past_quota("quota-2x", 2 * clients, upload_mib)
        self.assertLess(grown_twice - grown, clients * upload_mib / 2,
                        "%d clients grew the peak by %d MiB, %d by %d MiB" % (clients, grown, 2 * clients,
                                                                              grown_twice))

    def upload_past_quota(self, name, clients, upload_mib):
        """How much `clients` uploads of `upload_mib` at once grow the peak memory of a server with a 64 MiB
        gRPC memory quota (MiB), after checking that some were refused and the server serves on."""
        server = h.ServerProcess(self.tmp, name, [self.model_dir], os.path.join(self.tmp, name),
                                 extra=["--grpc-memory-quota", "64M", "--max-message-bytes", "32M"]).start()
        try:
            server.wait_listening()
            before = server.peak_rss_kib() >> 10
            # Region features of the wrong width: each upload is refused for that, quickly, once
            # it has arrived whole; what is measured is its arrival.
            rows = (upload_mib << 20) // ((h.IMG_DIM + 1) * 4)
            x = np.ones((rows, h.IMG_DIM + 1), np.float32)
            request = self.pb.UpsertImagesRequest(images=[self.pb.Image(id="big", region_features=h.features_msg(
                self.pb, x))]).SerializeToString()
            path = os.path.join(self.tmp, "upload.bin")
            with open(path, "wb") as f:
                f.write(request)
            # Separate processes, as separate clients would be: one Python process cannot send
            # that fast from several threads.
            codes = run_clients(clients, path, "127.0.0.1:%d" % server.port)
            grown = (server.peak_rss_kib() >> 10) - before
            self.assertTrue(server.alive(), server.log_tail())
            # gRPC cancels the streams buffering the most (RESOURCE_EXHAUSTED) and may close a
            # connection too (GOAWAY: UNAVAILABLE, which clients retry).
            self.assertEqual(set(codes) - {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}, set(), codes)
            self.assertNotEqual(set(codes), {"OK"}, "none refused; the server grew by %d MiB" % grown)
            with grpc.insecure_channel("127.0.0.1:%d" % server.port, options=h.CHANNEL_OPTIONS) as channel:
                self.pb_grpc.ScanServiceStub(channel).SearchImages(
                    self.pb.SearchImagesRequest(queries=["a dog"]), timeout=h.RPC_TIMEOUT_S)
            return grown
        finally:
            server.kill()


UPLOAD_CLIENT = r"""
import sys, grpc
request = open(sys.argv[1], "rb").read()
sys.stdin.readline()  # every client starts sending together
with grpc.insecure_channel(sys.argv[2], options=[("grpc.max_send_message_length", 1 << 30)]) as channel:
    try:
        channel.unary_unary("/scanserve.v1.ScanService/UpsertImages")(request, timeout=60)
        print("OK")
    except grpc.RpcError as e:
        print(e.code().name)
"""


def run_clients(n, request_path, target):
    """The status code names of `n` client processes sending the request in `request_path` at once."""
    procs = [subprocess.Popen([sys.executable, "-c", UPLOAD_CLIENT, request_path, target], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    time.sleep(1.0)  # their imports
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    return [p.communicate(timeout=120)[0].strip() for p in procs]


class Connectivity(object):
    """The states a channel goes through, from subscription on."""

    def __init__(self, channel):
        self.channel = channel
        self.lock = threading.Lock()
        self.states = []
        channel.subscribe(self.record, try_to_connect=True)

    def record(self, state):
        with self.lock:
            self.states.append(state)

    def lost(self):
        """How often the channel left READY (a connection closed or replaced)."""
        with self.lock:
            return sum(1 for a, b in zip(self.states, self.states[1:])
                       if a == grpc.ChannelConnectivity.READY and b != grpc.ChannelConnectivity.READY)

    def close(self):
        self.channel.unsubscribe(self.record)

class CountingProxy(object):
    """A loopback TCP proxy for one connection at a time, counting the bytes the server sends."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.downstream = 0
        self.sockets = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self.pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, client, True), daemon=True).start()

    def pump(self, source, sink, count):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if count:
                    with self.lock:
                        self.downstream += len(data)
                sink.sendall(data)
        except OSError:
            pass

    def downstream_bytes(self):
        with self.lock:
            return self.downstream

    def close(self):
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.close()
                except OSError:
                    pass


if __name__ == "__main__":
    unittest.main()
