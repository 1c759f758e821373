#!/usr/bin/env python3
"""The reference-style PyTorch baseline of performance.md, timed on this machine.

The published code's t2i scoring (one caption per call, as its evaluation does): per caption, the
caption repeated over every image, two batched products, LeakyReLU, l2norm over the query axis,
λ1 = 9 softmax over the regions, cosine, LogSumExp pooling with λ2 = 6; clipped_l2norm features.
Random l2-normalised images (36 x 1024) and captions (12-19 words).

    python3 tools/reference_scan_baseline.py --images 100000 --dtypes fp32,bf16 [--device cuda]

Prints one human line and one machine line per dtype:
    REF_MS <images> <fp32|bf16> <median ms per query>
scripts/gpu-check.sh passes those to `scan_bench --ref_ms=...`, so that its "vs ref" column is a
same-run ratio. Images are scored in chunks of --chunk (as many as memory allows; the published
code scores all of them in one call, which at 1 M images would need ~70 GB per caption).
"""
import argparse
import sys
import time

import torch
import torch.nn.functional as F


def l2norm(x, dim, eps=1e-8):
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def func_attention(query, context, smooth):
    b, ql, sl = context.size(0), query.size(1), context.size(1)
    attn = torch.bmm(context, query.transpose(1, 2))           # (b, k, n)
    attn = l2norm(F.leaky_relu(attn, 0.1), 2)                 # over the query axis
    attn = attn.transpose(1, 2).contiguous().view(b * ql, sl)
    attn = F.softmax(attn * smooth, dim=1).view(b, ql, sl)    # over the context axis
    return torch.bmm(attn, context)                           # (b, n, d)


def t2i(images, cap, chunk):
    out = []
    for start in range(0, images.size(0), chunk):
        ims = images[start:start + chunk]
        cap_e = cap.unsqueeze(0).repeat(ims.size(0), 1, 1)
        wc = func_attention(cap_e, ims, 9.0)
        s = F.cosine_similarity(cap_e, wc, dim=2)
        out.append(s.mul_(6.0).exp_().sum(dim=1, keepdim=True).log_() / 6.0)
    return torch.cat(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=100000)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--captions", type=int, default=10, help="timed captions (after 2 warm-up ones)")
    p.add_argument("--chunk", type=int, default=100000, help="images per call")
    p.add_argument("--regions", type=int, default=36)
    p.add_argument("--dim", type=int, default=1024)
    a = p.parse_args()
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    torch.manual_seed(0)
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for name in a.dtypes.split(","):
        if name not in dtypes:
            sys.exit("--dtypes: fp32 and/or bf16, got %r" % name)
        dtype = dtypes[name]
        ims = l2norm(torch.rand(a.images, a.regions, a.dim, device=a.device) * 2 - 1, 2).to(dtype)
        caps = [l2norm(torch.rand(int(torch.randint(12, 20, ())), a.dim, device=a.device) * 2 - 1, 1)
                .to(dtype) for _ in range(a.captions + 2)]
        times = []
        with torch.no_grad():
            for c in caps[:2]:
                t2i(ims, c, a.chunk)
            sync()
            for c in caps[2:]:
                t0 = time.perf_counter()
                scores = t2i(ims, c, a.chunk)
                sync()
                times.append((time.perf_counter() - t0) * 1e3)
                assert scores.shape == (a.images, 1)
        times.sort()
        median = times[len(times) // 2]
        print("reference-style PyTorch %s on %s, %d images, %s: median %.1f ms/query over %d captions"
              % (torch.__version__, a.device, a.images, name, median, len(times)))
        print("REF_MS %d %s %.3f" % (a.images, name, median))
        sys.stdout.flush()
        del ims
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
