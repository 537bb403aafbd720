"""Checks of the retrieval evaluation set in benchmarks/eval/ and its scorer (issue 13).

No model is loaded: the vector side is only exercised by ``score.py`` itself.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "eval"))

from corpus import build_corpus  # noqa: E402
from queries import check_queries, load_queries, overlap  # noqa: E402
from score import KeywordSearch, hit_at_k, mrr_at_k, ndcg_at_k, rrf, score  # noqa: E402


@pytest.fixture(scope="module")
def corpus():
    return build_corpus()


def test_corpus_is_large_deterministic_and_named_by_dotted_ids(corpus):
    ids = [doc_id for doc_id, _ in corpus]
    assert len(corpus) >= 5000
    assert ids == sorted(set(ids))
    assert build_corpus()[:50] == corpus[:50]
    texts = dict(corpus)
    assert texts["json.dumps"].startswith("json.dumps: Serialize ``obj``")
    assert "posixpath.join" in texts and "collections.OrderedDict.move_to_end" in texts


def test_the_queries_file_passes_its_checks_and_has_both_kinds(corpus):
    queries = load_queries()
    check_queries(queries, {doc_id for doc_id, _ in corpus})
    kinds = [q["kind"] for q in queries]
    assert len(queries) >= 100 and kinds.count("paraphrase") >= 50 and kinds.count("literal") >= 50


def test_a_missing_answer_or_kind_is_refused():
    with pytest.raises(ValueError, match="'nope.nothing' is not in the corpus"):
        check_queries([{"query": "x", "kind": "literal", "answers": ["nope.nothing"]}], {"json"})
    with pytest.raises(ValueError, match="needs query, kind"):
        check_queries([{"query": "x", "kind": "fuzzy", "answers": ["json"]}], {"json"})


def test_metrics_on_hand_made_rankings():
    ranked = ["a", "b", "c"]
    assert hit_at_k(ranked, {"c"}) == 1.0 and hit_at_k(ranked, {"z"}) == 0.0
    assert mrr_at_k(ranked, {"b", "c"}) == 0.5
    assert hit_at_k(ranked, {"c"}, k=2) == 0.0
    assert ndcg_at_k(ranked, {"a"}) == 1.0
    assert math.isclose(ndcg_at_k(ranked, {"b"}), 1 / math.log2(3))
    assert math.isclose(ndcg_at_k(["b", "x", "a"], {"a", "b"}), (1 + 0.5) / (1 + 1 / math.log2(3)))
    queries = [{"query": "q1", "kind": "literal", "answers": ["a"]},
               {"query": "q2", "kind": "paraphrase", "answers": ["z"]}]
    result = score({"q1": ranked, "q2": ranked}, queries)
    assert result["literal"]["hit@10"] == 1.0 and result["paraphrase"]["MRR@10"] == 0.0
    assert result["overall"]["hit@10"] == 0.5


def test_rrf_favours_documents_both_lists_agree_on():
    assert rrf([["a", "b"], ["b", "c"]])[0] == "b"
    assert rrf([["a", "b"], ["b", "a"]], weights=[2.0, 1.0])[0] == "a"


def test_keyword_search_finds_a_rare_word_and_takes_any_text_as_data(corpus):
    search = KeywordSearch(corpus)
    assert search("logrotate", 5)[0] == "logging.handlers.WatchedFileHandler"
    for hostile in ['"', "NEAR(a b", "a OR", "') ; DROP TABLE docs; --", "*", "", "^col:x"]:
        assert isinstance(search(hostile, 5), list)
    assert search("logrotate", 1) == ["logging.handlers.WatchedFileHandler"]


def test_overlap_counts_content_words_only():
    assert overlap("the folders", "remove a folder") == 1.0
    assert overlap("wipe out a folder", "Recursively delete a directory tree") == 0.0
