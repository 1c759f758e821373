#!/usr/bin/python3
"""Convert a checkpoint written by the original SCAN code into a scanserve model directory.

    /usr/bin/python3 tools/convert_scan_checkpoint.py CHECKPOINT --vocab VOCAB_JSON --out MODEL_DIR [--force]

CHECKPOINT is `model_best.pth.tar` / `checkpoint_N.pth.tar` as kuanghuei/SCAN's train.py saves it:
    torch.save({'epoch', 'model': [img_enc_state_dict, txt_enc_state_dict], 'best_rsum', 'opt', 'Eiters'})
(usually written under Python 2 / torch 0.3: legacy serialization, loaded with encoding='latin1').
VOCAB_JSON is the vocabulary the model was trained with (`{data_name}_vocab.json`).

MODEL_DIR (docs/model-format.md) gets config.json, weights.safetensors (float32; a weight_norm image
encoder folded into fc.weight in float64) and vocab.json (the validated file, copied verbatim). The
directory is written under a temporary name and renamed into place, so a failed run leaves nothing.

Every problem with the input is one line on stderr ("convert_scan_checkpoint: error: ...") and exit
code 2. Note: a checkpoint is a pickle; loading one runs code it names. Convert only trusted files.

Needs torch (Debian's python3-torch: run with /usr/bin/python3).
"""

import argparse
import collections
import json
import math
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_dir_io import ConvertError, run_converter, write_dir_atomically, write_safetensors  # noqa: E402

PROG = "convert_scan_checkpoint"

# SCAN train.py's defaults for the fields the model directory uses.
SCAN_DEFAULTS = collections.OrderedDict([
    ("cross_attn", "t2i"),
    ("agg_func", "LogSumExp"),
    ("lambda_softmax", 9.0),
    ("lambda_lse", 6.0),
    ("raw_feature_norm", "clipped_l2norm"),
    ("bi_gru", False),
    ("num_layers", 1),
    ("no_imgnorm", False),
    ("no_txtnorm", False),
    ("precomp_enc_type", "basic"),
    ("embed_size", 1024),
    ("word_dim", 300),
    ("img_dim", 2048),
    ("margin", 0.2),
    ("data_name", "precomp"),
    ("vocab_path", "./vocab/"),
])
CROSS_ATTN = ("t2i", "i2t")
AGG_FUNCS = ("LogSumExp", "Mean", "Max", "Sum")
RAW_NORMS = ("clipped_l2norm", "l2norm", "clipped", "no_norm", "softmax")
CRASHING_NORMS = ("l1norm", "clipped_l1norm")
ENC_TYPES = ("basic", "weight_norm")
SPECIALS = (("<pad>", 0), ("<start>", 1), ("<end>", 2), ("<unk>", 3))


def _fmt_shape(shape):
    shape = tuple(int(s) for s in shape)
    return "(%d,)" % shape[0] if len(shape) == 1 else "(" + ", ".join(str(s) for s in shape) + ")"


def _norm_str(x):
    """Python 2 pickles may deliver str as bytes: decode (UTF-8, else latin-1)."""
    if isinstance(x, bytes):
        try:
            return x.decode("utf-8")
        except UnicodeDecodeError:
            return x.decode("latin-1")
    return x


# ----------------------------------------------------------------------------------------------
# Loading

def load_checkpoint(path):
    import torch  # deferred so that argument errors print without the torch import delay
    if not os.path.exists(path):
        raise ConvertError("checkpoint not found: %s" % path)
    if not os.path.isfile(path):
        raise ConvertError("checkpoint is not a file: %s" % path)
    try:
        ckpt = torch.load(path, map_location="cpu", encoding="latin1")
    except MemoryError:
        raise ConvertError("out of memory loading checkpoint %s" % path)
    except Exception as e:  # UnpicklingError, EOFError, RuntimeError (zip), ValueError, ...
        reason = " ".join(("%s: %s" % (type(e).__name__, e)).split())
        if len(reason) > 160:
            reason = reason[:157] + "..."
        raise ConvertError("%s is not a readable torch checkpoint (not a torch file, or truncated): %s"
                           % (path, reason))
    if isinstance(ckpt, dict):
        ckpt = {_norm_str(k): v for k, v in ckpt.items()}
    else:
        raise ConvertError("%s does not hold a SCAN checkpoint: expected a dict with 'model' and 'opt', "
                           "found %s" % (path, type(ckpt).__name__))
    for key in ("model", "opt"):
        if key not in ckpt:
            raise ConvertError("%s has no '%s' entry (keys: %s); not a SCAN checkpoint"
                               % (path, key, ", ".join(sorted(str(k) for k in ckpt)) or "none"))
    return ckpt


def normalise_opt(opt):
    if isinstance(opt, argparse.Namespace):
        fields = vars(opt)
    elif isinstance(opt, dict):
        fields = opt
    elif hasattr(opt, "__dict__") and not callable(opt):
        fields = vars(opt)
    else:
        raise ConvertError("checkpoint 'opt' is a %s, expected an argparse Namespace or a dict"
                           % type(opt).__name__)
    return {_norm_str(k): _norm_str(v) for k, v in fields.items()}


def _as_bool(name, v):
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise ConvertError("opt.%s = %r is not a boolean" % (name, v))


def _as_pos_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise ConvertError("opt.%s = %r is not an integer" % (name, v))
    if v < 1:
        raise ConvertError("opt.%s = %d must be positive" % (name, v))
    return int(v)


def _as_float(name, v, positive=True):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            import numpy as np
            if isinstance(v, np.generic):
                v = v.item()
        except ImportError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConvertError("opt.%s = %r is not a finite number" % (name, v))
    if positive and v <= 0:
        raise ConvertError("opt.%s = %r must be positive" % (name, v))
    return float(v)


def _as_choice(name, v, choices):
    if not isinstance(v, str):
        raise ConvertError("opt.%s = %r is not a string" % (name, v))
    if v not in choices:
        raise ConvertError("opt.%s = '%s' is not supported (expected one of: %s)"
                           % (name, v, ", ".join(choices)))
    return v


def build_config(opt):
    """Hyper-parameters from opt, with SCAN's defaults for missing fields. Returns (cfg, defaulted)."""
    raw, defaulted = {}, []
    for k, d in SCAN_DEFAULTS.items():
        if k in opt and opt[k] is not None:
            raw[k] = opt[k]
        else:
            raw[k] = d
            defaulted.append(k)
    attention_fields = ("cross_attn", "agg_func", "lambda_softmax", "lambda_lse", "raw_feature_norm")
    if all(k in defaulted for k in attention_fields):
        raise ConvertError("opt has none of SCAN's attention fields (%s): not a SCAN checkpoint (VSE++ and "
                           "other models share its tensor names but not its scores)" % ", ".join(attention_fields))
    if isinstance(raw["raw_feature_norm"], str) and raw["raw_feature_norm"] in CRASHING_NORMS:
        raise ConvertError("opt.raw_feature_norm = '%s' is unsupported: the SCAN reference code crashes "
                           "with it (its l1norm_d is undefined), so no model can have been trained or "
                           "scored with it" % raw["raw_feature_norm"])
    cfg = collections.OrderedDict()
    cfg["format"] = "scanserve.scan_model"
    cfg["format_version"] = 1
    cfg["cross_attn"] = _as_choice("cross_attn", raw["cross_attn"], CROSS_ATTN)
    cfg["agg_func"] = _as_choice("agg_func", raw["agg_func"], AGG_FUNCS)
    cfg["lambda_softmax"] = _as_float("lambda_softmax", raw["lambda_softmax"])
    cfg["lambda_lse"] = _as_float("lambda_lse", raw["lambda_lse"])
    cfg["raw_feature_norm"] = _as_choice("raw_feature_norm", raw["raw_feature_norm"], RAW_NORMS)
    cfg["bi_gru"] = _as_bool("bi_gru", raw["bi_gru"])
    cfg["num_layers"] = _as_pos_int("num_layers", raw["num_layers"])
    cfg["no_imgnorm"] = _as_bool("no_imgnorm", raw["no_imgnorm"])
    cfg["no_txtnorm"] = _as_bool("no_txtnorm", raw["no_txtnorm"])
    cfg["precomp_enc_type"] = _as_choice("precomp_enc_type", raw["precomp_enc_type"], ENC_TYPES)
    cfg["embed_size"] = _as_pos_int("embed_size", raw["embed_size"])
    cfg["word_dim"] = _as_pos_int("word_dim", raw["word_dim"])
    cfg["img_dim"] = _as_pos_int("img_dim", raw["img_dim"])
    cfg["vocab_size"] = 0  # filled in from the vocabulary
    cfg["margin"] = _as_float("margin", raw["margin"], positive=False)
    cfg["data_name"] = str(raw["data_name"])
    return cfg, str(raw["vocab_path"]), defaulted


# ----------------------------------------------------------------------------------------------
# Vocabulary

def _no_duplicate_keys(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError("duplicate key %r" % k)
        d[k] = v
    return d


def load_vocab(path):
    if not os.path.exists(path):
        raise ConvertError("vocab file not found: %s" % path)
    if not os.path.isfile(path):
        raise ConvertError("vocab path is not a file: %s" % path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        d = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as e:
        raise ConvertError("vocab %s is not valid JSON: %s" % (path, " ".join(str(e).split())))
    except OSError as e:
        raise ConvertError("cannot read vocab %s: %s" % (path, e.strerror or e))
    where = "vocab %s" % path
    if not isinstance(d, dict):
        raise ConvertError("%s: expected a JSON object with word2idx, idx2word, idx" % where)
    for key in ("word2idx", "idx2word", "idx"):
        if key not in d:
            raise ConvertError("%s has no '%s' (expected word2idx, idx2word, idx)" % (where, key))
    w2i, i2w, n = d["word2idx"], d["idx2word"], d["idx"]
    if not isinstance(w2i, dict) or not w2i:
        raise ConvertError("%s: word2idx is not a non-empty object" % where)
    if not isinstance(i2w, dict):
        raise ConvertError("%s: idx2word is not an object" % where)
    if isinstance(n, bool) or not isinstance(n, int):
        raise ConvertError("%s: idx = %r is not an integer" % (where, n))
    if len(w2i) != n or len(i2w) != n:
        raise ConvertError("%s: idx = %d but word2idx has %d entries and idx2word %d"
                           % (where, n, len(w2i), len(i2w)))
    seen = {}
    for w, i in w2i.items():
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            raise ConvertError("%s: word2idx[%r] = %r is not an id in [0, %d)" % (where, w, i, n))
        if i in seen:
            raise ConvertError("%s: words %r and %r share id %d" % (where, seen[i], w, i))
        seen[i] = w
        back = i2w.get(str(i))
        if back != w:
            raise ConvertError("%s: word2idx[%r] = %d but idx2word['%d'] = %r" % (where, w, i, i, back))
    # ids are unique and in [0, n) for n words, so they are exactly 0..n-1; idx2word has n keys and
    # holds str(i) for each of them, so it has no other keys.
    for word, idx in SPECIALS:
        if w2i.get(word) != idx:
            raise ConvertError("%s: special token %s must have id %d, found %r"
                               % (where, word, idx, w2i.get(word)))
    return n


# ----------------------------------------------------------------------------------------------
# Tensors

def _state_dict(sd, which):
    if not isinstance(sd, dict):
        raise ConvertError("checkpoint %s state dict is a %s, expected a dict of tensors"
                           % (which, type(sd).__name__))
    import torch
    out = collections.OrderedDict()
    for k, v in sd.items():
        k = _norm_str(k)
        if not isinstance(k, str):
            raise ConvertError("checkpoint %s state dict has a non-string key %r" % (which, k))
        if not isinstance(v, torch.Tensor):
            try:
                import numpy as np
                if isinstance(v, np.ndarray):
                    v = torch.from_numpy(v)
            except ImportError:
                pass
        if not isinstance(v, torch.Tensor):
            raise ConvertError("checkpoint %s %s is a %s, not a tensor" % (which, k, type(v).__name__))
        out[k] = v
    return out


def _tensor(sd, which, name, shape):
    if name not in sd:
        raise ConvertError("checkpoint %s state dict lacks tensor %s (has: %s)"
                           % (which, name, ", ".join(sorted(sd)) or "none"))
    t = sd[name]
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ConvertError("%s %s has shape %s, expected %s"
                           % (which, name, _fmt_shape(t.shape), _fmt_shape(shape)))
    return _checked_float(t, which, name)


def _checked_float(t, which, name):
    import torch
    if not t.is_floating_point():
        raise ConvertError("%s %s has dtype %s, expected floating point" % (which, name, t.dtype))
    t = t.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ConvertError("%s %s contains NaN or Inf" % (which, name))
    return t


def gru_names(num_layers, bi_gru):
    names = []
    for layer in range(num_layers):
        for suffix in ("", "_reverse") if bi_gru else ("",):
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                names.append("%s_l%d%s" % (kind, layer, suffix))
    return names


def collect_tensors(model, cfg):
    """Validated float64 tensors under the model-format names, plus notes for the summary."""
    if not isinstance(model, (list, tuple)):
        raise ConvertError("checkpoint 'model' is a %s, expected a list of 2 state dicts "
                           "[img_enc, txt_enc]" % type(model).__name__)
    if len(model) != 2:
        raise ConvertError("checkpoint 'model' holds %d state dicts, expected 2 [img_enc, txt_enc]"
                           % len(model))
    img = _state_dict(model[0], "img_enc")
    txt = _state_dict(model[1], "txt_enc")
    E, D, F, V = cfg["embed_size"], cfg["word_dim"], cfg["img_dim"], cfg["vocab_size"]
    L, bi = cfg["num_layers"], cfg["bi_gru"]
    out = collections.OrderedDict()
    notes = []

    # Image encoder.
    has_wn = "fc.weight_g" in img or "fc.weight_v" in img
    if cfg["precomp_enc_type"] == "weight_norm":
        if "fc.weight" in img and not has_wn:
            raise ConvertError("opt.precomp_enc_type is weight_norm but img_enc has fc.weight instead of "
                               "fc.weight_g/fc.weight_v")
        v = _tensor(img, "img_enc", "fc.weight_v", (E, F))
        g = _tensor(img, "img_enc", "fc.weight_g", None)
        if g.dim() == 0 or tuple(g.shape) == (1,):
            vnorm = v.norm()
            if float(vnorm) == 0.0:
                raise ConvertError("img_enc fc.weight_v is all zeros; weight_norm is undefined")
            w = g.reshape(()) * v / vnorm
            notes.append("weight_norm (dim=None): fc.weight = g * v / ||v||_F, folded in float64")
        elif tuple(g.shape) == (E, 1):
            rnorm = v.norm(dim=1, keepdim=True)
            if bool((rnorm == 0).any()):
                raise ConvertError("img_enc fc.weight_v has an all-zero row; weight_norm is undefined")
            w = g * v / rnorm
            notes.append("weight_norm (per row, g (%d, 1)): fc.weight = g_i * v_i / ||v_i||, "
                         "folded in float64" % E)
        else:
            raise ConvertError("img_enc fc.weight_g has shape %s, expected () or (1,) (weight_norm "
                               "dim=None) or (%d, 1) (per row)" % (_fmt_shape(g.shape), E))
        used = {"fc.weight_g", "fc.weight_v", "fc.bias"}
    else:
        if has_wn and "fc.weight" not in img:
            raise ConvertError("img_enc has fc.weight_g/fc.weight_v but opt.precomp_enc_type is '%s', "
                               "not weight_norm" % cfg["precomp_enc_type"])
        w = _tensor(img, "img_enc", "fc.weight", (E, F))
        used = {"fc.weight", "fc.bias"}
    out["img_enc.fc.weight"] = w
    out["img_enc.fc.bias"] = _tensor(img, "img_enc", "fc.bias", (E,))
    extra = sorted(set(img) - used)
    if extra:
        # SCAN's image encoders load only the tensors they own and ignore the rest.
        notes.append("ignored img_enc tensors the SCAN image encoder does not use: %s" % ", ".join(extra))

    # Text encoder.
    emb = txt.get("embed.weight")
    if emb is not None and emb.dim() == 2 and emb.shape[0] != V and emb.shape[1] == D:
        raise ConvertError("vocab size mismatch: txt_enc embed.weight has %d rows but the vocabulary has "
                           "%d words" % (emb.shape[0], V))
    out["txt_enc.embed.weight"] = _tensor(txt, "txt_enc", "embed.weight", (V, D))
    names = gru_names(L, bi)
    dirs = 2 if bi else 1
    for name in names:
        layer = int(name.split("_l", 1)[1].split("_")[0])
        if name.startswith("weight_ih"):
            shape = (3 * E, D if layer == 0 else E * dirs)
        elif name.startswith("weight_hh"):
            shape = (3 * E, E)
        else:
            shape = (3 * E,)
        out["txt_enc.rnn." + name] = _tensor(txt, "txt_enc", "rnn." + name, shape)
    extra = sorted(set(txt) - {"embed.weight"} - {"rnn." + n for n in names})
    if extra:
        hint = ""
        if any(e.endswith("_reverse") for e in extra) and not bi:
            hint = " (opt.bi_gru is false but the checkpoint has a reverse direction)"
        elif any(e.startswith("rnn.") and "_l%d" % L in e for e in extra):
            hint = " (the checkpoint has more GRU layers than opt.num_layers = %d)" % L
        # SCAN's EncoderText loads its state dict strictly: extra tensors make the reference fail.
        raise ConvertError("txt_enc has unexpected tensors %s%s" % (", ".join(extra), hint))
    return out, notes


# ----------------------------------------------------------------------------------------------
# Writing

def _json_scalar(v):
    v = _norm_str(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v
    try:
        item = v.item()  # numpy / torch scalars
        return _json_scalar(item)
    except (AttributeError, ValueError, RuntimeError):
        return str(v)


def write_model_dir(out_dir, force, cfg, tensors, vocab_path):
    def fill(tmp):
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        nbytes = write_safetensors(os.path.join(tmp, "weights.safetensors"),
                                   collections.OrderedDict((k, t.numpy()) for k, t in tensors.items()))
        shutil.copyfile(vocab_path, os.path.join(tmp, "vocab.json"))
        return nbytes
    return write_dir_atomically(out_dir, force, fill)


# ----------------------------------------------------------------------------------------------

def convert(checkpoint, vocab, out, force=False, log=None):
    """Runs the conversion; raises ConvertError on bad input. Returns the config written."""
    log = log or (lambda s: print(s))
    for what, path in (("checkpoint", checkpoint), ("vocab file", vocab)):
        if not os.path.exists(path):
            raise ConvertError("%s not found: %s" % (what, path))
    ckpt = load_checkpoint(checkpoint)
    V = load_vocab(vocab)
    opt = normalise_opt(ckpt["opt"])
    cfg, opt_vocab_path, defaulted = build_config(opt)
    cfg["vocab_size"] = V
    if "vocab_size" in opt and opt["vocab_size"] is not None:
        ov = opt["vocab_size"]
        if isinstance(ov, bool) or not isinstance(ov, int):
            raise ConvertError("opt.vocab_size = %r is not an integer" % (ov,))
        if ov != V:
            raise ConvertError("vocab size mismatch: opt.vocab_size is %d but the vocabulary %s has %d "
                               "words" % (ov, vocab, V))
    tensors, notes = collect_tensors(ckpt["model"], cfg)
    cfg["source"] = collections.OrderedDict([
        ("checkpoint", os.path.basename(checkpoint)),
        ("epoch", _json_scalar(ckpt.get("epoch"))),
        ("best_rsum", _json_scalar(ckpt.get("best_rsum"))),
        ("Eiters", _json_scalar(ckpt.get("Eiters"))),
        ("vocab_path", opt_vocab_path),
        ("vocab_file", os.path.basename(vocab)),
        ("defaulted_opt_fields", defaulted),
    ])
    nbytes = write_model_dir(out, force, cfg, tensors, vocab)

    log("converted %s (epoch %s, best_rsum %s) -> %s" % (checkpoint, cfg["source"]["epoch"],
                                                        cfg["source"]["best_rsum"], out))
    log("  %s %s lambda_softmax=%g lambda_lse=%g %s; %s GRU, %d layer(s); embed %d, word_dim %d, "
        "img_dim %d, vocab %d%s%s; data_name %s"
        % (cfg["cross_attn"], cfg["agg_func"], cfg["lambda_softmax"], cfg["lambda_lse"],
           cfg["raw_feature_norm"], "bidirectional" if cfg["bi_gru"] else "unidirectional",
           cfg["num_layers"], cfg["embed_size"], cfg["word_dim"], cfg["img_dim"], V,
           ", no_imgnorm" if cfg["no_imgnorm"] else "", ", no_txtnorm" if cfg["no_txtnorm"] else "",
           cfg["data_name"]))
    for n in notes:
        log("  " + n)
    if defaulted:
        log("  opt lacks %s: used SCAN's defaults (%s)"
            % (", ".join(defaulted), ", ".join("%s=%s" % (k, SCAN_DEFAULTS[k]) for k in defaulted)))
    log("  wrote config.json, weights.safetensors (%d float32 tensors, %.1f MB), vocab.json (%d words)"
        % (len(tensors), nbytes / 1e6, V))
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="SCAN checkpoint (model_best.pth.tar / checkpoint_N.pth.tar)")
    ap.add_argument("--vocab", required=True, help="the vocabulary JSON the model was trained with")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--force", action="store_true", help="replace MODEL_DIR if it exists")
    args = ap.parse_args(argv)
    return run_converter(PROG, lambda: convert(args.checkpoint, args.vocab, args.out, args.force))


if __name__ == "__main__":
    sys.exit(main())
