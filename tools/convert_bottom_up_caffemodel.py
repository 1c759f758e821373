#!/usr/bin/python3
"""Convert a bottom-up-attention Caffe model (ResNet-101 Faster R-CNN) into a scanserve detector directory.

    /usr/bin/python3 tools/convert_bottom_up_caffemodel.py CAFFEMODEL --vocab-dir GENOME_VOCAB \\
        --out DETECTOR_DIR [--boxes 36|10-100] [--force]

CAFFEMODEL is one of the released peteanderson80/bottom-up-attention weight files:
  resnet101_faster_rcnn_final_iter_320000.caffemodel  -> use --boxes 36 (the features SCAN was trained on)
  resnet101_faster_rcnn_final.caffemodel               -> use --boxes 10-100
GENOME_VOCAB is a directory holding objects_vocab.txt (1600 lines) and attributes_vocab.txt (400 lines)
(data/genome/1600-400-20/ in that repository).

DETECTOR_DIR (docs/detector-format.md) gets detector.json, weights.safetensors (float32; every BatchNorm +
Scale pair folded into its convolution in float64) and the two vocabulary files, copied verbatim. The
directory is written under a temporary name and renamed into place, so a failed run leaves nothing.

The caffemodel is parsed with tools/caffe_minimal.proto (the Caffe messages the converter reads, same
field numbers as caffe.proto), compiled at run time with grpc_tools.protoc (or the protoc binary).
Every blob's shape is checked against the network definition (test.prototxt of the original) and the
total parameter counts are checked; bbox_pred is checked but not written.

Every problem with the input is one line on stderr ("convert_bottom_up_caffemodel: error: ...") and exit
code 2. Needs numpy and google.protobuf (Debian: run with /usr/bin/python3).
"""

import argparse
import collections
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_dir_io import ConvertError, run_converter, write_dir_atomically, write_safetensors  # noqa: E402

PROG = "convert_bottom_up_caffemodel"
HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "caffe_minimal.proto")

BN_EPS = 1e-5  # Caffe BatchNormParameter default; the prototxt does not set it
NUM_CLASSES = 1601
NUM_ATTRIBUTES = 401
VOCABS = (("objects_vocab.txt", NUM_CLASSES - 1), ("attributes_vocab.txt", NUM_ATTRIBUTES - 1))
BOX_POLICIES = {"36": (36, 36), "10-100": (10, 100)}
CONF_THRESHOLD = 0.2

# Parameter totals of the network (spec section 7.2 step 4).
TOTAL_RAW = 65559622          # every Caffe blob value, incl. the 104 one-element BN factors
TOTAL_FOLDED = 65401502       # after folding each BN+Scale into one bias vector
TOTAL_WRITTEN = 52279706      # folded, without bbox_pred

# Caffe V1LayerParameter.LayerType values of the layer types used here that existed in V1.
V1_TYPES = {4: "Convolution", 14: "InnerProduct"}


# ----------------------------------------------------------------------------------------------
# The network's parameterised layers (models/vg/ResNet-101/faster_rcnn_end2end_final/test.prototxt)

def res_blocks():
    """[(block name X, bottleneck width m, input channels, has projection shortcut)] for res2a..res5c."""
    stages = [("2", ["a", "b", "c"], 64), ("3", ["a", "b1", "b2", "b3"], 128),
              ("4", ["a"] + ["b%d" % i for i in range(1, 23)], 256), ("5", ["a", "b", "c"], 512)]
    out, cin = [], 64
    for stage, suffixes, m in stages:
        for i, suf in enumerate(suffixes):
            out.append((stage + suf, m, cin, i == 0))
            cin = 4 * m
    return out


def conv_units():
    """[(conv layer, bn layer, scale layer, weight shape)] for every BN-followed convolution."""
    units = [("conv1", "bn_conv1", "scale_conv1", (64, 3, 7, 7))]
    for x, m, cin, proj in res_blocks():
        branches = [("branch2a", (m, cin, 1, 1)), ("branch2b", (m, m, 3, 3)), ("branch2c", (4 * m, m, 1, 1))]
        if proj:
            branches.append(("branch1", (4 * m, cin, 1, 1)))
        for br, shape in branches:
            units.append(("res%s_%s" % (x, br), "bn%s_%s" % (x, br), "scale%s_%s" % (x, br), shape))
    return units


# name -> (Caffe type, [blob shapes]) for the layers that are copied without folding
PLAIN_LAYERS = collections.OrderedDict([
    ("rpn_conv/3x3", ("Convolution", [(512, 1024, 3, 3), (512,)])),
    ("rpn_cls_score", ("Convolution", [(24, 512, 1, 1), (24,)])),
    ("rpn_bbox_pred", ("Convolution", [(48, 512, 1, 1), (48,)])),
    ("cls_score", ("InnerProduct", [(NUM_CLASSES, 2048), (NUM_CLASSES,)])),
    ("bbox_pred", ("InnerProduct", [(4 * NUM_CLASSES, 2048), (4 * NUM_CLASSES,)])),
    ("cls_embedding", ("Embed", [(NUM_CLASSES, 256)])),
    ("fc_attr", ("InnerProduct", [(512, 2304), (512,)])),
    ("attr_score", ("InnerProduct", [(NUM_ATTRIBUTES, 512), (NUM_ATTRIBUTES,)])),
])
NOT_WRITTEN = ("bbox_pred",)


def expected_layers():
    """OrderedDict layer name -> (Caffe type, [blob shapes]) of every layer that has parameters."""
    layers = collections.OrderedDict()
    for conv, bn, scale, shape in conv_units():
        layers[conv] = ("Convolution", [shape])
        layers[bn] = ("BatchNorm", [(shape[0],), (shape[0],), (1,)])
        layers[scale] = ("Scale", [(shape[0],), (shape[0],)])
    layers.update(PLAIN_LAYERS)
    return layers


def tensor_name(layer):
    return layer.replace("/", "_")


# ----------------------------------------------------------------------------------------------
# Parsing

def compile_proto(tmpdir):
    """Compiles caffe_minimal.proto into tmpdir and imports it; returns the module."""
    if not os.path.isfile(PROTO):
        raise ConvertError("missing %s (it ships next to this script)" % PROTO)
    args = ["-I" + HERE, "--python_out=" + tmpdir, PROTO]
    err = None
    try:
        from grpc_tools import protoc  # noqa: F401
        cmd = [sys.executable, "-m", "grpc_tools.protoc"] + args
    except ImportError:
        cmd = [shutil.which("protoc") or "protoc"] + args
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        if r.returncode != 0:
            err = (r.stderr or r.stdout).strip().replace("\n", "; ")
    except OSError as e:
        err = str(e)
    if err is not None:
        raise ConvertError("cannot compile %s (needs grpc_tools or protoc): %s" % (PROTO, err))
    sys.path.insert(0, tmpdir)
    try:
        importlib.invalidate_caches()
        return importlib.import_module("caffe_minimal_pb2")
    except Exception as e:  # protobuf runtime missing or too old for the generated code
        raise ConvertError("cannot import the compiled Caffe proto: %s" % e)
    finally:
        sys.path.remove(tmpdir)


def parse_caffemodel(path, pb):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConvertError("cannot read caffemodel %s: %s" % (path, e.strerror or e))
    from google.protobuf.message import DecodeError
    net = pb.NetParameter()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ConvertError("%s is not a Caffe .caffemodel or is truncated (protobuf parse failed: %s)"
                           % (path, str(e).splitlines()[0] if str(e) else type(e).__name__))
    return net, data


def blob_shape(blob):
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    legacy = (blob.num, blob.channels, blob.height, blob.width)
    if any(legacy):
        return tuple(int(d) for d in legacy)
    return ()


def _squeeze_leading(shape):
    """Legacy 4-D blobs pad shapes with leading 1s (an InnerProduct weight as 1x1xOxI)."""
    shape = tuple(shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def _fmt(shape):
    return "x".join(str(d) for d in shape) if shape else "scalar"


def blob_array(layer, i, blob, expected_shape):
    import numpy as np
    shape = blob_shape(blob)
    if _squeeze_leading(shape) != _squeeze_leading(expected_shape):
        raise ConvertError("layer %s blob %d has shape %s, expected %s"
                           % (layer, i, _fmt(shape), _fmt(expected_shape)))
    count = int(np.prod(expected_shape))
    if len(blob.data):
        n = len(blob.data)
        if n == count:
            arr = np.fromiter(blob.data, dtype=np.float32, count=n)
    elif len(blob.double_data):
        n = len(blob.double_data)
        if n == count:
            arr = np.fromiter(blob.double_data, dtype=np.float64, count=n)
    else:
        n = 0
    if n != count:
        raise ConvertError("layer %s blob %d has %d values, its shape %s needs %d"
                           % (layer, i, n, _fmt(shape), count))
    arr = arr.reshape(expected_shape)
    if not np.all(np.isfinite(arr)):
        raise ConvertError("layer %s blob %d contains NaN or infinite values" % (layer, i))
    return arr


def collect_layers(net):
    """name -> blobs for every layer with parameters; checks names, types, blob counts and shapes."""
    expected = expected_layers()
    found = collections.OrderedDict()
    if len(net.layer):
        entries = [(l.name, l.type, l.blobs) for l in net.layer]
    else:
        entries = [(l.name, V1_TYPES.get(l.type), l.blobs) for l in net.layers]
    if not entries:
        raise ConvertError("the file parses but holds no layers: not a Caffe .caffemodel")
    for name, ltype, blobs in entries:
        if not len(blobs):
            continue
        if name not in expected:
            raise ConvertError("unexpected layer with parameters: %s (type %s); this is not the "
                               "bottom-up-attention ResNet-101 network" % (name, ltype or "?"))
        if name in found:
            raise ConvertError("layer %s appears twice with parameters" % name)
        etype, eshapes = expected[name]
        if ltype is not None and ltype != etype:
            raise ConvertError("layer %s has type %s, expected %s" % (name, ltype, etype))
        if len(blobs) != len(eshapes):
            raise ConvertError("layer %s has %d blobs, expected %d (%s)"
                               % (name, len(blobs), len(eshapes), ", ".join(_fmt(s) for s in eshapes)))
        for i, (b, es) in enumerate(zip(blobs, eshapes)):
            shape = blob_shape(b)
            if _squeeze_leading(shape) != _squeeze_leading(es):
                raise ConvertError("layer %s blob %d has shape %s, expected %s" % (name, i, _fmt(shape), _fmt(es)))
        found[name] = blobs
    missing = [n for n in expected if n not in found]
    if missing:
        more = " (and %d more)" % (len(missing) - 1) if len(missing) > 1 else ""
        hint = " (truncated file, or not a bottom-up-attention model?)" if len(missing) > len(expected) // 4 else ""
        raise ConvertError("missing layer %s%s in the caffemodel%s" % (missing[0], more, hint))
    return found


def fold_bn(conv_w, mean, var, factor, gamma, beta, eps=BN_EPS):
    """Folds Caffe BatchNorm (mean/var divided by the moving-average factor) + Scale into a conv, in
    float64. Returns (weight, bias) as float32."""
    import numpy as np
    f = float(np.float64(factor.reshape(-1)[0]))
    inv = 0.0 if f == 0.0 else 1.0 / f  # Caffe: scale_factor = f == 0 ? 0 : 1 / f
    mean = mean.astype(np.float64) * inv
    var = var.astype(np.float64) * inv
    a = gamma.astype(np.float64) / np.sqrt(var + eps)
    w = conv_w.astype(np.float64) * a[:, None, None, None]
    b = beta.astype(np.float64) - mean * a
    return w.astype(np.float32), b.astype(np.float32)


def convert_tensors(found):
    """Returns (OrderedDict tensor name -> float32 array, raw value count, folded value count)."""
    import numpy as np
    expected = expected_layers()
    arrays = {}
    raw = 0
    for name, blobs in found.items():
        shapes = expected[name][1]
        arrays[name] = [blob_array(name, i, b, s) for i, (b, s) in enumerate(zip(blobs, shapes))]
        raw += sum(a.size for a in arrays[name])
    if raw != TOTAL_RAW:  # cannot happen when every shape matched; kept as a guard on the tables
        raise ConvertError("the network has %d parameter values, expected %d" % (raw, TOTAL_RAW))
    tensors = {}
    for conv, bn, scale, _ in conv_units():
        mean, var, factor = arrays[bn]
        gamma, beta = arrays[scale]
        if factor.reshape(-1)[0] < 0:
            raise ConvertError("layer %s has a negative moving-average factor %g" % (bn, factor.reshape(-1)[0]))
        if np.any(var < 0):
            raise ConvertError("layer %s has negative variances" % bn)
        w, b = fold_bn(arrays[conv][0], mean, var, factor, gamma, beta)
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise ConvertError("folding %s/%s into %s overflows float32" % (bn, scale, conv))
        tensors[tensor_name(conv) + ".weight"] = w
        tensors[tensor_name(conv) + ".bias"] = b
    folded = sum(a.size for a in tensors.values())
    for name in PLAIN_LAYERS:
        blobs = arrays[name]
        folded += sum(a.size for a in blobs)
        if name in NOT_WRITTEN:
            continue
        tensors[tensor_name(name) + ".weight"] = blobs[0].astype(np.float32)
        if len(blobs) > 1:
            tensors[tensor_name(name) + ".bias"] = blobs[1].astype(np.float32)
    written = sum(a.size for a in tensors.values())
    if folded != TOTAL_FOLDED or written != TOTAL_WRITTEN:
        raise ConvertError("parameter totals %d/%d differ from the expected %d/%d"
                           % (folded, written, TOTAL_FOLDED, TOTAL_WRITTEN))
    return collections.OrderedDict(sorted(tensors.items())), raw, folded


# ----------------------------------------------------------------------------------------------
# Output

def check_vocab(vocab_dir, fname, n):
    path = os.path.join(vocab_dir, fname)
    if not os.path.isfile(path):
        raise ConvertError("vocabulary file not found: %s" % path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise ConvertError("cannot read %s: %s" % (path, e.strerror or e))
    except UnicodeDecodeError:
        raise ConvertError("%s is not UTF-8 text" % path)
    lines = text.splitlines()
    if len(lines) != n:
        raise ConvertError("%s has %d lines, expected %d" % (path, len(lines), n))
    for i, line in enumerate(lines):
        if not line.strip():
            raise ConvertError("%s line %d is empty" % (path, i + 1))
    return path


def write_detector_dir(out_dir, force, config, tensors, vocab_paths):
    def fill(tmp):
        with open(os.path.join(tmp, "detector.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        nbytes = write_safetensors(os.path.join(tmp, "weights.safetensors"), tensors)
        for p in vocab_paths:
            shutil.copyfile(p, os.path.join(tmp, os.path.basename(p)))
        return nbytes
    return write_dir_atomically(out_dir, force, fill)


def convert(caffemodel, vocab_dir, out, boxes="36", force=False, log=None):
    """Runs the conversion; raises ConvertError on bad input. Returns detector.json's dict."""
    log = log or (lambda s: print(s))
    if boxes not in BOX_POLICIES:
        raise ConvertError("--boxes must be one of %s" % ", ".join(BOX_POLICIES))
    if not os.path.exists(caffemodel):
        raise ConvertError("caffemodel not found: %s" % caffemodel)
    if not os.path.isfile(caffemodel):
        raise ConvertError("caffemodel %s is not a file" % caffemodel)
    if not os.path.isdir(vocab_dir):
        raise ConvertError("vocabulary directory not found: %s" % vocab_dir)
    vocab_paths = [check_vocab(vocab_dir, fname, n) for fname, n in VOCABS]
    try:
        import numpy  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError as e:
        raise ConvertError("missing Python module (%s); run with /usr/bin/python3" % e)
    tmpdir = tempfile.mkdtemp(prefix="caffe_proto_")
    try:
        pb = compile_proto(tmpdir)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    net, data = parse_caffemodel(caffemodel, pb)
    sha = hashlib.sha256(data).hexdigest()
    nbytes_in = len(data)
    del data
    found = collect_layers(net)
    tensors, raw, folded = convert_tensors(found)
    del net, found
    min_boxes, max_boxes = BOX_POLICIES[boxes]
    config = collections.OrderedDict([
        ("format", "scanserve.bottom_up_detector"),
        ("format_version", 1),
        ("num_classes", NUM_CLASSES),
        ("num_attributes", NUM_ATTRIBUTES),
        ("min_boxes", min_boxes),
        ("max_boxes", max_boxes),
        ("conf_threshold", CONF_THRESHOLD),
        ("source", collections.OrderedDict([
            ("caffemodel", os.path.basename(caffemodel)), ("sha256", sha), ("bytes", nbytes_in)])),
    ])
    nbytes = write_detector_dir(out, force, config, tensors, vocab_paths)
    log("converted %s (%d bytes, %d parameter values) -> %s" % (caffemodel, nbytes_in, raw, out))
    log("  folded 104 BatchNorm+Scale pairs (%d values after folding); bbox_pred checked, not written"
        % folded)
    log("  wrote detector.json (boxes %d..%d, conf %.1f), weights.safetensors (%d float32 tensors, %.1f MB), "
        "objects_vocab.txt, attributes_vocab.txt" % (min_boxes, max_boxes, CONF_THRESHOLD, len(tensors),
                                                     nbytes / 1e6))
    return config


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        epilog="Writes DETECTOR_DIR/{detector.json, weights.safetensors, objects_vocab.txt, "
               "attributes_vocab.txt}; see docs/detector-format.md. Errors: one line on stderr, exit 2.")
    ap.add_argument("caffemodel", help="resnet101_faster_rcnn_final_iter_320000.caffemodel (36 boxes) or "
                                       "resnet101_faster_rcnn_final.caffemodel (10-100 boxes)")
    ap.add_argument("--vocab-dir", required=True,
                    help="directory with objects_vocab.txt (1600 lines) and attributes_vocab.txt (400 lines)")
    ap.add_argument("--out", required=True, help="detector directory to write")
    ap.add_argument("--boxes", default="36", choices=sorted(BOX_POLICIES),
                    help="box policy written to detector.json: 36 = fixed 36 boxes (iter_320000 model, "
                         "SCAN's features; default), 10-100 = adaptive (final model)")
    ap.add_argument("--force", action="store_true", help="replace DETECTOR_DIR if it exists")
    args = ap.parse_args(argv)
    return run_converter(PROG, lambda: convert(args.caffemodel, args.vocab_dir, args.out, args.boxes, args.force),
                         memory_note=" (the conversion needs about 0.8 GB)")


if __name__ == "__main__":
    sys.exit(main())
