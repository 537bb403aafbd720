"""Hybrid search (issue 13): keyword and vector rankings fused, the keyword side weighed by
how much of the query its best match covers, each side's rank reported, a reranking hook."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import VectorDB
from embeddable_db import EmbeddingError, HybridHit, InvalidInputError
from embeddable_db.fusion import candidates, fuse


class MeaningEncoder:
    """A fake model that knows what texts mean: each text's vector is the sum of the vectors
    of the concepts it is about, so a paraphrase lands near its answer with no word in common."""

    model_name = "fake:meaning"
    CONCEPTS = ["folder", "delete", "network", "timeout", "math", "date", "noise", "cat"]
    WORDS = {
        "directory": "folder", "folder": "folder", "tree": "folder",
        "remove": "delete", "wipe": "delete", "rmtree": "delete", "erase": "delete",
        "socket": "network", "connection": "network", "http": "network",
        "timeout": "timeout", "slow": "timeout", "waiting": "timeout", "expired": "timeout",
        "sqrt": "math", "root": "math", "square": "math",
        "calendar": "date", "leap": "date", "february": "date",
        "kitten": "cat", "cat": "cat",
    }

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts, batch_size=None):
        self.calls += 1
        out = np.zeros((len(texts), len(self.CONCEPTS)), np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace("_", " ").split():
                concept = self.WORDS.get(word.strip(".,:()"))
                if concept is not None:  # other words carry no meaning here
                    out[row, self.CONCEPTS.index(concept)] += 1.0
            if not out[row].any():
                out[row, self.CONCEPTS.index("noise")] = 1.0
            out[row] /= np.linalg.norm(out[row])
        return out


DOCS = {
    "shutil.rmtree": "shutil.rmtree: remove a directory tree",
    "os.rmdir": "os.rmdir: remove an empty directory",
    "socket.timeout": "socket.timeout: the connection is slow, waiting expired",
    "TimeoutExpired": "subprocess.TimeoutExpired: raised when a timeout expired",
    "math.isqrt": "math.isqrt: square root of an integer",
    "calendar.isleap": "calendar.isleap: is it a leap year in the calendar",
    "cats": "my kitten and my cat sleep all day",
    "filler1": "please read this page quickly, please",
    "filler2": "quickly now, please",
}


@pytest.fixture
def docs(make_notes):
    encoder = MeaningEncoder()
    db = make_notes(encoder=encoder)
    db.add_embeddings([(rid, {"body": text}, "doc") for rid, text in DOCS.items()])
    return db, encoder


def ids(hits):
    return [hit[0] for hit in hits]


def test_hits_are_named_tuples_with_each_sides_rank(docs):
    db, _ = docs
    hits = db.search_hybrid("TimeoutExpired", 5)
    assert all(isinstance(hit, HybridHit) for hit in hits)
    first = hits[0]
    assert first.record_id == first[0] == "TimeoutExpired"
    assert first._fields == ("record_id", "score", "distance", "vector_rank", "keyword_rank")
    vector = ids(db.search_by_text("TimeoutExpired", 100))
    keyword = ids(db.search_by_keyword("TimeoutExpired", 100))
    for hit in hits:
        assert hit.vector_rank == (vector.index(hit.record_id) + 1 if hit.record_id in vector else None)
        assert hit.keyword_rank == (keyword.index(hit.record_id) + 1 if hit.record_id in keyword else None)
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)


def test_a_literal_query_is_led_by_its_words(docs):
    db, _ = docs
    # The vector side cannot tell the two timeouts apart; the rare word can.
    assert ids(db.search_hybrid("TimeoutExpired", 3))[0] == "TimeoutExpired"
    assert ids(db.search_hybrid("rmtree", 3))[0] == "shutil.rmtree"


def test_a_paraphrase_follows_the_vectors_when_its_words_match_noise(docs):
    db, _ = docs
    query = "erase a folder quickly please"  # its only words in the store are filler
    vector_first = ids(db.search_by_text(query, 3))
    assert ids(db.search_by_keyword(query, 3))[0].startswith("filler")
    assert set(ids(db.search_hybrid(query, 3))[:2]) == set(vector_first[:2]) == {
        "shutil.rmtree", "os.rmdir"}
    # Plain equal-weight RRF lets the noise in, and pushes the best answer out of the top 3.
    plain = ids(db.search_hybrid(query, 3, adaptive=False, rrf_k=60))
    assert any(rid.startswith("filler") for rid in plain) and "os.rmdir" not in plain


def test_plain_rrf_is_the_textbook_formula(docs):
    db, _ = docs
    query = "remove a directory that is slow"
    vector = db.search_by_text(query, 100)
    keyword = db.search_by_keyword(query, 100)
    expected = {}
    for side, weight in ((vector, 1.0), (keyword, 0.5)):
        for rank, (rid, _) in enumerate(side, 1):
            expected[rid] = expected.get(rid, 0.0) + weight / (60 + rank)
    hits = db.search_hybrid(query, 4, adaptive=False, rrf_k=60, weights=(0.5, 1.0))
    assert ids(hits) == sorted(expected, key=lambda r: (-expected[r], r))[:4]
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.record_id])


def test_every_hit_has_its_cosine_distance(docs):
    db, encoder = docs
    query = "TimeoutExpired raised"
    q = encoder.encode([query])[0]
    for hit in db.search_hybrid(query, 9):
        stored = np.asarray(db.get_vector(hit.record_id))
        assert hit.distance == pytest.approx(1 - float(stored @ q), abs=1e-5)


def test_one_model_call_and_filters(docs):
    db, encoder = docs
    calls = encoder.calls
    db.search_hybrid("remove a directory", 3)
    assert encoder.calls == calls + 1
    within = ["os.rmdir", "cats", "filler1"]
    hits = db.search_hybrid("remove a directory", 3, ids=within)
    assert ids(hits)[0] == "os.rmdir" and set(ids(hits)) <= set(within)
    db.add_embedding("kitten-dir", {"body": "remove the kitten directory"}, "pet")
    assert ids(db.search_hybrid("remove a directory", 5, kind="pet")) == ["kitten-dir"]


class LengthReranker:
    """Prefers longer texts: an order no search would give."""

    def __init__(self) -> None:
        self.seen = []

    def rank(self, query, texts):
        self.seen.append((query, list(texts)))
        return [float(len(t)) for t in texts]


def test_a_reranker_reorders_the_best_candidates(docs):
    db, _ = docs
    reranker = LengthReranker()
    hits = db.search_hybrid("remove a directory", 3, reranker=reranker, rerank_candidates=9)
    query, texts = reranker.seen[0]
    assert query == "remove a directory" and len(texts) == 9
    longest = sorted(DOCS, key=lambda r: (-len(DOCS[r]), list(DOCS).index(r)))
    assert ids(hits) == longest[:3]
    assert [hit.score for hit in hits] == [float(len(DOCS[r])) for r in longest[:3]]


@pytest.mark.parametrize(
    ("reranker", "message"),
    [
        (object(), "rank\\(query, texts\\)"),
        (type("Short", (), {"rank": lambda self, q, t: [1.0]})(), "returned 1 scores"),
        (type("NaN", (), {"rank": lambda self, q, t: [math.nan] * len(t)})(), "finite number"),
    ],
)
def test_a_bad_reranker_is_named(docs, reranker, message):
    db, _ = docs
    with pytest.raises(EmbeddingError, match=message):
        db.search_hybrid("remove", 3, reranker=reranker)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"weights": (1.0,)}, "weights must be"),
        ({"weights": (0, 0)}, "not both 0"),
        ({"weights": (-1, 1)}, "weights must be"),
        ({"weights": (math.inf, 1)}, "weights must be"),
        ({"weights": "1,1"}, "weights must be"),
        ({"rrf_k": -1}, "rrf_k must be"),
        ({"rrf_k": "60"}, "rrf_k must be"),
        ({"adaptive": 1}, "adaptive must be"),
        ({"top_k": 0}, "top_k"),
        ({"rerank_candidates": 0}, "rerank_candidates"),
        ({"ids": "ab"}, "ids must be a list"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_runs(docs, arguments, message):
    db, encoder = docs
    calls = encoder.calls
    with pytest.raises(InvalidInputError, match=message):
        db.search_hybrid("remove", **arguments)
    assert encoder.calls == calls


@pytest.mark.parametrize("query", ["", "   ", None, 12])
def test_an_empty_or_non_text_query_is_refused(docs, query):
    db, _ = docs
    with pytest.raises(InvalidInputError, match="keyword query"):
        db.search_hybrid(query)


def test_hostile_text_is_just_words(docs):
    db, _ = docs
    for query in ['"unbalanced', "NOT AND OR", "rm* -rf :(", "C++ (x", "🙂", "NEAR(a b)"]:
        hits = db.search_hybrid(query, 3)
        assert len(hits) == 3


def test_a_store_without_text_names_embedding_text(tmp_path):
    db = VectorDB(str(tmp_path / "v.db"))
    db.add_embedding("a", {"vec": [1.0, 0.0]}, "item")
    with pytest.raises(EmbeddingError, match="embedding_text"):
        db.search_hybrid("anything")
    db.close()


def test_candidates_suffice_for_any_weights():
    # A record beyond depth D on both sides cannot beat the heavier side's k-th record.
    for top_k in (1, 10, 50):
        for rrf_k in (0, 10, 60):
            depth = candidates(top_k, rrf_k)
            for w_k, w_v in ((1, 1), (3, 1), (0.1, 1), (1, 0)):
                outside = (w_k + w_v) / (rrf_k + depth + 1)
                assert outside <= max(w_k, w_v) / (rrf_k + top_k)


def test_fuse_breaks_ties_by_record_id():
    fused = fuse([("b", 0.1), ("a", 0.2)], [("a", 1.0), ("b", 0.5)], (1.0, 1.0), 60)
    assert [hit[0] for hit in fused] == ["a", "b"]
    assert fused[0][2:] == (2, 1) and fused[1][2:] == (1, 2)


def test_idf_of_a_word_counted_in_more_records_than_the_view_holds():
    # Other writers can make FTS5 count a word in more rows than this connection's view has.
    from embeddable_db.engine.sqlite.keyword_query import bm25_idf

    assert bm25_idf(10, 25) == pytest.approx(1e-6)
    assert bm25_idf(0, 0) > 0


def test_coverage_from_a_score_already_found_is_the_coverage_searched_again(docs):
    """Fusing several stores passes the best keyword score it already has (no second search);
    that must weigh the keyword side exactly as searching again would."""
    docs, _ = docs
    for query in ("remove directory", "timeout expired connection", "please cat"):
        best = docs.search_by_keyword(query, 1)[0][1]
        assert docs.keyword_coverage(query, best) == docs.keyword_coverage(query)
    filtered = docs.search_by_keyword("remove directory", 1, ids=["os.rmdir"])[0][1]
    assert docs.keyword_coverage("remove directory", filtered) <= docs.keyword_coverage(
        "remove directory")
