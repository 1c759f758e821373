"""Randomised robustness test of the real `scanserve` binary: every RPC with malformed and valid input.

    SCANSERVE_BUILD_DIR=build /usr/bin/python3 tests/python/test_server_fuzz.py

A tiny random SCAN model, the CPU backend, a 1 MiB message limit, a snapshot directory and two
batch workers (two merged searches in the engine at once, as the GPU serving benchmark runs). Seeded
(SCANSERVE_FUZZ_SEED, default 7) so that a failure replays. Calls are drawn from every RPC of
scanserve.v1, each field from its valid values and now and then from hostile ones (unknown, empty and
overlong ids, empty and overlong texts, NaN/inf features and boxes, wrong dimensions and byte lengths,
huge counts, out-of-range top_k, page sizes and enums, bad page tokens and snapshot names, images
without a detector, messages over the limit, ...). Two phases:
  1. one client, SCANSERVE_FUZZ_CALLS calls (default 3000): no one else writes, so every answer is
     checked against an exact model of the store;
  2. 4 concurrent clients, a third as many calls each, each writing only ids under its own prefix
     (the batcher merges their searches; their writes meet in the store): every answer is checked
     where the client can know it (its own ids, and phase 1's, which nobody changes any more).
Checked:
  * every call, and every per-item status, ends with a code a caller can act on (OK,
    INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, ALREADY_EXISTS,
    OUT_OF_RANGE), with a message: never INTERNAL, UNKNOWN, DATA_LOSS, a hang (DEADLINE_EXCEEDED) or
    a dead server;
  * answers agree with the model: searches return min(top_k, matching items) hits (phase 1), sorted,
    finite, unique, inside the filter, with the stored collection, metadata and text; GetItems returns
    what was acknowledged (collection, metadata, text, region count, and with include_region_features
    the features bit for bit: the server keeps them) or an error for an id not stored;
    ListItems pages are sorted, unique and stored; ListChanges pages are in increasing sequence
    order after the one asked for (OUT_OF_RANGE only after a sequence beyond the newest); GetStats and snapshots count the model (phase 1);
  * at the end: /healthz is 200 and ListItems, GetItems and GetStats give exactly the model, and so
    does the change log replayed from the start (an id is stored iff its last change is a put);
    then kill -9 and a restart on the same data directory: still exactly the model (nothing
    acknowledged lost, nothing deleted back), in the log too.
SCANSERVE_FUZZ_DEBUG=1 prints the message of every refused item. SCANSERVE_FUZZ_SERVER runs another
scanserve binary, SCANSERVE_FUZZ_BACKEND=cuda serves from its CUDA backend (bf16 storage): ctest runs
both against the emulated CUDA build (tests/cuda_emulation), fewer calls.
Skips (exit 77) when the build was configured with SCANSERVE_BUILD_SERVER=OFF.
"""

import math
import os
import re
import sys
import threading
import unittest
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scanserve_harness as h  # noqa: E402

h.skip_if_server_disabled()
h.require_grpc()
import grpc  # noqa: E402

SEED = int(os.environ.get("SCANSERVE_FUZZ_SEED", "7"))
CALLS = int(os.environ.get("SCANSERVE_FUZZ_CALLS", "3000"))  # the sequential phase; each client: a third
CLIENTS = 4
ID_POOL = 32  # ids per kind and client: small enough that writes, reads and deletes meet
MAX_MESSAGE_BYTES = 1 << 20
DEFAULT_TOP_K = 10
MAX_TOP_K = 1000  # the server's default --max-top-k
SERVER = os.environ.get("SCANSERVE_FUZZ_SERVER") or h.SERVER
BACKEND_ARGS = {"cpu": [], "cuda": ["--backend", "cuda", "--storage", "bf16"]}[
    os.environ.get("SCANSERVE_FUZZ_BACKEND", "cpu")]

C = grpc.StatusCode
# Codes that say what the caller did wrong (or that the server is full): the only ones bad input may get.
CALL_CODES = {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.FAILED_PRECONDITION, C.RESOURCE_EXHAUSTED,
              C.ALREADY_EXISTS, C.OUT_OF_RANGE}
ITEM_CODES = {c.value[0] for c in CALL_CODES}

# Each field is drawn from its valid values, and now and then (HOSTILE) from the others.
HOSTILE = 0.07
COLLECTIONS = ["", "", "c1", "c2", "c\u00e9/\u4e2d"]
HOSTILE_COLLECTIONS = ["x" * 300, "a\x00b", "\n"]
META_KEYS = ["tag", "tag", "kind", "k\u00fc"]
HOSTILE_META_KEYS = ["", "m" * 300, "a\x00b"]
META_VALUES = ["a", "b", "", "v\u00e9"]
HOSTILE_META_VALUES = ["w" * 5000]
# The valid ids are each client's ID_POOL per kind; these are the others (some valid, some not).
HOSTILE_IDS = ["", " ", "a" * 256, "a" * 257, "\u00e9\u4e2d/\u00fc", "a\x00b", "../x", "id with spaces", "\n"]
WEIRD_TEXTS = ["", "   ", "!!! ???", "zzqx qqzv", "\u2603 \U0001F600 caf\u00e9", "a\x00b dog", "dog\n\tcat",
               "w" * 5000]


class Model(object):
    """What the store must hold: id -> fields, per kind, from the acknowledged writes."""

    def __init__(self):
        self.images = {}    # id -> dict(collection, metadata, num_regions)
        self.captions = {}  # id -> dict(collection, metadata, text)

    @staticmethod
    def union(models):
        u = Model()
        for m in models:
            u.images.update(m.images)
            u.captions.update(m.captions)
        return u

    def of(self, is_caption):
        return self.captions if is_caption else self.images

    def put_image(self, img):
        """An acknowledged upsert of `img` (a scanserve.v1.Image)."""
        self.images[img.id] = dict(collection=img.collection, metadata=dict(img.metadata),
                                   num_regions=img.region_features.num_regions,
                                   features=(img.region_features.dim, img.region_features.values))

    def put_caption(self, cap):
        """An acknowledged upsert of `cap` (a scanserve.v1.Caption)."""
        self.captions[cap.id] = dict(collection=cap.collection, metadata=dict(cap.metadata), text=cap.text)


class Fuzzer(object):
    """Random calls from one client thread, checked against `model` (the items this client owns: ids
    under `prefix`). With exact=True no other client writes meanwhile, so every answer is checked
    against the whole store; otherwise only what this client owns and the `frozen` models (items
    nobody changes any more) are."""

    def __init__(self, test, server, stub, pb, seed, prefix="", exact=True, frozen=()):
        self.t, self.server, self.stub, self.pb = test, server, stub, pb
        self.rng = np.random.default_rng(seed)
        self.prefix, self.exact = prefix, exact
        self.model, self.frozen = Model(), list(frozen)
        self.codes, self.item_codes, self.page_tokens = {}, {}, []
        # Hostile ids that are valid get the prefix too, so that clients never write each other's ids.
        self.hostile_ids = [i if i in ("", "a" * 257) else prefix + i for i in HOSTILE_IDS]

    def run(self, calls):
        rpcs = [(self.fuzz_upsert_images, 5), (self.fuzz_upsert_captions, 5), (self.fuzz_ingest, 2),
                (self.fuzz_delete, 2), (self.fuzz_update_items, 3), (self.fuzz_search_images, 4),
                (self.fuzz_search_captions, 4), (self.fuzz_get_items, 2), (self.fuzz_list_items, 2),
                (self.fuzz_list_changes, 1), (self.fuzz_snapshot, 0.3), (self.fuzz_get_stats, 0.5)]
        weights = np.array([w for _, w in rpcs], dtype=float)
        weights /= weights.sum()
        for _ in range(calls):
            rpcs[int(self.rng.choice(len(rpcs), p=weights))][0]()

    def known(self, is_caption, i):
        """The model entry for id i where this client can know it exactly (else None), and whether it can."""
        for m in [self.model] + self.frozen:
            if i in m.of(is_caption):
                return m.of(is_caption)[i], True
        # Only another client's ids are unknowable; nobody else writes the ids of the others.
        return None, self.exact or i.startswith(self.prefix) or not re.match(r"t\d+/", i)

    # ---- random pieces ----------------------------------------------------------------------

    def pick(self, values):
        return values[int(self.rng.integers(len(values)))]

    def chance(self, p):
        return self.rng.random() < p

    def mix(self, valid, hostile):
        return self.pick(hostile if self.chance(HOSTILE) else valid)

    def rand_id(self, kind):
        return self.mix(["%s%s%d" % (self.prefix, kind, n) for n in range(ID_POOL)], self.hostile_ids)

    def rand_collection(self):
        return self.mix(COLLECTIONS, HOSTILE_COLLECTIONS)

    def rand_metadata(self):
        return {self.mix(META_KEYS, HOSTILE_META_KEYS): self.mix(META_VALUES, HOSTILE_META_VALUES)
                for _ in range(int(self.rng.integers(0, 3)))}

    def rand_text(self):
        if not self.chance(HOSTILE):
            return " ".join(self.pick(h.WORDS) for _ in range(int(self.rng.integers(1, 12))))
        return self.pick(WEIRD_TEXTS)

    def rand_top_k(self):
        return self.pick([0, 0, 1, 3, 10, 50, -1, MAX_TOP_K, MAX_TOP_K + 1, 2 ** 31 - 1, -2 ** 31])

    def rand_features(self):
        pb, dim = self.pb, h.IMG_DIM
        n = int(self.rng.integers(1, 9))
        x = h.sc.random_region_features(self.rng, n, dim)
        kind = self.pick(["ok"] * 40 + ["nan", "inf", "zero_regions", "negative", "dim", "dim0", "short",
                                        "odd_bytes", "huge_count", "empty"])
        if kind == "nan":
            x[int(self.rng.integers(n)), int(self.rng.integers(dim))] = np.nan
        elif kind == "inf":
            x[int(self.rng.integers(n)), int(self.rng.integers(dim))] = -np.inf
        f = h.features_msg(pb, x)
        if kind == "zero_regions":
            f = pb.RegionFeatures(num_regions=0, dim=dim, values=b"")
        elif kind == "negative":
            f.num_regions = -n
        elif kind == "dim":
            f.dim = dim + 1
        elif kind == "dim0":
            f.dim = 0
        elif kind == "short":
            f.values = f.values[:-4]
        elif kind == "odd_bytes":
            f.values = f.values + b"\x01"
        elif kind == "huge_count":
            f.num_regions = 2 ** 31 - 1
        elif kind == "empty":
            f = pb.RegionFeatures()
        return f, n

    def rand_image(self):
        pb = self.pb
        img = pb.Image(id=self.rand_id("i"), collection=self.rand_collection())
        for k, v in self.rand_metadata().items():
            img.metadata[k] = v
        if self.chance(0.03):
            img.image_bytes = self.rng.bytes(int(self.rng.integers(0, 64)))  # no detector: refused
            return img
        if self.chance(0.02):
            return img  # no content at all
        f, n = self.rand_features()
        img.region_features.CopyFrom(f)
        if self.chance(0.2):
            for _ in range(n + self.pick([0, 0, 0, 1, -1])):
                b = [float(v) for v in self.rng.uniform(0, 500, 4)]
                if self.chance(0.1):
                    b[0] = math.nan
                img.boxes.add(x1=min(b[0], b[2]), y1=min(b[1], b[3]), x2=max(b[0], b[2]), y2=max(b[1], b[3]))
        if self.chance(0.2):
            img.labels.extend(self.pick(["dog", "", "\u00e9", "l" * 300]) for _ in range(n + self.pick([0, 0, 1])))
        return img

    def rand_caption(self):
        cap = self.pb.Caption(id=self.rand_id("c"), collection=self.rand_collection(), text=self.rand_text())
        for k, v in self.rand_metadata().items():
            cap.metadata[k] = v
        return cap

    def rand_filter(self, request):
        if self.chance(0.6):
            return
        request.filter.collection = self.rand_collection()
        for k, v in (self.rand_metadata().items() if self.chance(0.5) else []):
            request.filter.metadata[k] = v

    def count(self):
        return self.mix([1, 1, 1, 2, 3, 5], [0, 64, 65, 1001])

    # ---- calling and checking ---------------------------------------------------------------

    def call(self, method, request):
        """(response or None, code) of a unary call, checked by `outcome`."""
        try:
            return getattr(self.stub, method)(request, timeout=h.RPC_TIMEOUT_S), self.outcome(method, None)
        except grpc.RpcError as e:
            return None, self.outcome(method, e)

    def outcome(self, method, error):
        """The call's code (OK when `error` is None); fails the test on a code bad input must never
        get, an error without a message, or a dead server."""
        code = C.OK if error is None else error.code()
        if error is not None:
            self.t.assertIn(code, CALL_CODES, "%s: %s %s\n%s" % (method, code, error.details(), self.server.log_tail()))
            self.t.assertTrue(error.details(), "%s: %s without a message" % (method, code))
        self.t.assertTrue(self.server.alive(), "%s: the server died\n%s" % (method, self.server.log_tail()))
        self.codes[(method, code.name)] = self.codes.get((method, code.name), 0) + 1
        return code

    def check_item(self, status, what):
        self.t.assertIn(status.code, ITEM_CODES, "%s: item %r: %d %s" % (what, status.id, status.code, status.message))
        if status.code != 0:
            self.t.assertTrue(status.message, "%s: item %r: code %d without a message" % (what, status.id, status.code))
        self.item_codes[status.code] = self.item_codes.get(status.code, 0) + 1
        if os.environ.get("SCANSERVE_FUZZ_DEBUG") and status.code:
            print("ITEM", status.code, status.message[:70], file=sys.stderr)
        return status.code == 0

    @staticmethod
    def matches(item, f):
        if f is None:
            return True
        if f.collection and item["collection"] != f.collection:
            return False
        return all(item["metadata"].get(k) == v for k, v in f.metadata.items())

    def check_hits(self, hits, is_caption, request, what):
        f = request.filter if request.HasField("filter") else None
        k = request.top_k or DEFAULT_TOP_K
        if self.exact:
            matching = sum(1 for it in self.model.of(is_caption).values() if self.matches(it, f))
            self.t.assertEqual(len(hits), min(k, matching), "%s: hits for top_k %d over %d matching items"
                               % (what, k, matching))
        self.t.assertLessEqual(len(hits), k)
        scores = [hit.score for hit in hits]
        self.t.assertTrue(all(math.isfinite(s) for s in scores), "%s: %s" % (what, scores))
        self.t.assertEqual(scores, sorted(scores, reverse=True), what)
        self.t.assertEqual(len({hit.id for hit in hits}), len(hits), "%s: an id twice" % what)
        for hit in hits:
            item, knowable = self.known(is_caption, hit.id)
            if not knowable:
                continue
            self.t.assertIsNotNone(item, "%s: hit %r is not stored" % (what, hit.id))
            self.t.assertTrue(self.matches(item, f), "%s: hit %r outside the filter" % (what, hit.id))
            self.t.assertEqual(hit.collection, item["collection"], what)
            self.t.assertEqual(dict(hit.metadata), item["metadata"], what)
            if is_caption:
                self.t.assertEqual(hit.text, item["text"], what)

    # ---- one random call per RPC ------------------------------------------------------------

    def fuzz_upsert_images(self):
        images = [self.rand_image() for _ in range(self.count() if self.chance(0.3) else 1)]
        if self.chance(0.01):
            # Over the message limit: refused whole.
            big = self.pb.Image(id=self.rand_id("i"), region_features=self.pb.RegionFeatures(
                num_regions=1, dim=MAX_MESSAGE_BYTES // 4 + 16, values=b"\0" * (MAX_MESSAGE_BYTES + 64)))
            images.append(big)
        request = self.pb.UpsertImagesRequest(images=images)
        response, code = self.call("UpsertImages", request)
        if code != C.OK:
            return
        self.t.assertEqual(len(response.results), len(images))
        for img, st in zip(images, response.results):
            self.t.assertEqual(st.id, img.id)
            if self.check_item(st, "UpsertImages"):
                self.model.put_image(img)

    def fuzz_upsert_captions(self):
        captions = [self.rand_caption() for _ in range(self.count() if self.chance(0.3) else 1)]
        request = self.pb.UpsertCaptionsRequest(captions=captions)
        response, code = self.call("UpsertCaptions", request)
        if code != C.OK:
            return
        self.t.assertEqual(len(response.results), len(captions))
        for cap, st in zip(captions, response.results):
            self.t.assertEqual(st.id, cap.id)
            if self.check_item(st, "UpsertCaptions"):
                self.model.put_caption(cap)

    def fuzz_ingest(self):
        items = []
        for _ in range(int(self.rng.integers(0, 6))):
            if self.chance(0.05):
                items.append(self.pb.IngestRequest())  # neither an image nor a caption
            elif self.chance(0.5):
                items.append(self.pb.IngestRequest(image=self.rand_image()))
            else:
                items.append(self.pb.IngestRequest(caption=self.rand_caption()))
        try:
            responses = list(self.stub.Ingest(iter(items), timeout=h.RPC_TIMEOUT_S))
            code = self.outcome("Ingest", None)
        except grpc.RpcError as e:
            responses, code = [], self.outcome("Ingest", e)
        # One result per item, in order, up to where a call-level error stopped the stream.
        self.t.assertLessEqual(len(responses), len(items))
        if code == C.OK:
            self.t.assertEqual(len(responses), len(items))
        for req, resp in zip(items, responses):
            which = req.WhichOneof("item")
            if which is None:
                self.t.assertNotEqual(resp.result.code, 0, "an empty IngestRequest was accepted")
                self.check_item(resp.result, "Ingest")
                continue
            self.t.assertEqual(resp.is_caption, which == "caption")
            self.t.assertEqual(resp.result.id, getattr(req, which).id)
            if self.check_item(resp.result, "Ingest"):
                if which == "caption":
                    self.model.put_caption(req.caption)
                else:
                    self.model.put_image(req.image)

    def fuzz_delete(self):
        request = self.pb.DeleteRequest(image_ids=[self.rand_id("i") for _ in range(self.count() // 2)],
                                        caption_ids=[self.rand_id("c") for _ in range(self.count() // 2)])
        response, code = self.call("Delete", request)
        if code != C.OK:
            return
        for ids, results, items in ((request.image_ids, response.image_results, self.model.images),
                                    (request.caption_ids, response.caption_results, self.model.captions)):
            self.t.assertEqual(len(results), len(ids))
            for i, st in zip(ids, results):
                self.t.assertEqual(st.id, i)
                if self.check_item(st, "Delete"):
                    items.pop(i, None)
                elif st.code == C.NOT_FOUND.value[0]:
                    self.t.assertNotIn(i, items, "Delete: a stored id was NOT_FOUND")

    def rand_update(self, kind):
        u = self.pb.ItemUpdate(id=self.rand_id(kind))
        if self.chance(0.5):
            u.set_collection = True
            u.collection = self.rand_collection()
        for k, v in self.rand_metadata().items():
            u.set_metadata[k] = v
        u.remove_metadata.extend(self.mix(META_KEYS, HOSTILE_META_KEYS) for _ in range(int(self.rng.integers(0, 3))))
        return u

    def fuzz_update_items(self):
        request = self.pb.UpdateItemsRequest(images=[self.rand_update("i") for _ in range(self.count() // 2)],
                                             captions=[self.rand_update("c") for _ in range(self.count() // 2)])
        response, code = self.call("UpdateItems", request)
        if code != C.OK:
            return
        for updates, results, items in ((request.images, response.image_results, self.model.images),
                                        (request.captions, response.caption_results, self.model.captions)):
            self.t.assertEqual(len(results), len(updates))
            for u, st in zip(updates, results):
                self.t.assertEqual(st.id, u.id)
                if not self.check_item(st, "UpdateItems"):
                    continue
                self.t.assertIn(u.id, items, "UpdateItems: OK for an id that is not stored")
                item = items[u.id]
                if u.set_collection:
                    item["collection"] = u.collection
                item["metadata"].update(u.set_metadata)
                for key in u.remove_metadata:
                    item["metadata"].pop(key, None)

    def fuzz_search_images(self):
        n = self.count()
        request = self.pb.SearchImagesRequest(queries=[self.rand_text() for _ in range(n)], top_k=self.rand_top_k(),
                                              explain=self.chance(0.2))
        self.rand_filter(request)
        response, code = self.call("SearchImages", request)
        if code == C.OK:
            self.t.assertEqual(len(response.results), n)
            for r in response.results:
                self.check_hits(r.hits, False, request, "SearchImages")

    def fuzz_search_captions(self):
        queries = []
        for _ in range(self.count()):
            r = self.rng.random()
            if r < 0.5:
                queries.append(self.pb.ImageQuery(image_id=self.rand_id("i")))
            elif r < 0.9:
                queries.append(self.pb.ImageQuery(region_features=self.rand_features()[0]))
            elif r < 0.95:
                queries.append(self.pb.ImageQuery(image_bytes=self.rng.bytes(16)))
            else:
                queries.append(self.pb.ImageQuery())  # no source
        request = self.pb.SearchCaptionsRequest(queries=queries, top_k=self.rand_top_k())
        self.rand_filter(request)
        response, code = self.call("SearchCaptions", request)
        if code == C.OK:
            self.t.assertEqual(len(response.results), len(queries))
            for q in queries:
                if q.WhichOneof("source") == "image_id":
                    self.t.assertIn(q.image_id, self.model.images, "SearchCaptions: OK for an image not stored")
            for r in response.results:
                self.check_hits(r.hits, True, request, "SearchCaptions")

    def fuzz_get_items(self):
        request = self.pb.GetItemsRequest(image_ids=[self.rand_id("i") for _ in range(self.count())],
                                          caption_ids=[self.rand_id("c") for _ in range(self.count())],
                                          include_region_features=self.chance(0.3))
        response, code = self.call("GetItems", request)
        if request.include_region_features and len(request.image_ids) > 32:
            self.t.assertEqual(code, C.INVALID_ARGUMENT, "GetItems of %d images with their features"
                               % len(request.image_ids))
        if code != C.OK:
            return
        self.t.assertEqual(len(response.images), len(request.image_ids))
        self.t.assertEqual(len(response.captions), len(request.caption_ids))
        for i, got in zip(request.image_ids, response.images):
            self.check_stored_image(i, got, "GetItems")
            if i in self.model.images:  # the server keeps the features (--region-features keep)
                self.t.assertTrue(got.has_region_features, "GetItems: image %r" % i)
                f = got.image.region_features
                sent = self.model.images[i]["features"] if request.include_region_features else (0, b"")
                self.t.assertEqual((f.dim, f.values), sent, "GetItems: image %r's features" % i)
        for i, got in zip(request.caption_ids, response.captions):
            self.check_stored_caption(i, got, "GetItems")

    def check_stored_image(self, i, got, what):
        self.check_item(got.status, what)
        if i in self.model.images:
            want = self.model.images[i]
            self.t.assertEqual(got.status.code, 0, "%s: stored image %r: %s" % (what, i, got.status.message))
            self.t.assertEqual((got.image.id, got.image.collection, dict(got.image.metadata), got.num_regions),
                             (i, want["collection"], want["metadata"], want["num_regions"]), what)
        else:
            self.t.assertNotEqual(got.status.code, 0, "%s: image %r was never stored (or was deleted)" % (what, i))

    def check_stored_caption(self, i, got, what):
        self.check_item(got.status, what)
        if i in self.model.captions:
            want = self.model.captions[i]
            self.t.assertEqual(got.status.code, 0, "%s: stored caption %r: %s" % (what, i, got.status.message))
            self.t.assertEqual((got.caption.id, got.caption.collection, dict(got.caption.metadata), got.caption.text),
                             (i, want["collection"], want["metadata"], want["text"]), what)
        else:
            self.t.assertNotEqual(got.status.code, 0, "%s: caption %r was never stored (or was deleted)" % (what, i))

    def fuzz_list_items(self):
        token = self.pick(["", "", "", "garbage", "\u00e9", "AAAA"] + self.page_tokens[-3:])
        request = self.pb.ListItemsRequest(kind=self.mix([1, 2], [0, 7, -1]), collection=self.rand_collection(),
                                           page_size=self.pick([0, 1, 3, 10, 10001, -1, 2 ** 31 - 1]),
                                           page_token=token)
        response, code = self.call("ListItems", request)
        if code != C.OK:
            return
        self.t.assertIn(request.kind, (1, 2), "ListItems: OK for kind %d" % request.kind)
        ids = list(response.ids)
        self.t.assertEqual(ids, sorted(ids, key=lambda s: s.encode()), "ListItems: not in byte order")
        self.t.assertEqual(len(set(ids)), len(ids))
        for i in ids:
            item, knowable = self.known(request.kind == 2, i)
            if knowable:
                self.t.assertIsNotNone(item, "ListItems: %r is not stored" % i)
                if request.collection:
                    self.t.assertEqual(item["collection"], request.collection)
        if response.next_page_token:
            self.page_tokens.append(response.next_page_token)

    def fuzz_list_changes(self):
        after = self.pick([0, 0, 1, 5, 2 ** 64 - 1, int(self.rng.integers(1 << 16))])
        request = self.pb.ListChangesRequest(after_sequence=after,
                                             page_size=self.pick([0, 1, 3, 10, 10001, -1, 2 ** 31 - 1]))
        response, code = self.call("ListChanges", request)
        if code == C.OUT_OF_RANGE and self.exact:  # nobody else writes: the newest sequence stands
            newest = self.stub.GetStats(self.pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S).last_change_sequence
            self.t.assertGreater(after, newest, "ListChanges: OUT_OF_RANGE after %d" % after)
            return
        if code != C.OK:
            self.t.assertIn(code, (C.INVALID_ARGUMENT, C.OUT_OF_RANGE), "ListChanges(%s): %s" % (request, code))
            if code == C.INVALID_ARGUMENT:
                self.t.assertLess(request.page_size, 0, "ListChanges(%s): %s" % (request, code))
            return
        sequences = [c.sequence for c in response.changes]
        self.t.assertEqual(sequences, sorted(set(sequences)), "ListChanges: not in increasing order")
        self.t.assertTrue(all(after < q <= response.last_sequence for q in sequences),
                          "ListChanges after %d: %s (last %d)" % (after, sequences[:5], response.last_sequence))
        self.t.assertTrue(all(c.kind in (1, 2) and c.id and c.unix_micros > 0 for c in response.changes))

    def fuzz_snapshot(self):
        name = self.pick(["", "snap-%d" % int(self.rng.integers(3)), ".hidden", "a/b", "x" * 129, "caf\u00e9"])
        response, code = self.call("CreateSnapshot", self.pb.CreateSnapshotRequest(name=name))
        if code == C.OK and self.exact:
            self.t.assertEqual((response.images, response.captions), (len(self.model.images), len(self.model.captions)))

    def fuzz_get_stats(self):
        response, code = self.call("GetStats", self.pb.GetStatsRequest())
        self.t.assertEqual(code, C.OK)
        if self.exact:
            self.t.assertEqual((response.images, response.captions),
                               (len(self.model.images), len(self.model.captions)))

    # ---- the whole store against the model ---------------------------------------------------

    def list_all(self, kind):
        ids, token = [], ""
        for _ in range(1000):
            response = self.stub.ListItems(self.pb.ListItemsRequest(kind=kind, page_size=7, page_token=token),
                                           timeout=h.RPC_TIMEOUT_S)
            ids.extend(response.ids)
            token = response.next_page_token
            if not token:
                return ids
        self.t.fail("ListItems never reached its last page")

    def check_store_equals_model(self, when):
        """The whole store against self.model (exact: no client writes meanwhile)."""
        self.t.assertEqual(sorted(self.list_all(1)), sorted(self.model.images), "%s: image ids" % when)
        self.t.assertEqual(sorted(self.list_all(2)), sorted(self.model.captions), "%s: caption ids" % when)
        image_ids, caption_ids = sorted(self.model.images), sorted(self.model.captions)
        response = self.stub.GetItems(self.pb.GetItemsRequest(image_ids=image_ids, caption_ids=caption_ids),
                                      timeout=h.RPC_TIMEOUT_S)
        for i, got in zip(image_ids, response.images):
            self.check_stored_image(i, got, when)
        for i, got in zip(caption_ids, response.captions):
            self.check_stored_caption(i, got, when)
        stats = self.stub.GetStats(self.pb.GetStatsRequest(), timeout=h.RPC_TIMEOUT_S)
        self.t.assertEqual((stats.images, stats.captions), (len(image_ids), len(caption_ids)), when)
        # The change log from the start (a fresh store, kept a day): the last change of each id.
        last, after = {}, 0
        while True:
            page = self.stub.ListChanges(self.pb.ListChangesRequest(after_sequence=after, page_size=1000),
                                         timeout=h.RPC_TIMEOUT_S)
            for change in page.changes:
                last[(change.kind, change.id)] = change.deleted
            if len(page.changes) < 1000:
                break
            after = page.changes[-1].sequence
        self.t.assertEqual(page.last_sequence, stats.last_change_sequence, when)
        self.t.assertEqual(sorted(i for (k, i), deleted in last.items() if k == 1 and not deleted), image_ids,
                           "%s: images the change log says are stored" % when)
        self.t.assertEqual(sorted(i for (k, i), deleted in last.items() if k == 2 and not deleted), caption_ids,
                           "%s: captions the change log says are stored" % when)


class ServerFuzzTest(unittest.TestCase):

    def setUp(self):
        h.require_executable(SERVER, "the scanserve server")
        self.tmp = h.make_tmp("scan_fuzz_")
        self.pb, self.pb_grpc = h.generate_stubs(os.path.join(self.tmp, "stubs"))
        self.model_dir = h.make_model(self.tmp, seed=3)
        self.data_dir = os.path.join(self.tmp, "data")
        self.server = None
        self.channels = []
        self.starts = 0
        self.start_server()

    def tearDown(self):
        for channel in self.channels:
            channel.close()
        if self.server is not None:
            self.server.kill()
        h.remove_tmp(self.tmp)

    def start_server(self):
        self.starts += 1
        self.server = h.ServerProcess(
            self.tmp, "scanserve-%d" % self.starts, [self.model_dir], self.data_dir,
            extra=["--max-message-bytes", str(MAX_MESSAGE_BYTES),
                   "--snapshot-dir", os.path.join(self.tmp, "snapshots"),
                   "--region-features", "keep",
                   # Two batches at once in the engine, as the GPU serving benchmark runs it.
                   "--batch-workers", "2"] + BACKEND_ARGS,
            binary=SERVER).start()
        self.server.wait_listening()

    def stub(self):
        """A stub on a channel of its own, connected: every call is then a call, not a connect."""
        channel = grpc.insecure_channel("127.0.0.1:%d" % self.server.port, options=h.CHANNEL_OPTIONS)
        self.channels.append(channel)
        grpc.channel_ready_future(channel).result(timeout=h.START_TIMEOUT_S)
        return self.pb_grpc.ScanServiceStub(channel)

    def fuzzer(self, seed, **kw):
        return Fuzzer(self, self.server, self.stub(), self.pb, seed, **kw)

    @staticmethod
    def summary(name, fuzzers):
        codes, item_codes = {}, {}
        for f in fuzzers:
            for key, n in f.codes.items():
                codes[key] = codes.get(key, 0) + n
            for key, n in f.item_codes.items():
                item_codes[key] = item_codes.get(key, 0) + n
        calls = ", ".join("%s %s: %d" % (m, c, k) for (m, c), k in sorted(codes.items()))
        print("\nfuzz %s: calls: %s; item codes: %s" % (name, calls, dict(sorted(item_codes.items()))),
              file=sys.stderr)
        return item_codes

    def test_random_calls_keep_the_server_up_and_the_store_exact(self):
        # Phase 1: one client, every answer checked against the whole store.
        solo = self.fuzzer(SEED)
        solo.run(CALLS)
        item_codes = self.summary("one client (seed %d, %d calls)" % (SEED, CALLS), [solo])
        # The mix must have reached both outcomes of the writes, or the test says little.
        self.assertGreater(item_codes.get(0, 0), CALLS // 10)
        self.assertGreater(sum(k for c, k in item_codes.items() if c != 0), CALLS // 10)
        self.assertGreater(len(solo.model.images), 0)
        self.assertGreater(len(solo.model.captions), 0)

        # Phase 2: CLIENTS concurrent clients, each writing its own ids (the batcher merges their
        # searches; writers meet in the store); phase 1's items stay as they were.
        clients = [self.fuzzer(SEED * 100 + n, prefix="t%d/" % n, exact=False, frozen=[solo.model])
                   for n in range(CLIENTS)]
        errors = []

        def run(f):
            try:
                f.run(CALLS // 3)
            except Exception as e:  # noqa: BLE001  (re-raised below, with the others)
                errors.append("%s: %s" % (f.prefix, e))

        threads = [threading.Thread(target=run, args=(f,)) for f in clients]
        for th in threads:
            th.start()
        for th in threads:
            th.join(600)
        self.assertFalse(any(th.is_alive() for th in threads), "client threads hung")
        self.assertEqual(errors, [], self.server.log_tail())
        self.summary("%d clients (%d calls each)" % (CLIENTS, CALLS // 3), clients)

        health = urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.server.metrics_port, timeout=10)
        self.assertEqual(health.status, 200)
        everything = Model.union([solo.model] + [f.model for f in clients])
        checker = self.fuzzer(0)
        checker.model = everything
        checker.check_store_equals_model("after the calls")

        # kill -9 and a restart on the same data directory: every acknowledged write is still there.
        self.server.proc.kill()
        self.server.proc.wait()
        self.server.kill()
        self.start_server()
        checker = self.fuzzer(0)
        checker.model = everything
        checker.check_store_equals_model("after kill -9 and a restart")
        print("store: %d images, %d captions, the same after kill -9 and a restart"
              % (len(everything.images), len(everything.captions)), file=sys.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
