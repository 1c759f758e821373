"""Writing scanserve model and detector directories, shared by the converters: the safetensors file
and a directory written under a temporary name, then renamed into place, so that a crash or an
error never leaves a half-written directory where the server would load it."""
import collections
import json
import os
import shutil
import struct
import sys
import tempfile

EXIT_BAD_INPUT = 2


class ConvertError(Exception):
    """Bad input: reported as one line on stderr, exit code 2."""


def run_converter(prog, convert, memory_note=""):
    """A converter's exit status for running convert(): 0 when it wrote its directory; 2 with one line
    "PROG: error: ..." for bad input (ConvertError) or too little memory (MemoryError, plus
    `memory_note`); 130 when interrupted."""
    try:
        convert()
    except ConvertError as e:
        sys.stderr.write("%s: error: %s\n" % (prog, e))
        return EXIT_BAD_INPUT
    except MemoryError:
        sys.stderr.write("%s: error: out of memory%s\n" % (prog, memory_note))
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): the directory is written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("%s: interrupted\n" % prog)
        return 130
    return 0


def write_safetensors(path, arrays):
    """Safetensors: u64 LE header length, JSON header (space-padded to 8 bytes), raw F32 LE data.
    `arrays` maps names to numpy arrays, written as float32 in the mapping's order. Returns the file
    size."""
    import numpy as np
    header = collections.OrderedDict()
    offset = 0
    for name, a in arrays.items():
        n = a.size * 4
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + n]}
        offset += n
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for a in arrays.values():
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
    return 8 + len(hjson) + offset


def write_dir_atomically(out_dir, force, fill):
    """Creates `out_dir` by calling fill(tmp_dir) on a fresh sibling directory and renaming it into
    place; an existing out_dir is replaced only with `force`. Returns fill's result. Failures are
    ConvertError naming the directory; the temporary directory never survives."""
    out_dir = os.path.abspath(out_dir)
    if os.path.lexists(out_dir):
        if not force:
            raise ConvertError("output %s already exists (use --force to replace it)" % out_dir)
        if not os.path.isdir(out_dir) or os.path.islink(out_dir):
            raise ConvertError("output %s exists and is not a directory" % out_dir)
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".tmp-", dir=parent)
    except OSError as e:
        raise ConvertError("cannot create output directory under %s: %s" % (parent, e.strerror or e))
    try:
        result = fill(tmp)
        os.chmod(tmp, 0o755)
        if os.path.lexists(out_dir):
            old = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".old-", dir=parent)
            os.rmdir(old)
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConvertError("cannot write %s: %s" % (out_dir, e.strerror or e))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
