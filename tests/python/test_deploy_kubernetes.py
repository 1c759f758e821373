"""deploy/kubernetes.yaml against the real `scanserve` binary and the Dockerfile's image.

    SCANSERVE_BUILD_DIR=build /usr/bin/python3 tests/python/test_deploy_kubernetes.py

There is no cluster here, so the test does what the kubelet would with this manifest: it runs the
image's entrypoint with the container's args, every volume mount a directory under a scratch root
(the ConfigMap's file, the token secret in the kubelet's own layout of symlinks), and then:
- the startup probe's request turns 200 once the server serves, readiness too;
- every path the config names lies on a mounted volume, and the data directory on the claim;
- calls need the secret's token, and a token rotated the way the kubelet updates a secret
  (a new timestamped directory, the ..data symlink swapped) is taken without a restart;
- after SIGTERM the readiness probe fails within its period while calls are still answered,
  and the process exits 0 within terminationGracePeriodSeconds;
- every log line is JSON (log-format = json).
Static checks: the Service's and Prometheus's ports are the container's, and those are the
entrypoint's; secret and ConfigMap mounts are whole directories (the kubelet never updates a
subPath); the pod runs as the image's user; max-feature-bytes stays below the memory limit.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scanserve_harness as h  # noqa: E402

h.skip_if_server_disabled()
h.require_grpc()
import grpc  # noqa: E402

try:
    import yaml  # python3-yaml
except ImportError:
    print("skipped: needs python3-yaml under %s" % sys.executable)
    sys.exit(77)

MANIFEST = os.path.join(h.SOURCE_DIR, "deploy", "kubernetes.yaml")
DOCKERFILE = os.path.join(h.SOURCE_DIR, "Dockerfile")


def load_manifest():
    """{kind: object} of the manifest's documents (one of each kind)."""
    with open(MANIFEST) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        assert d["kind"] not in by_kind, "two %s documents" % d["kind"]
        by_kind[d["kind"]] = d
    return by_kind


def dockerfile_entrypoint_and_uid():
    with open(DOCKERFILE) as f:
        text = f.read()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", text).group(1))
    return entrypoint, uid


def parse_config(text):
    """{key: value} of a scanserve config file (key = value; # comments)."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, value = (part.strip() for part in line.split("=", 1))
            out[key] = value
    return out


def flag_value(argv, name):
    for i, arg in enumerate(argv):
        if arg == "--" + name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def parse_bytes(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    m = re.fullmatch(r"(\d+)([KMG]i?)?B?", text)
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


def kubelet_write(directory, files):
    """Writes `files` ({name: text}) the way the kubelet updates a secret or ConfigMap volume: a
    new timestamped directory, the ..data symlink swapped to it in one rename, the file names
    symlinks through ..data, the previous directory removed."""
    os.makedirs(directory, exist_ok=True)
    data_link = os.path.join(directory, "..data")
    old = os.readlink(data_link) if os.path.islink(data_link) else None
    stamp = "..%s" % time.strftime("%Y_%m_%d_%H_%M_%S.") + str(time.time_ns())
    os.makedirs(os.path.join(directory, stamp))
    for name, text in files.items():
        with open(os.path.join(directory, stamp, name), "w") as f:
            f.write(text)
    os.symlink(stamp, os.path.join(directory, "..data_tmp"))
    os.rename(os.path.join(directory, "..data_tmp"), data_link)
    for name in files:
        link = os.path.join(directory, name)
        if not os.path.islink(link):
            os.symlink(os.path.join("..data", name), link)
    if old is not None:
        shutil.rmtree(os.path.join(directory, old))


def http_status(url):
    try:
        return urllib.request.urlopen(url, timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None  # not listening (yet, or any more): a failed probe too


class KubernetesManifestTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.objects = load_manifest()
        cls.entrypoint, cls.image_uid = dockerfile_entrypoint_and_uid()
        cls.statefulset = cls.objects["StatefulSet"]
        cls.pod = cls.statefulset["spec"]["template"]["spec"]
        (cls.container,) = cls.pod["containers"]
        cls.config_text = cls.objects["ConfigMap"]["data"]["scanserve.conf"]
        cls.config = parse_config(cls.config_text)
        cls.argv = cls.entrypoint + cls.container.get("args", [])
        cls.mounts = {m["mountPath"]: m for m in cls.container["volumeMounts"]}
        cls.volumes = {v["name"]: v for v in cls.pod["volumes"]}
        cls.claims = {c["metadata"]["name"] for c in cls.statefulset["spec"].get("volumeClaimTemplates", [])}

    def container_port(self, name):
        (port,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == name]
        return port

    def volume_of(self, path):
        """The mount a path lies on (the longest mountPath that is a prefix), or None."""
        best = None
        for mount_path in self.mounts:
            if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
                if best is None or len(mount_path) > len(best):
                    best = mount_path
        return best

    def test_ports_are_the_entrypoints_everywhere(self):
        grpc_port, metrics_port = self.container_port("grpc"), self.container_port("metrics")
        self.assertEqual(flag_value(self.argv, "listen"), "0.0.0.0:%d" % grpc_port)
        self.assertEqual(flag_value(self.argv, "metrics-listen"), "0.0.0.0:%d" % metrics_port)
        for port in self.objects["Service"]["spec"]["ports"]:
            self.assertIn(port["targetPort"], ("grpc", "metrics"), port)
        self.assertEqual(self.objects["Service"]["spec"]["selector"],
                         self.statefulset["spec"]["template"]["metadata"]["labels"])
        annotations = self.statefulset["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual(int(annotations["prometheus.io/port"]), metrics_port)
        self.assertEqual(annotations["prometheus.io/path"], "/metrics")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = self.container[probe]["httpGet"]
            self.assertEqual((get["path"], get["port"]), ("/healthz", "metrics"), probe)
        self.assertNotIn("listen", self.config, "the entrypoint sets it; a command-line flag wins")

    def test_volumes_and_user(self):
        for mount in self.container["volumeMounts"]:
            self.assertTrue(mount["name"] in self.volumes or mount["name"] in self.claims, mount)
            volume = self.volumes.get(mount["name"], {})
            if "secret" in volume or "configMap" in volume:
                self.assertNotIn("subPath", mount, "the kubelet never updates a subPath mount: %s" % mount)
                self.assertTrue(mount.get("readOnly"), mount)
        data_dir = flag_value(self.argv, "data-dir")
        self.assertIn(self.mounts[self.volume_of(data_dir)]["name"], self.claims, "the store on the claim")
        snapshot_dir = self.config.get("snapshot-dir")
        if snapshot_dir:
            self.assertEqual(self.volume_of(snapshot_dir), self.volume_of(data_dir),
                             "snapshots are hard links: the same volume as the store")
        security = self.pod["securityContext"]
        self.assertEqual(security["runAsUser"], self.image_uid)
        self.assertEqual(security["fsGroup"], self.image_uid)
        self.assertIn("/tmp", self.mounts, "a writable /tmp under readOnlyRootFilesystem")

    def test_timings_and_memory(self):
        delay = float(self.config.get("shutdown-delay-s", 0))
        grace = float(self.config.get("shutdown-grace-s", 10))
        self.assertGreater(delay, 0, "without a delay a rolling update refuses calls")
        self.assertGreaterEqual(self.pod["terminationGracePeriodSeconds"], delay + grace + 5)
        readiness = self.container["readinessProbe"]
        self.assertLessEqual(readiness["periodSeconds"] * readiness["failureThreshold"], delay / 2,
                             "readiness fails well within the delay")
        limit = parse_bytes(self.container["resources"]["limits"]["memory"])
        features, quota = parse_bytes(self.config["max-feature-bytes"]), parse_bytes(self.config["grpc-memory-quota"])
        self.assertGreater(quota, 0, "bounded: a burst of uploads must not take the pod's memory")
        self.assertLessEqual(features + quota, limit - (1 << 30),
                             "room beside the features and the requests being received, or the pod is "
                             "killed before ingest is refused")

    def test_the_pod_as_the_kubelet_runs_it(self):
        h.require_executable(h.SERVER, "the scanserve server")
        root = h.make_tmp("scan_kubernetes_")
        server, log = None, None
        try:
            def on_volume(path):
                mount = self.volume_of(path)
                self.assertIsNotNone(mount, "%s is on no mounted volume" % path)
                return root + path

            # The volumes: the ConfigMap and the token secret in the kubelet's layout, the model on
            # its claim, empty data and /tmp.
            grpc_port, metrics_port = h.free_port(), h.free_port()
            config_path = flag_value(self.argv, "config")
            config_text = self.config_text
            for key in ("model", "auth-token-file", "snapshot-dir"):
                if key in self.config:
                    config_text = config_text.replace(self.config[key], on_volume(self.config[key]))
            kubelet_write(os.path.dirname(on_volume(config_path)), {os.path.basename(config_path): config_text})
            token_file = self.config["auth-token-file"]
            kubelet_write(os.path.dirname(on_volume(token_file)), {os.path.basename(token_file): "first-token\n"})
            model_dir = h.make_model(root, seed=8)
            os.makedirs(os.path.dirname(on_volume(self.config["model"])), exist_ok=True)
            os.symlink(model_dir, on_volume(self.config["model"]))
            for path in self.mounts:
                os.makedirs(root + path, exist_ok=True)

            argv = [h.SERVER] + [
                "127.0.0.1:%d" % grpc_port if arg == flag_value(self.argv, "listen") else
                "127.0.0.1:%d" % metrics_port if arg == flag_value(self.argv, "metrics-listen") else
                on_volume(arg) if arg.startswith("/") else arg for arg in self.argv[1:]]
            # The config's 60 s would make this test wait a minute for the rotated token.
            argv += ["--credential-reload-s", "1", "--threads", "2"]
            log_path = os.path.join(root, "scanserve.log")
            log = open(log_path, "wb")
            server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            healthz = "http://127.0.0.1:%d/healthz" % metrics_port

            def log_text():
                with open(log_path, "rb") as f:
                    return f.read().decode("utf-8", "replace")

            # startupProbe: every periodSeconds until 200, failureThreshold times at most.
            startup = self.container["startupProbe"]
            deadline = time.time() + startup["periodSeconds"] * startup["failureThreshold"]
            while http_status(healthz) != 200:
                self.assertIsNone(server.poll(), log_text())
                self.assertLess(time.time(), deadline, log_text())
                time.sleep(0.2)
            self.assertEqual(http_status(healthz), 200, "readiness")

            channel = grpc.insecure_channel("127.0.0.1:%d" % grpc_port, options=h.CHANNEL_OPTIONS)
            pb, pb_grpc = h.generate_stubs(os.path.join(root, "stubs"))
            stub = pb_grpc.ScanServiceStub(channel)

            def stats_code(token):
                try:
                    stub.GetStats(pb.GetStatsRequest(), timeout=10,
                                  metadata=[("authorization", "Bearer " + token)] if token else None)
                    return grpc.StatusCode.OK
                except grpc.RpcError as e:
                    return e.code()

            self.assertEqual(stats_code("first-token"), grpc.StatusCode.OK, log_text())
            self.assertEqual(stats_code(None), grpc.StatusCode.UNAUTHENTICATED)

            # The secret updated as the kubelet does it.
            kubelet_write(os.path.dirname(on_volume(token_file)), {os.path.basename(token_file): "second-token\n"})
            deadline = time.time() + 15
            while stats_code("second-token") != grpc.StatusCode.OK and time.time() < deadline:
                time.sleep(0.2)
            self.assertEqual(stats_code("second-token"), grpc.StatusCode.OK, log_text())
            self.assertEqual(stats_code("first-token"), grpc.StatusCode.PERMISSION_DENIED, "the old token is gone")

            # Termination: readiness fails within its period, calls are still answered meanwhile,
            # and the process is gone within terminationGracePeriodSeconds.
            server.send_signal(signal.SIGTERM)
            sigterm = time.time()
            readiness = self.container["readinessProbe"]
            while http_status(healthz) == 200:
                self.assertLess(time.time() - sigterm, readiness["periodSeconds"], "readiness still 200")
                time.sleep(0.1)
            delay = float(self.config["shutdown-delay-s"])
            while time.time() - sigterm < min(delay - 1, 4):
                self.assertEqual(stats_code("second-token"), grpc.StatusCode.OK, "a call during the delay")
                time.sleep(0.2)
            channel.close()
            code = server.wait(timeout=self.pod["terminationGracePeriodSeconds"] - (time.time() - sigterm))
            self.assertEqual(code, 0, log_text())
            server = None
            lines = log_text().splitlines()
            self.assertTrue(lines)
            for line in lines:
                record = json.loads(line)  # log-format = json: every line
                self.assertIn("msg", record)
        finally:
            if server is not None:
                h.stop_process(server, timeout=10)
            if log is not None:
                log.close()
            h.remove_tmp(root)


if __name__ == "__main__":
    unittest.main()
