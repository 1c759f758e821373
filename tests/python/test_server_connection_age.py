"""`scanserve --max-connection-age-s`: old connections are told to go away, and calls do not notice.

    SCANSERVE_BUILD_DIR=build /usr/bin/python3 tests/python/test_server_connection_age.py

Behind an L4 load balancer (a Kubernetes Service) a gRPC client keeps its first connection, and so
its first replica, for good. With --max-connection-age-s the server sends GOAWAY to connections
older than that, and clients reconnect (through the balancer). Checked with a real server and
Python client: searching every 100 ms for 5 s, every call succeeds, and the channel's connection
is replaced at least twice with a 1 s age (it leaves READY and comes back); without the flag it
stays on its first connection.
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

WINDOW_S = 5.0
CALL_EVERY_S = 0.1


class ConnectionAgeTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        h.require_executable(h.SERVER, "the scanserve server")
        cls.tmp = h.make_tmp("scan_connection_age_")
        cls.pb, cls.pb_grpc = h.generate_stubs(os.path.join(cls.tmp, "stubs"))
        cls.model_dir = h.make_model(cls.tmp, seed=4)

    @classmethod
    def tearDownClass(cls):
        h.remove_tmp(cls.tmp)

    def search_for_a_while(self, extra, name):
        """(calls that failed, times the channel's connection went from READY to something else)."""
        server = h.ServerProcess(self.tmp, name, [self.model_dir], os.path.join(self.tmp, name), extra=extra).start()
        channel = None
        try:
            server.wait_listening()
            channel = grpc.insecure_channel("127.0.0.1:%d" % server.port, options=h.CHANNEL_OPTIONS)
            states, lock = [], threading.Lock()

            def record(state):
                with lock:
                    states.append(state)

            channel.subscribe(record, try_to_connect=True)
            grpc.channel_ready_future(channel).result(timeout=h.START_TIMEOUT_S)
            stub = self.pb_grpc.ScanServiceStub(channel)
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
            channel.unsubscribe(record)
            with lock:
                left_ready = sum(1 for a, b in zip(states, states[1:])
                                 if a == grpc.ChannelConnectivity.READY and b != grpc.ChannelConnectivity.READY)
            return failures, left_ready
        finally:
            if channel is not None:
                channel.close()
            server.kill()

    def test_old_connections_are_replaced_without_failing_calls(self):
        failures, replaced = self.search_for_a_while(
            ["--max-connection-age-s", "1", "--max-connection-age-grace-s", "1"], "aged")
        self.assertEqual(failures, [])
        self.assertGreaterEqual(replaced, 2, "a 1 s connection age over %.0f s" % WINDOW_S)

    def test_without_the_flag_the_first_connection_stays(self):
        failures, replaced = self.search_for_a_while([], "unaged")
        self.assertEqual(failures, [])
        self.assertEqual(replaced, 0)


if __name__ == "__main__":
    unittest.main()
