"""The result shapes of knowledge-base retrieval and grounded answers, shared by the library, the CLI and the
HTTP service (which declares them as its response schemas)."""

from __future__ import annotations

from terravl.results import Result


class Evidence(Result):
    """One retrieved item, ranked: ``score`` is the final (re-ranked) score, ``relevance`` its best cosine with the
    query, ``retrievers`` its rank and score in each retriever's list that found it."""

    rank: int
    id: int
    kind: str
    score: float
    relevance: float
    retrievers: dict[str, dict[str, float]]
    source: str
    ref: str | None = None
    title: str | None = None
    text: str | None = None
    url: str | None = None
    lon: float | None = None
    lat: float | None = None
    footprint: dict | None = None
    date: str | None = None
    label: str | None = None


class Retrieval(Result):
    """The ranked evidence of one query, the best relevance among all candidates, which retrievers ran and how long
    each step took (milliseconds)."""

    query: str | None = None
    evidence: list[Evidence]
    best_relevance: float
    found: bool
    retrievers: list[str]
    reranked: bool
    timings_ms: dict[str, float]


class KBAnswer(Result):
    """An answer grounded in a knowledge base. ``answer`` cites evidence by number (``[2]``: ``evidence[1]``);
    ``short`` is the bare answer (a class, yes or no) where the question has one; ``found`` is False when nothing
    relevant was retrieved (then ``answer`` says so, with ``best_relevance``); ``image_answer`` is what the VQA
    bridge said about the image alone."""

    question: str
    path: str | None = None
    answer: str
    short: str | None = None
    answered_by: str
    question_type: str
    found: bool
    best_relevance: float
    citations: list[int]
    evidence: list[Evidence]
    image_answer: str | None = None
    image_description: str | None = None

    def to_dict(self) -> dict:
        return self.model_dump()
