"""Synthetic bottom-up-attention caffemodels and converted detector directories for tests.

    write_synthetic_caffemodel(path, seed)   # full-size NetParameter, every layer/blob of the real network
    make_detector_dir(out_dir=None, seed=0, boxes="36")   # -> converted detector dir (cached)

The caffemodel is written through the same tools/caffe_minimal.proto the converter reads, with the
layer names, types and blob shapes of models/vg/ResNet-101/faster_rcnn_end2end_final/test.prototxt
(convolutions without bias + BatchNorm (mean, var, moving-average factor) + Scale (gamma, beta); RPN
convolutions with bias; InnerProduct cls_score/bbox_pred/fc_attr/attr_score; Embed cls_embedding) and a
few parameter-free layers in between, as a real snapshot has.

Values are random but calibrated so the network behaves like a trained one numerically: each BatchNorm's
statistics are the real per-channel mean/variance of its convolution's output on a synthetic calibration
image (data-dependent init), so every normalised activation is O(1) through all 104 BN layers; the last
BN of each residual branch has a small gamma (0.1-0.3) so the residual stream stays bounded; the RPN
objectness logit differences have a spread of ~3 (many distinct proposals, no saturation) and the deltas
~0.2; cls_score is built so that on calibration RoIs about an eighth exceed class probability 0.2 and the
rest do not (both branches of the 0.2 selection rule); pool5 features are non-negative, O(1..30).

The detector directory (~210 MB) and the caffemodel (~262 MB) are cached under
$SCANSERVE_BUILD_DIR/test-detector/ (or the system temp dir), keyed by a hash of this file, the converter
and the proto, so repeated test runs reuse them. Never under the source tree.
"""

import fcntl
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("SCANSERVE_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
PROTO = os.path.join(SOURCE_DIR, "tools", "caffe_minimal.proto")
CONVERTER = os.path.join(SOURCE_DIR, "tools", "convert_bottom_up_caffemodel.py")
GOLDEN_DIR = os.path.join(SOURCE_DIR, "..", "shared", "data", "bottom-up-golden")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

BN_EPS = 1e-5
NUM_CLASSES = 1601
NUM_ATTRIBUTES = 401
PIXEL_MEANS = np.array([102.9801, 115.9465, 122.7717])


# ----------------------------------------------------------------------------------------------
# Network inventory (written independently of the converter's tables)

def blocks():
    """[(X, m, cin, first)] for res2a..res5c."""
    out, cin = [], 64
    for stage, names, m in (("2", "a b c", 64), ("3", "a b1 b2 b3", 128),
                            ("4", "a " + " ".join("b%d" % i for i in range(1, 23)), 256), ("5", "a b c", 512)):
        for i, n in enumerate(names.split()):
            out.append((stage + n, m, cin, i == 0))
            cin = 4 * m
    return out


def bn_convs():
    """[(conv, bn, scale, weight shape, role)] in network order."""
    out = [("conv1", "bn_conv1", "scale_conv1", (64, 3, 7, 7), "stem")]
    for X, m, cin, first in blocks():
        if first:
            out.append(("res%s_branch1" % X, "bn%s_branch1" % X, "scale%s_branch1" % X, (4 * m, cin, 1, 1),
                        "shortcut"))
        for br, shape, role in (("branch2a", (m, cin, 1, 1), "inner"), ("branch2b", (m, m, 3, 3), "inner"),
                                ("branch2c", (4 * m, m, 1, 1), "last")):
            out.append(("res%s_%s" % (X, br), "bn%s_%s" % (X, br), "scale%s_%s" % (X, br), shape, role))
    return out


# ----------------------------------------------------------------------------------------------
# Proto

_PB = None


def caffe_pb2():
    """tools/caffe_minimal.proto compiled with grpc_tools.protoc (or protoc) into a temp dir."""
    global _PB
    if _PB is None:
        tmp = tempfile.mkdtemp(prefix="caffe_pb_test_")
        try:
            args = ["-I" + os.path.dirname(PROTO), "--python_out=" + tmp, PROTO]
            try:
                import grpc_tools  # noqa: F401
                cmd = [sys.executable, "-m", "grpc_tools.protoc"] + args
            except ImportError:
                cmd = ["protoc"] + args
            subprocess.run(cmd, check=True)
            sys.path.insert(0, tmp)
            try:
                importlib.invalidate_caches()
                _PB = importlib.import_module("caffe_minimal_pb2")
            finally:
                sys.path.remove(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _PB


# ----------------------------------------------------------------------------------------------
# Calibrated random weights

def calibration_image(seed, h=368, w=496):
    """A deterministic BGR uint8 picture with structure at several scales: smooth colour noise,
    gradients, filled rectangles/ellipses (some striped), and pixel noise."""
    import cv2
    rng = np.random.default_rng(1000 + seed)
    im = np.full((h, w, 3), 120.0)
    for sigma, amp in ((40, 50), (12, 30), (3, 15)):
        n = rng.standard_normal((h, w, 3))
        n = cv2.GaussianBlur(n, (0, 0), sigma)
        im += amp * n / (n.std() + 1e-9)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    im += 30 * np.sin(xx / rng.uniform(30, 90))[:, :, None] * rng.uniform(-1, 1, 3)
    im = np.clip(im, 0, 255).astype(np.uint8)
    for k in range(30):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        x1, y1 = int(rng.integers(0, max(1, w - 20))), int(rng.integers(0, max(1, h - 20)))
        x2, y2 = int(x1 + rng.integers(10, max(11, w // 2))), int(y1 + rng.integers(10, max(11, h // 2)))
        if k % 3 == 0:
            cv2.rectangle(im, (x1, y1), (x2, y2), col, -1)
        elif k % 3 == 1:
            cv2.ellipse(im, ((x1 + x2) // 2, (y1 + y2) // 2), ((x2 - x1) // 2 + 1, (y2 - y1) // 2 + 1),
                        float(rng.uniform(0, 180)), 0, 360, col, -1)
        else:
            period = int(rng.integers(3, 12))
            for x in range(x1, min(x2, w), 2 * period):
                cv2.rectangle(im, (x, y1), (x + period - 1, y2), col, -1)
    noise = rng.normal(0, 6, im.shape)
    return np.clip(im + noise, 0, 255).astype(np.uint8)


def make_blobs(seed=0, log=None):
    """Returns {layer name: (Caffe type, [float32 arrays])} for every parameterised layer."""
    import torch
    import torch.nn.functional as F
    from torchvision.ops import roi_pool
    log = log or (lambda s: None)
    t0 = time.time()
    rng = np.random.default_rng(seed)
    torch.set_grad_enabled(False)
    torch.set_num_threads(max(2, torch.get_num_threads()))
    layers = {}
    im = calibration_image(seed).astype(np.float64) - PIXEL_MEANS
    x = torch.from_numpy(im.astype(np.float32).transpose(2, 0, 1)[None].copy())

    units = {u[0]: u for u in bn_convs()}

    def conv_bn(x, conv, stride=1, padding=0, dilation=1, relu=True):
        _, bn, scale, shape, role = units[conv]
        fan_in = shape[1] * shape[2] * shape[3]
        W = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        y = F.conv2d(x, torch.from_numpy(W), None, stride=stride, padding=padding, dilation=dilation)
        yd = y.double()
        mu = yd.mean(dim=(0, 2, 3)).numpy()
        var = yd.var(dim=(0, 2, 3), unbiased=False).numpy() + 1e-3
        C = shape[0]
        if role == "last":
            gamma, beta = rng.uniform(0.1, 0.3, C), rng.uniform(-0.05, 0.05, C)
        elif role == "shortcut":
            gamma, beta = rng.uniform(0.5, 1.0, C), rng.uniform(-0.1, 0.1, C)
        else:
            gamma, beta = rng.uniform(0.8, 1.2, C), rng.uniform(-0.3, 0.3, C)
        if conv.startswith("res5"):  # larger pool5 features, as the real model's (max ~25-35)
            gamma = gamma * (4.0 if role != "inner" else 1.0)
            beta = beta + (0.5 if role == "shortcut" else 0.0)
        factor = float(rng.uniform(0.5, 3.0))
        mean_b = (mu * factor).astype(np.float32)
        var_b = (var * factor).astype(np.float32)
        layers[conv] = ("Convolution", [W])
        layers[bn] = ("BatchNorm", [mean_b, var_b, np.array([factor], np.float32)])
        layers[scale] = ("Scale", [gamma.astype(np.float32), beta.astype(np.float32)])
        # apply exactly what was stored (the model as the converter will fold it)
        m = mean_b.astype(np.float64) / np.float64(np.float32(factor))
        v = var_b.astype(np.float64) / np.float64(np.float32(factor))
        a = gamma.astype(np.float32).astype(np.float64) / np.sqrt(v + BN_EPS)
        b = beta.astype(np.float32).astype(np.float64) - m * a
        y = (yd * torch.from_numpy(a)[None, :, None, None] + torch.from_numpy(b)[None, :, None, None]).float()
        return F.relu(y) if relu else y

    def block(x, X, stride, first, dilation=1):
        sc = conv_bn(x, "res%s_branch1" % X, stride=stride, relu=False) if first else x
        y = conv_bn(x, "res%s_branch2a" % X, stride=stride)
        y = conv_bn(y, "res%s_branch2b" % X, padding=dilation, dilation=dilation)
        y = conv_bn(y, "res%s_branch2c" % X, relu=False)
        return F.relu(y + sc)

    x = conv_bn(x, "conv1", stride=2, padding=3)
    x = F.max_pool2d(x, 3, 2, 0, ceil_mode=True)
    for X, m, cin, first in blocks():
        if X.startswith("5"):
            break
        x = block(x, X, 2 if first and X[0] in "34" else 1, first)
    res4 = x
    log("  calibrated trunk: res4 %s, max %.2f (%.1f s)" % (tuple(res4.shape), float(res4.max()), time.time() - t0))

    # RPN
    Wr = (rng.standard_normal((512, 1024, 3, 3)) * np.sqrt(2.0 / (1024 * 9))).astype(np.float32)
    br = rng.uniform(-0.1, 0.1, 512).astype(np.float32)
    hid = F.relu(F.conv2d(res4, torch.from_numpy(Wr), torch.from_numpy(br), padding=1))
    Wc = rng.standard_normal((24, 512, 1, 1)).astype(np.float32)
    c = F.conv2d(hid, torch.from_numpy(Wc))[0].double()
    d = (c[12:] - c[:12])  # fg - bg logit per anchor
    Wc *= np.float32(2.0 / float((d - d.mean(dim=(1, 2), keepdim=True)).std()))
    # biases centre each anchor's fg-bg difference on the calibration image (no saturation)
    dmean = (d.mean(dim=(1, 2)).numpy() * 2.0 / float((d - d.mean(dim=(1, 2), keepdim=True)).std()))
    bc = rng.normal(0, 0.3, 24).astype(np.float32)
    bc[12:] = (bc[:12] - dmean + rng.normal(0, 0.5, 12)).astype(np.float32)
    Wb = rng.standard_normal((48, 512, 1, 1)).astype(np.float32)
    o = F.conv2d(hid, torch.from_numpy(Wb))
    Wb *= np.float32(0.2 / float(o.std()))
    bb = rng.normal(0, 0.05, 48).astype(np.float32)
    layers["rpn_conv/3x3"] = ("Convolution", [Wr, br])
    layers["rpn_cls_score"] = ("Convolution", [Wc, bc])
    layers["rpn_bbox_pred"] = ("Convolution", [Wb, bb])

    # res5 on random RoIs of the calibration image (BN statistics over RoIs x 14 x 14)
    Hf, Wf = res4.shape[2:]
    n = 24
    x1 = rng.uniform(0, Wf * 16 * 0.7, n)
    y1 = rng.uniform(0, Hf * 16 * 0.7, n)
    rois = np.stack([np.zeros(n), x1, y1, np.minimum(x1 + rng.uniform(32, Wf * 8, n), Wf * 16 - 1),
                     np.minimum(y1 + rng.uniform(32, Hf * 8, n), Hf * 16 - 1)], 1).astype(np.float32)
    x = roi_pool(res4, torch.from_numpy(rois), (14, 14), 1.0 / 16)
    for X in ("5a", "5b", "5c"):
        x = block(x, X, 1, X == "5a", dilation=2)
    pool5 = x.mean(dim=(2, 3)).double().numpy()  # n x 2048
    log("  calibrated res5: pool5 max %.2f mean %.3f (%.1f s)" % (pool5.max(), pool5.mean(), time.time() - t0))

    # cls_score: logits = A (x - mu) / sd + b; ~1/25 of the classes are "strong" (large weights)
    mu, sd = pool5.mean(0), pool5.std(0)
    sd = np.maximum(sd, np.median(sd))  # no huge weights on features that barely vary here
    K = NUM_CLASSES
    scale = np.full(K, 1.0)
    strong = rng.choice(np.arange(1, K), 64, replace=False)
    scale[strong] = 5.0
    A = rng.standard_normal((K, 2048)) * (scale[:, None] / np.sqrt(2048))
    Wcls = A / sd[None, :]
    bcls = -(Wcls @ mu) + rng.normal(0, 0.3, K)
    logits = pool5 @ Wcls.T + bcls

    def frac_over(shift):
        z = logits.copy()
        z[:, strong] += shift
        z -= z.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return float((p[:, 1:].max(1) > 0.2).mean())

    lo, hi = -30.0, 30.0  # bisection on the strong classes' offset: ~1/8 of calibration RoIs over 0.2
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if frac_over(mid) > 0.12:
            hi = mid
        else:
            lo = mid
    bcls[strong] += 0.5 * (lo + hi)
    log("  cls_score: strong-class offset %.2f, fraction of calibration RoIs over 0.2: %.2f"
        % (0.5 * (lo + hi), frac_over(0.5 * (lo + hi))))
    layers["cls_score"] = ("InnerProduct", [Wcls.astype(np.float32), bcls.astype(np.float32)])
    layers["bbox_pred"] = ("InnerProduct", [(rng.standard_normal((4 * K, 2048), dtype=np.float32)
                                             * np.float32(0.001)), np.zeros(4 * K, np.float32)])
    emb = rng.standard_normal((K, 256), dtype=np.float32)
    layers["cls_embedding"] = ("Embed", [emb])
    Wfa = (rng.standard_normal((512, 2304)) * np.sqrt(2.0 / 2304)).astype(np.float32)
    bfa = rng.uniform(-0.1, 0.3, 512).astype(np.float32)
    predicted = logits.argmax(1)
    cat = np.concatenate([pool5, emb[predicted].astype(np.float64)], 1)
    fa = np.maximum(cat @ Wfa.T.astype(np.float64) + bfa, 0)
    Wat = rng.standard_normal((NUM_ATTRIBUTES, 512))
    Wat *= 2.5 / max(float((fa @ Wat.T).std()), 1e-6)
    layers["fc_attr"] = ("InnerProduct", [Wfa, bfa])
    layers["attr_score"] = ("InnerProduct", [Wat.astype(np.float32),
                                             rng.normal(0, 0.5, NUM_ATTRIBUTES).astype(np.float32)])
    log("  weights done (%.1f s)" % (time.time() - t0))
    return layers


def layer_order():
    """Network order of the parameterised layers, with parameter-free layers interleaved."""
    order = [("data", "Input"), ("im_info", "Input")]
    for conv, bn, scale, _, role in bn_convs():
        order += [(conv, None), (bn, None), (scale, None)]
        if conv == "conv1":
            order += [("conv1_relu", "ReLU"), ("pool1", "Pooling")]
        if role == "last":
            X = conv[3:conv.index("_")]
            order += [("res" + X, "Eltwise"), ("res%s_relu" % X, "ReLU")]
        if conv == "res4b22_branch2c":
            order += [("rpn_conv/3x3", None), ("rpn_relu/3x3", "ReLU"), ("rpn_cls_score", None),
                      ("rpn_bbox_pred", None), ("rpn_cls_score_reshape", "Reshape"),
                      ("rpn_cls_prob", "Softmax"), ("proposal", "Python"), ("roi_pool5", "ROIPooling")]
    order += [("pool5", "Pooling"), ("pool5_flat", "Flatten"), ("cls_score", None), ("bbox_pred", None),
              ("cls_prob", "Softmax"), ("predicted_cls", "ArgMax"), ("cls_embedding", None),
              ("concat_pool5", "Concat"), ("fc_attr", None), ("relu_attr", "ReLU"), ("attr_score", None),
              ("attr_prob", "Softmax")]
    return order


def build_net(layers, pb=None, order=None):
    """NetParameter with `layers` ({name: (type, [arrays])}) in network order."""
    pb = pb or caffe_pb2()
    net = pb.NetParameter()
    net.name = "ResNet-101"
    for name, ltype in (order or layer_order()):
        if ltype is None and name not in layers:
            continue
        l = net.layer.add()
        l.name = name
        if ltype is not None:
            l.type = ltype
            continue
        l.type, arrays = layers[name]
        for a in arrays:
            b = l.blobs.add()
            b.shape.dim.extend(int(d) for d in a.shape)
            b.data.extend(np.ascontiguousarray(a, dtype=np.float32).reshape(-1))
    return net


def write_caffemodel(path, layers, order=None):
    net = build_net(layers, order=order)
    data = net.SerializeToString()
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)
    return len(data)


def write_synthetic_caffemodel(path, seed=0, log=None):
    """Writes a full-size synthetic .caffemodel; returns {layer: (type, [arrays])} (the raw Caffe blobs)."""
    layers = make_blobs(seed, log=log)
    write_caffemodel(path, layers)
    return layers


def fold_reference(layers):
    """Expected converter output computed directly (float64 folding): {tensor name: float32 array}."""
    out = {}
    for conv, bn, scale, _, _ in bn_convs():
        W = layers[conv][1][0].astype(np.float64)
        mean, var, f = (a.astype(np.float64) for a in layers[bn][1])
        gamma, beta = (a.astype(np.float64) for a in layers[scale][1])
        f = f.reshape(-1)[0]
        s = 0.0 if f == 0 else 1.0 / f
        a = gamma / np.sqrt(var * s + BN_EPS)
        name = conv.replace("/", "_")
        out[name + ".weight"] = (W * a[:, None, None, None]).astype(np.float32)
        out[name + ".bias"] = (beta - mean * s * a).astype(np.float32)
    for name in ("rpn_conv/3x3", "rpn_cls_score", "rpn_bbox_pred", "cls_score", "cls_embedding", "fc_attr",
                 "attr_score"):
        arrays = layers[name][1]
        out[name.replace("/", "_") + ".weight"] = arrays[0]
        if len(arrays) > 1:
            out[name.replace("/", "_") + ".bias"] = arrays[1]
    return out


# ----------------------------------------------------------------------------------------------
# Vocabularies and the cached detector directory

def write_synthetic_vocab(vocab_dir, n_objects=1600, n_attributes=400):
    os.makedirs(vocab_dir, exist_ok=True)
    with open(os.path.join(vocab_dir, "objects_vocab.txt"), "w") as f:
        f.write("\n".join("object%d" % i for i in range(n_objects)) + "\n")
    with open(os.path.join(vocab_dir, "attributes_vocab.txt"), "w") as f:
        f.write("\n".join("attribute%d" % i for i in range(n_attributes)) + "\n")
    return vocab_dir


def golden_vocab_dir():
    d = os.path.join(GOLDEN_DIR, "genome-vocab")
    ok = all(os.path.isfile(os.path.join(d, f)) for f in ("objects_vocab.txt", "attributes_vocab.txt"))
    return os.path.normpath(d) if ok else None


def _read(path):
    with open(path) as f:
        return f.read()


def cache_root():
    build = os.environ.get("SCANSERVE_BUILD_DIR")
    root = os.path.join(os.path.abspath(build), "test-detector") if build else \
        os.path.join(tempfile.gettempdir(), "scanserve-test-detector-%d" % os.getuid())
    os.makedirs(root, exist_ok=True)
    return root


def _code_key(with_converter=True):
    h = hashlib.sha256()
    for p in (os.path.abspath(__file__), PROTO) + ((CONVERTER,) if with_converter else ()):
        with open(p, "rb") as f:
            h.update(f.read())
    import torch
    h.update(torch.__version__.encode())  # calibration runs through torch
    return h.hexdigest()[:16]


def synthetic_caffemodel(seed=0, log=None):
    """Path of the cached synthetic caffemodel for `seed` (generated on first use)."""
    root = cache_root()
    path = os.path.join(root, "seed%d.caffemodel" % seed)
    key_path = path + ".key"
    key = _code_key(with_converter=False)
    with open(os.path.join(root, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.path.isfile(path) and os.path.isfile(key_path) and _read(key_path) == key:
                return path
            t = time.time()
            write_synthetic_caffemodel(path, seed, log=log)
            with open(key_path, "w") as f:
                f.write(key)
            (log or (lambda s: None))("  wrote %s (%.1f s)" % (path, time.time() - t))
            return path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def make_detector_dir(out_dir=None, seed=0, boxes="36", log=None):
    """A converted detector directory of the synthetic model `seed` with box policy `boxes` ("36" or
    "10-100"); vocab files from the golden data if present, else synthetic ("object0".."object1599").

    With out_dir None (recommended) returns the cache directory
    $SCANSERVE_BUILD_DIR/test-detector/seed<N>-<boxes>/, reused while this file, the converter and the
    proto are unchanged. With out_dir given, the cached directory is copied there (~210 MB)."""
    root = cache_root()
    vocab = golden_vocab_dir()
    name = "seed%d-%s" % (seed, boxes)
    cached = os.path.join(root, name)
    key = json.dumps({"code": _code_key(), "vocab": vocab or "synthetic"})
    caffemodel = synthetic_caffemodel(seed, log=log)
    with open(os.path.join(root, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            key_path = cached + ".key"
            fresh = os.path.isfile(os.path.join(cached, "weights.safetensors")) and \
                os.path.isfile(key_path) and _read(key_path) == key
            if not fresh:
                if vocab is None:
                    vocab = write_synthetic_vocab(os.path.join(root, "synthetic-vocab"))
                t = time.time()
                r = subprocess.run([PYTHON, CONVERTER, caffemodel, "--vocab-dir", vocab, "--out", cached,
                                    "--boxes", boxes, "--force"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, universal_newlines=True)
                if r.returncode != 0:
                    raise RuntimeError("converter failed (%d): %s" % (r.returncode, r.stderr.strip()))
                with open(key_path, "w") as f:
                    f.write(key)
                (log or (lambda s: None))("  converted -> %s (%.1f s)" % (cached, time.time() - t))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if out_dir is None:
        return cached
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    shutil.copytree(cached, out_dir)
    return out_dir


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Build (or reuse) the cached synthetic detector directory.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--boxes", default="36", choices=("36", "10-100"))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    print(make_detector_dir(a.out, a.seed, a.boxes, log=print))
