"""Shared pieces for tests that drive the real `scanserve` binary over loopback.

Environment: SCANSERVE_BUILD_DIR (CMake build directory, default SOURCE/build) and SCANSERVE_SOURCE_DIR
(default: two levels above this file). Used by every test_server_*.py and the other tests that start a
server (test_load, test_prometheus_scrape, test_scanctl_copy, test_deploy_kubernetes).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("SCANSERVE_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
BUILD_DIR = os.environ.get("SCANSERVE_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")
SERVER = os.path.join(BUILD_DIR, "server", "scanserve")
PROTO_DIR = os.path.join(SOURCE_DIR, "proto")

START_TIMEOUT_S = 60
RPC_TIMEOUT_S = 30
SERVICE = "scanserve.v1.ScanService"

# Short reconnect backoff; unlimited message sizes.
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
                   ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 300)]

sys.path.insert(0, HERE)
import scan_checkpoints as sc  # noqa: E402
from tool_modules import load_tool  # noqa: E402

WORDS = sorted(w for w in sc.BASE_WORDS if w.isalpha())
IMG_DIM = sc.SMALL_DIMS["img_dim"]


def skip_if_server_disabled():
    """Exit 77 (skip) when the build was configured with SCANSERVE_BUILD_SERVER=OFF."""
    cache = os.path.join(BUILD_DIR, "CMakeCache.txt")
    if os.path.exists(cache):
        with open(cache) as f:
            if any(line.strip() == "SCANSERVE_BUILD_SERVER:BOOL=OFF" for line in f):
                print("skipped: %s was configured with SCANSERVE_BUILD_SERVER=OFF" % BUILD_DIR)
                sys.exit(77)


def require_grpc():
    try:
        import grpc  # noqa: F401  (python3-grpcio)
        import grpc_tools  # noqa: F401  (python3-grpc-tools)
    except ImportError as e:
        raise SystemExit("needs python3-grpcio and python3-grpc-tools under %s: %s" % (sys.executable, e))


def require_executable(path, what):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise AssertionError("%s not built: expected %s (set SCANSERVE_BUILD_DIR to the CMake build directory)"
                             % (what, path))


def generate_stubs(out):
    """(scanserve_pb2, scanserve_pb2_grpc) generated from proto/ into `out`."""
    os.makedirs(out, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", PROTO_DIR, "--python_out", out,
                        "--grpc_python_out", out, os.path.join(PROTO_DIR, "scanserve", "v1", "scanserve.proto")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if r.returncode != 0:
        raise AssertionError("grpc_tools.protoc failed:\n%s" % r.stderr)
    sys.path.insert(0, out)
    from scanserve.v1 import scanserve_pb2, scanserve_pb2_grpc  # noqa: E402
    return scanserve_pb2, scanserve_pb2_grpc


def make_model(d, seed, img_dim=None):
    """A tiny random SCAN model converted to a scanserve model directory under d; img_dim: its image
    encoder's input width (default scan_checkpoints' small one)."""
    vocab = os.path.join(d, "vocab.json")
    if not os.path.exists(vocab):
        sc.write_vocab(vocab)
    V = sc.make_vocab_dict(sc.BASE_WORDS)["idx"]
    name = "model_%d" % seed if img_dim is None else "model_%d_%d" % (seed, img_dim)
    ckpt = os.path.join(d, name + ".pth.tar")
    sc.make_checkpoint(ckpt, V, seed=seed, **({} if img_dim is None else {"img_dim": img_dim}))
    out = os.path.join(d, name)
    load_tool("convert_scan_checkpoint").convert(ckpt, vocab, out, force=True, log=lambda s: None)
    return out


def random_captions(rng, n, min_words=3, max_words=9):
    return [" ".join(str(w) for w in rng.choice(WORDS, size=int(rng.integers(min_words, max_words + 1))))
            for _ in range(n)]


def random_images(rng, n, min_regions=1, max_regions=8):
    return [sc.random_region_features(rng, int(rng.integers(min_regions, max_regions + 1)), IMG_DIM)
            for _ in range(n)]


def features_msg(pb, x):
    x = np.ascontiguousarray(x, dtype="<f4")
    return pb.RegionFeatures(num_regions=x.shape[0], dim=x.shape[1], values=x.tobytes())


_ports_handed_out = set()


def free_port():
    """A loopback port free now and never handed out before by this process.

    The kernel may give the port just released to the next bind(0): two calls in a row (a server's
    gRPC and metrics ports) could otherwise return the same one, and the server then fails to start."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port
    raise AssertionError("no fresh loopback port after 1000 tries")


def stop_process(proc, timeout):
    """SIGTERM, then SIGKILL once `timeout` seconds have passed; nothing for a process already gone."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ServerProcess(object):
    """One scanserve process on free loopback ports; its log goes to a file shown when something fails."""

    def __init__(self, tmp, name, model_dirs, data_dir, extra=(), binary=None, env=None):
        """`binary`: another scanserve build (default SERVER); `env`: variables added for it."""
        self.tmp, self.name = tmp, name
        self.model_dirs, self.data_dir, self.extra = list(model_dirs), data_dir, list(extra)
        self.binary, self.env = binary or SERVER, dict(env or {})
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = os.path.join(tmp, "%s.log" % name)
        self.fixed_ports = False  # set when a restart must come back on the same address
        self.proc = None
        self.log = None
        self.log_offset = 0  # where this start's lines begin (the log is appended to across restarts)

    def start(self):
        self.log_offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        argv = [self.binary, "--listen", "127.0.0.1:%d" % self.port, "--metrics-listen", "127.0.0.1:%d" % self.metrics_port,
                "--data-dir", self.data_dir, "--threads", "2", "--max-queue-delay-us", "2000",
                "--shutdown-grace-s", "5"]
        for m in self.model_dirs:
            argv += ["--model", m]
        argv += self.extra
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, **self.env) if self.env else None)
        return self

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def this_start_log(self):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_listening(self, timeout=START_TIMEOUT_S):
        """Until the server logs that it serves (channels dialled earlier sit in reconnect backoff).

        A port picked by free_port() is only free until the server binds it, seconds later; another
        test running beside this one may take it meanwhile. Then the server is started again on new
        ports (unless they are fixed), so that the collision does not fail the test."""
        deadline = time.time() + timeout
        port_retries = 3
        while time.time() < deadline:
            if not self.alive():
                log = self.this_start_log()
                port_taken = "metrics: cannot bind" in log or "cannot listen on" in log
                if port_taken and not self.fixed_ports and port_retries > 0:
                    port_retries -= 1
                    self.log.close()
                    self.port, self.metrics_port = free_port(), free_port()
                    self.start()
                    continue
                raise AssertionError("%s exited with %s during start-up:\n%s" % (self.name, self.proc.returncode,
                                                                               self.log_tail()))
            if "serving %s on" % SERVICE in self.this_start_log():
                return
            time.sleep(0.05)
        self.kill()
        raise AssertionError("%s did not start within %d s\n%s" % (self.name, timeout, self.log_tail()))

    def status_kib(self, field):
        """A memory field of the server process's /proc/PID/status (VmRSS, VmHWM, ...), KiB."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError("no %s in /proc/%d/status" % (field, self.proc.pid))

    def rss_kib(self):
        """Resident memory of the server process now, KiB."""
        return self.status_kib("VmRSS")

    def peak_rss_kib(self):
        """The most resident memory the server process has had, KiB."""
        return self.status_kib("VmHWM")

    def scrape(self, timeout=10):
        """GET /metrics as text."""
        url = "http://127.0.0.1:%d/metrics" % self.metrics_port
        return urllib.request.urlopen(url, timeout=timeout).read().decode()

    def kill(self):
        """Stops the process (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        stop_process(self.proc, timeout=10)
        if self.log is not None:
            self.log.close()
            self.log = None


class OneServerAtATime(object):
    """Mixin for tests that start, kill and restart one server: self.server, self.channel and
    self.stub (a ScanService stub from self.pb_grpc, which the test sets)."""

    server = None
    channel = None

    def stop_server(self):
        """Closes the channel and stops the server (SIGTERM, then SIGKILL); safe to call twice."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.server is not None:
            self.server.kill()
            self.server = None

    def serve(self, server):
        """Stops the current server, starts `server` (a ServerProcess) and connects to it."""
        import grpc  # python3-grpcio: required by the tests that use this, not by every harness user
        self.stop_server()
        self.server = server.start()
        self.server.wait_listening()
        self.channel = grpc.insecure_channel("127.0.0.1:%d" % self.server.port, options=CHANNEL_OPTIONS)
        grpc.channel_ready_future(self.channel).result(timeout=START_TIMEOUT_S)
        self.stub = self.pb_grpc.ScanServiceStub(self.channel)


def list_image_ids(pb, stub):
    """Every stored image id, through ListItems' pages."""
    ids, token = [], ""
    while True:
        page = stub.ListItems(pb.ListItemsRequest(kind=1, page_size=1000, page_token=token), timeout=RPC_TIMEOUT_S)
        ids += page.ids
        token = page.next_page_token
        if not token:
            return ids


def health_status(channel):
    """grpc.health.v1 Check("") without generated stubs: 1 = SERVING, 2 = NOT_SERVING."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    response = check(b"", timeout=RPC_TIMEOUT_S)
    return response[1] if len(response) >= 2 and response[0] == 0x08 else 0


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text format -> list of (name, {label: value}, float)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            labels = dict(_LABEL.findall(m.group(2) or ""))
            samples.append((m.group(1), labels, float(m.group(3))))
    return samples


def metric_value(samples, name, **labels):
    """Sum of the samples called `name` whose labels include `labels` (0 when none)."""
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items()))


def make_tmp(prefix):
    return tempfile.mkdtemp(prefix=prefix)


def remove_tmp(path):
    if os.environ.get("SCANSERVE_KEEP_TMP"):
        print("kept %s" % path)
    else:
        shutil.rmtree(path, ignore_errors=True)
