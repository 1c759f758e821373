"""Independent PyTorch/numpy reference of the bottom-up-attention detector, reading a scanserve detector
directory (docs/detector-format.md). Written from the spec (../shared/spec/bottom-up-detector.md) and the
semantics of the original Caffe + pycaffe code; nothing is imported from the C++ engine or the converter.

    ref = BottomUpReference(detector_dir)
    out = ref.run_file("image.jpg")          # dict of numpy arrays, see run()

Ordering rule for every sort (shared with the C++ port): score descending, ties broken by the HIGHER index
first, i.e. np.argsort(x, kind="stable")[::-1]. (The original used numpy's unstable quicksort, whose tie
order is undefined.)

Float semantics follow the original: the mean subtraction is done in float64 and rounded to float32, the
proposal layer works in float32 (numpy), NMS computes IoU in float32 and compares it with the threshold in
float64, RoI boxes are divided by float32(scale), max_conf is float64 and compared with 0.2 in float64.

Run under Debian's /usr/bin/python3 (torch, torchvision, numpy, cv2).
"""

import collections
import json
import os

import numpy as np

from safetensors_reader import read_safetensors

PIXEL_MEANS = np.array([[[102.9801, 115.9465, 122.7717]]], dtype=np.float64)
TEST_SCALE = 600
TEST_MAX_SIZE = 1000
FEAT_STRIDE = 16
ANCHOR_SCALES = (4, 8, 16, 32)
ANCHOR_RATIOS = (0.5, 1, 2)
RPN_PRE_NMS_TOP_N = 6000
RPN_POST_NMS_TOP_N = 300
RPN_NMS_THRESH = 0.7
RPN_MIN_SIZE = 16
TEST_NMS = 0.3
POOLED = 14
SPATIAL_SCALE = 0.0625

# Spec section 2.4 (the constant the C++ hard-codes); generate_anchors() must reproduce it.
ANCHOR_TABLE = np.array([
    [-38, -16, 53, 31], [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
    [-24, -24, 39, 39], [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
    [-14, -36, 29, 51], [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]],
    dtype=np.float64)


def order_desc(x):
    """Indices sorting x descending; equal values: higher index first."""
    return np.argsort(np.asarray(x), kind="stable")[::-1]


# ----------------------------------------------------------------------------------------------
# Pre-processing (spec section 1; lib/fast_rcnn/test.py _get_image_blob)

def decode_image(data):
    import cv2
    im = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if im is None:
        raise ValueError("cannot decode image")
    return im


def preprocess(im):
    """BGR uint8 HxWx3 -> (blob 1x3xH'xW' float32, im_info float32 [H', W', s], s as float64)."""
    import cv2
    im_orig = im.astype(np.float32, copy=True)
    im_orig -= PIXEL_MEANS  # float64 arithmetic, stored back as float32
    size_min = min(im_orig.shape[0:2])
    size_max = max(im_orig.shape[0:2])
    s = float(TEST_SCALE) / float(size_min)
    if np.round(s * size_max) > TEST_MAX_SIZE:
        s = float(TEST_MAX_SIZE) / float(size_max)
    resized = cv2.resize(im_orig, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
    blob = np.ascontiguousarray(resized.transpose(2, 0, 1)[None]).astype(np.float32)
    im_info = np.array([resized.shape[0], resized.shape[1], s], dtype=np.float32)
    return blob, im_info, s


# ----------------------------------------------------------------------------------------------
# Proposals (lib/rpn/generate_anchors.py, proposal_layer.py, bbox_transform.py; spec 2.4-2.5)

def generate_anchors(base_size=16, ratios=ANCHOR_RATIOS, scales=ANCHOR_SCALES):
    def whctrs(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mk(ws, hs, xc, yc):
        ws, hs = np.asarray(ws, np.float64)[:, None], np.asarray(hs, np.float64)[:, None]
        return np.hstack((xc - 0.5 * (ws - 1), yc - 0.5 * (hs - 1), xc + 0.5 * (ws - 1), yc + 0.5 * (hs - 1)))

    base = np.array([0, 0, base_size - 1, base_size - 1], dtype=np.float64)
    w, h, xc, yc = whctrs(base)
    ratios = np.asarray(ratios, dtype=np.float64)
    ws = np.round(np.sqrt(w * h / ratios))
    hs = np.round(ws * ratios)
    ratio_anchors = mk(ws, hs, xc, yc)
    out = []
    for r in ratio_anchors:
        w, h, xc, yc = whctrs(r)
        sc = np.asarray(scales, dtype=np.float64)
        out.append(mk(w * sc, h * sc, xc, yc))
    return np.vstack(out)


def decode_boxes(anchors, deltas):
    """bbox_transform_inv in float32 (deltas' dtype), +1 widths, no clamp."""
    boxes = anchors.astype(np.float32)
    deltas = deltas.astype(np.float32)
    widths = boxes[:, 2] - boxes[:, 0] + np.float32(1.0)
    heights = boxes[:, 3] - boxes[:, 1] + np.float32(1.0)
    ctr_x = boxes[:, 0] + np.float32(0.5) * widths
    ctr_y = boxes[:, 1] + np.float32(0.5) * heights
    dx, dy, dw, dh = deltas[:, 0], deltas[:, 1], deltas[:, 2], deltas[:, 3]
    with np.errstate(over="ignore"):
        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        pred_w = np.exp(dw) * widths
        pred_h = np.exp(dh) * heights
    half = np.float32(0.5)
    out = np.empty(deltas.shape, dtype=np.float32)
    out[:, 0] = pred_ctr_x - half * pred_w
    out[:, 1] = pred_ctr_y - half * pred_h
    out[:, 2] = pred_ctr_x + half * pred_w
    out[:, 3] = pred_ctr_y + half * pred_h
    return out


def clip_boxes(boxes, height, width):
    """Clips to [0, W'-1] x [0, H'-1]; height/width are float32 (im_info)."""
    b = boxes.copy()
    wmax = np.float32(width) - np.float32(1)
    hmax = np.float32(height) - np.float32(1)
    b[:, 0::2] = np.maximum(np.minimum(b[:, 0::2], wmax), np.float32(0))
    b[:, 1::2] = np.maximum(np.minimum(b[:, 1::2], hmax), np.float32(0))
    return b


def legacy_nms(boxes, scores, thresh):
    """lib/nms/cpu_nms.pyx: greedy by descending score, +1 areas, IoU in float32, suppress when
    float64(IoU) >= thresh. Returns kept indices (into boxes) in selection order."""
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.shape[0] == 0:
        return np.zeros((0,), dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    one = np.float32(1)
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    order = order_desc(np.asarray(scores, dtype=np.float32))
    keep = []
    zero = np.float32(0)
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(x1[i], x1[rest])
        yy1 = np.maximum(y1[i], y1[rest])
        xx2 = np.minimum(x2[i], x2[rest])
        yy2 = np.minimum(y2[i], y2[rest])
        w = np.maximum(zero, xx2 - xx1 + one)
        h = np.maximum(zero, yy2 - yy1 + one)
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[ovr.astype(np.float64) < float(thresh)]
    return np.array(keep, dtype=np.int64)


def proposal_layer(fg_scores, deltas, im_info):
    """fg_scores: 12 x H x W float32 (channels 12..23 of the RPN probability blob); deltas 48 x H x W.
    Returns (rois R x 4 float32 in resized-image coords, scores R float32)."""
    H, W = fg_scores.shape[1:]
    sx, sy = np.meshgrid(np.arange(W) * FEAT_STRIDE, np.arange(H) * FEAT_STRIDE)
    shifts = np.vstack((sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel())).T
    anchors = (ANCHOR_TABLE[None, :, :] + shifts[:, None, :]).reshape(-1, 4)  # (h, w, a), a fastest
    d = deltas.transpose(1, 2, 0).reshape(-1, 4)  # channel 4a+k -> [(h,w,a), k]
    scores = fg_scores.transpose(1, 2, 0).reshape(-1)
    props = decode_boxes(anchors, d)
    props = clip_boxes(props, im_info[0], im_info[1])
    min_size = np.float32(RPN_MIN_SIZE) * np.float32(im_info[2])
    ws = props[:, 2] - props[:, 0] + np.float32(1)
    hs = props[:, 3] - props[:, 1] + np.float32(1)
    keep = np.where((ws >= min_size) & (hs >= min_size))[0]
    props, scores = props[keep], scores[keep]
    order = order_desc(scores)[:RPN_PRE_NMS_TOP_N]
    props, scores = props[order], scores[order]
    keep = legacy_nms(props, scores, RPN_NMS_THRESH)[:RPN_POST_NMS_TOP_N]
    return props[keep].astype(np.float32), scores[keep].astype(np.float32)


# ----------------------------------------------------------------------------------------------
# RoI pooling oracle (spec 2.6; used to validate torchvision's roi_pool)

def roi_pool_naive(feat, rois, pooled=POOLED, spatial_scale=SPATIAL_SCALE):
    """feat C x H x W (numpy float32), rois R x 4 (x1,y1,x2,y2). Caffe ROIPooling, float32 bin edges."""
    import math
    C, H, W = feat.shape
    out = np.zeros((rois.shape[0], C, pooled, pooled), dtype=np.float32)
    ss = np.float32(spatial_scale)
    for r, (x1, y1, x2, y2) in enumerate(np.asarray(rois, dtype=np.float32)):
        # C round(): half away from zero
        rnd = lambda v: int(math.floor(abs(float(v)) + 0.5)) * (1 if v >= 0 else -1)  # noqa: E731
        sw, sh, ew, eh = rnd(x1 * ss), rnd(y1 * ss), rnd(x2 * ss), rnd(y2 * ss)
        rw, rh = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        bh, bw = np.float32(rh) / np.float32(pooled), np.float32(rw) / np.float32(pooled)
        for ph in range(pooled):
            hs = min(max(int(math.floor(np.float32(ph) * bh)) + sh, 0), H)
            he = min(max(int(math.ceil(np.float32(ph + 1) * bh)) + sh, 0), H)
            for pw in range(pooled):
                ws = min(max(int(math.floor(np.float32(pw) * bw)) + sw, 0), W)
                we = min(max(int(math.ceil(np.float32(pw + 1) * bw)) + sw, 0), W)
                if he <= hs or we <= ws:
                    continue
                out[r, :, ph, pw] = feat[:, hs:he, ws:we].reshape(C, -1).max(axis=1)
    return out


# ----------------------------------------------------------------------------------------------
# Selection (tools/generate_tsv.py get_detections_from_im; spec 2.10)

def max_conf_naive(boxes, cls_prob, nms_thresh=TEST_NMS):
    """Per class c = 1..K-1: NMS on boxes scored by cls_prob[:, c]; max_conf (float64) over survivors."""
    R, K = cls_prob.shape
    max_conf = np.zeros((R,), dtype=np.float64)
    for c in range(1, K):
        s = cls_prob[:, c]
        keep = legacy_nms(boxes, s, nms_thresh)
        sk = s[keep].astype(np.float64)
        max_conf[keep] = np.where(sk > max_conf[keep], sk, max_conf[keep])
    return max_conf


def select_boxes(max_conf, min_boxes, max_boxes, conf_thresh=0.2):
    keep = np.where(max_conf >= conf_thresh)[0]
    if len(keep) < min_boxes:
        keep = order_desc(max_conf)[:min_boxes]
    elif len(keep) > max_boxes:
        keep = order_desc(max_conf)[:max_boxes]
    return keep.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Network

class BottomUpReference(object):
    def __init__(self, detector_dir, res5_chunk=50):
        import torch
        self.torch = torch
        # >= 2 intra-op threads: with 1 thread ATen routes batch-1 1x1 convolutions to a slow path
        torch.set_num_threads(int(os.environ.get("SCANSERVE_REF_THREADS", max(2, torch.get_num_threads()))))
        with open(os.path.join(detector_dir, "detector.json")) as f:
            self.config = json.load(f)
        self.min_boxes = int(self.config.get("min_boxes", 36))
        self.max_boxes = int(self.config.get("max_boxes", 36))
        self.conf_thresh = float(self.config.get("conf_threshold", 0.2))
        raw = read_safetensors(os.path.join(detector_dir, "weights.safetensors")).tensors
        self.w = {k: torch.from_numpy(np.array(v)) for k, v in raw.items()}
        self.res5_chunk = res5_chunk
        assert np.array_equal(generate_anchors(), ANCHOR_TABLE)

    def conv(self, x, name, stride=1, padding=0, dilation=1, relu=True):
        import torch.nn.functional as F
        y = F.conv2d(x, self.w[name + ".weight"], self.w[name + ".bias"], stride=stride, padding=padding,
                     dilation=dilation)
        return F.relu(y) if relu else y

    def block(self, x, X, stride, proj, dilation=1):
        import torch.nn.functional as F
        sc = self.conv(x, "res%s_branch1" % X, stride=stride, relu=False) if proj else x
        y = self.conv(x, "res%s_branch2a" % X, stride=stride)  # stride on the 1x1 (MSRA)
        y = self.conv(y, "res%s_branch2b" % X, padding=dilation, dilation=dilation)
        y = self.conv(y, "res%s_branch2c" % X, relu=False)
        return F.relu(y + sc)

    def trunk(self, x):
        import torch.nn.functional as F
        x = self.conv(x, "conv1", stride=2, padding=3)
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)
        for X in ("2a", "2b", "2c"):
            x = self.block(x, X, 1, X == "2a")
        for X in ["3a", "3b1", "3b2", "3b3"]:
            x = self.block(x, X, 2 if X == "3a" else 1, X == "3a")
        for X in ["4a"] + ["4b%d" % i for i in range(1, 23)]:
            x = self.block(x, X, 2 if X == "4a" else 1, X == "4a")
        return x

    def res5(self, x):
        for X in ("5a", "5b", "5c"):
            x = self.block(x, X, 1, X == "5a", dilation=2)
        return x

    def run_file(self, path):
        with open(path, "rb") as f:
            return self.run(decode_image(f.read()))

    def run(self, im):
        """im: BGR uint8 H x W x 3. Returns a dict of numpy arrays (names as scan_extract's debug dump)."""
        torch = self.torch
        import torch.nn.functional as F
        from torchvision.ops import roi_pool
        blob, im_info, s = preprocess(im)
        with torch.no_grad():
            res4 = self.trunk(torch.from_numpy(blob))
            h = self.conv(res4, "rpn_conv_3x3", padding=1)
            cls = self.conv(h, "rpn_cls_score", relu=False)[0]           # 24 x H x W
            deltas = self.conv(h, "rpn_bbox_pred", relu=False)[0].numpy()  # 48 x H x W
            A = cls.shape[0] // 2
            prob = torch.softmax(torch.stack([cls[:A], cls[A:]], 0), dim=0)  # pairs (a, 12+a)
            fg = prob[1].numpy()
            rois, roi_scores = proposal_layer(fg, deltas, im_info)
            R = rois.shape[0]
            rb = torch.cat([torch.zeros(R, 1), torch.from_numpy(rois)], 1)
            pooled = roi_pool(res4, rb, output_size=(POOLED, POOLED), spatial_scale=SPATIAL_SCALE)
            pool5 = torch.cat([self.res5(pooled[i:i + self.res5_chunk]).mean(dim=(2, 3))
                               for i in range(0, R, self.res5_chunk)], 0) if R else torch.zeros(0, 2048)
            cls_score = F.linear(pool5, self.w["cls_score.weight"], self.w["cls_score.bias"])
            cls_prob = torch.softmax(cls_score, dim=1)
            # ArgMax over all 1601 logits (background included); ties: higher index.
            cs = cls_score.numpy()
            predicted = np.array([order_desc(r)[0] for r in cs], dtype=np.int64)
            emb = self.w["cls_embedding.weight"][torch.from_numpy(predicted)]
            fa = F.relu(F.linear(torch.cat([pool5, emb], 1), self.w["fc_attr.weight"], self.w["fc_attr.bias"]))
            attr_prob = torch.softmax(F.linear(fa, self.w["attr_score.weight"], self.w["attr_score.bias"]), 1)
        cls_prob = cls_prob.numpy()
        attr_prob = attr_prob.numpy()
        pool5 = pool5.numpy()
        boxes_all = rois / np.float32(s)
        max_conf = max_conf_naive(boxes_all, cls_prob)
        keep = select_boxes(max_conf, self.min_boxes, self.max_boxes, self.conf_thresh)
        out = collections.OrderedDict()
        out["im_info"] = im_info
        out["input"] = blob[0]
        out["rois"] = rois
        out["roi_scores"] = roi_scores
        out["cls_prob"] = cls_prob
        out["attr_prob"] = attr_prob
        out["pool5"] = pool5
        out["keep"] = keep
        out["max_conf"] = max_conf
        out["predicted_cls"] = predicted
        out["boxes"] = boxes_all[keep]
        out["features"] = pool5[keep]
        kp = cls_prob[keep, 1:]
        ka = attr_prob[keep, 1:]
        out["objects_id"] = np.array([order_desc(r)[0] for r in kp], dtype=np.int64)
        out["objects_conf"] = kp.max(axis=1) if len(keep) else np.zeros((0,), np.float32)
        out["attrs_id"] = np.array([order_desc(r)[0] for r in ka], dtype=np.int64)
        out["attrs_conf"] = ka.max(axis=1) if len(keep) else np.zeros((0,), np.float32)
        out["image_h"], out["image_w"] = im.shape[0], im.shape[1]
        return out
