"""Splitting, dedupe and chat rows (04), and task folder loading."""
from __future__ import annotations

from collections import Counter

import pytest

from distill import dataset as D
from distill.answers import drop_reasoning_block
from distill.io import StageError
from distill.tasks import list_tasks, load_task


def test_parse_split():
    assert D.parse_split("0.8,0.1,0.1") == {"train": 0.8, "val": 0.1, "test": 0.1}
    assert D.parse_split("0.9,0.1") == {"train": 0.9, "val": 0.0, "test": 0.1}
    for bad in ("0.8,0.3", "a,b", "0.5,0.6,-0.1"):
        with pytest.raises(StageError):
            D.parse_split(bad)


def rows(n_sources, per=2, styles=("a", "b", "c")):
    return [{"id": f"{s}-{k}", "source_id": f"s{s}", "style": styles[(s + k) % len(styles)], "text": f"t{s}{k}"}
            for s in range(n_sources) for k in range(per)]


def test_splits_are_grouped_by_source_and_proportional():
    rs = rows(100)
    a = D.assign_splits(rs, D.parse_split("0.8,0.1,0.1"), seed=1)
    assert Counter(a.values()) == {"train": 80, "val": 10, "test": 10}
    assert set(a) == {r["source_id"] for r in rs}   # one split per source record


def test_splits_are_stratified_and_seeded():
    rs = [{"id": str(i), "source_id": f"s{i}", "style": "rare" if i < 10 else "common"} for i in range(100)]
    a = D.assign_splits(rs, D.parse_split("0.8,0.1,0.1"), seed=3)
    rare = Counter(a[f"s{i}"] for i in range(10))
    assert rare == {"train": 8, "val": 1, "test": 1}
    assert a == D.assign_splits(rs, D.parse_split("0.8,0.1,0.1"), seed=3)
    assert a != D.assign_splits(rs, D.parse_split("0.8,0.1,0.1"), seed=4)


def test_dedupe_drops_near_duplicates_only():
    base = "Grandma's banana bread. 3 bananas, 1/3 cup butter, 1 1/2 cups flour. Bake 1 hour at 350F. " * 3
    rs = [{"id": "a", "text": base}, {"id": "b", "text": base.replace("Bake", "bake")},
          {"id": "c", "text": base + " Also great toasted!"}, {"id": "d", "text": "Completely different soup recipe."}]
    keep, dropped = D.dedupe(rs, threshold=95)
    assert [r["id"] for r in keep] == ["a", "d"]
    assert {r["id"]: r["duplicate_of"] for r in dropped} == {"b": "a", "c": "a"}


def test_dedupe_past_the_exact_limit_finds_the_same_pairs_through_lsh(monkeypatch):
    """Above EXACT_DEDUPE_MAX rows, candidates come from MinHash LSH and are checked with the same
    ratio: on near-duplicates a few characters apart it drops exactly what the all-pairs rule drops."""
    import random
    import string

    rng = random.Random(3)
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8))) for _ in range(400)]
    rows = []
    for i in range(60):
        if i % 4 == 3:   # a copy of an earlier post with a few characters changed
            t = list(rows[rng.randrange(len(rows))]["text"])
            for _ in range(len(t) // 100):
                t[rng.randrange(len(t))] = rng.choice(string.ascii_lowercase)
            rows.append({"id": f"r{i}", "text": "".join(t)})
        else:
            rows.append({"id": f"r{i}", "text": " ".join(rng.choice(words) for _ in range(120))})
    exact = D.dedupe(rows, threshold=95)
    monkeypatch.setattr(D, "EXACT_DEDUPE_MAX", 0)
    lsh = D.dedupe(rows, threshold=95)
    assert len(exact[1]) >= 10
    assert [r["id"] for r in lsh[0]] == [r["id"] for r in exact[0]]
    assert {r["id"]: r["duplicate_of"] for r in lsh[1]} == {r["id"]: r["duplicate_of"] for r in exact[1]}


def framed_posts(*, seed: int, n: int, copy_every: int, vocabulary: int, words: int, frame: str, end: str) -> list[dict]:
    """Posts of one style: one frame around a few random words; every ``copy_every``-th is a copy of an
    earlier post with one character changed (ids r<i>, copies at i % copy_every == copy_every - 1)."""
    import random
    import string

    rng = random.Random(seed)
    vocab = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8))) for _ in range(vocabulary)]
    rows = []
    for i in range(n):
        if i % copy_every == copy_every - 1:
            t = list(rows[rng.randrange(len(rows))]["text"])
            t[rng.randrange(len(t))] = "#"
            rows.append({"id": f"r{i}", "text": "".join(t)})
        else:
            rows.append({"id": f"r{i}", "text": frame + " ".join(rng.choice(vocab) for _ in range(words)) + end})
    return rows


def test_dedupe_compares_a_bounded_number_of_candidates_on_posts_that_share_a_frame(monkeypatch):
    """Posts of one style share their boilerplate, so LSH proposes many of them for every post: only
    the _MAX_COMPARE most similar are compared (the work per post stays bounded) and the copies are
    still found."""
    from rapidfuzz import process

    rows = framed_posts(seed=5, n=200, copy_every=10, vocabulary=60, words=12,
                        frame="written as a typical recipe blog post, a long personal story first, tips and substitutions: ",
                        end=". Enjoy!")
    sizes = []
    real = process.extractOne

    def counting(query, choices, **kw):
        sizes.append(len(choices))
        return real(query, choices, **kw)

    monkeypatch.setattr(process, "extractOne", counting)
    monkeypatch.setattr(D, "EXACT_DEDUPE_MAX", 0)
    monkeypatch.setattr(D, "_MAX_COMPARE", 8)
    keep, dropped = D.dedupe(rows, threshold=95)
    assert max(sizes) == 8, "LSH proposed more than 8 framed posts for some post, and only 8 were compared"
    assert {r["id"] for r in dropped} == {f"r{i}" for i in range(9, 200, 10)}


def test_band_values_shared_by_a_whole_style_are_skipped_and_copies_still_found(monkeypatch):
    """Kept posts are not near-duplicates of one another, so a band value more than _BUCKET_MAX of them
    share comes from a frame: it proposes nothing (the candidates per post stay bounded at any N), and
    the copies, which also agree on bands of their own words, are still dropped."""
    rows = framed_posts(seed=7, n=400, copy_every=20, vocabulary=80, words=10,
                        frame=("written as a typical recipe blog post, a long personal story first, then the tips and "
                               "the substitutions you need, and at the very end the recipe card itself: "), end=".")
    queried = []
    real_query = D.BandIndex.query

    def counting(self, keys):
        out = real_query(self, keys)
        queried.append((len(out), max((len(t.get(k, ())) for t, k in zip(self.tables, keys)), default=0)))
        return out

    monkeypatch.setattr(D.BandIndex, "query", counting)
    monkeypatch.setattr(D, "EXACT_DEDUPE_MAX", 0)
    monkeypatch.setattr(D, "_BUCKET_MAX", 16)
    keep, dropped = D.dedupe(rows, threshold=95)
    assert max(b for _, b in queried) > 16, "no band value was shared by more than 16 kept posts: the test shows nothing"
    assert max(n for n, _ in queried) <= 16 * D._BANDS
    assert {r["id"] for r in dropped} == {f"r{i}" for i in range(19, 400, 20)}


def test_signatures_made_in_worker_processes_equal_those_made_here(monkeypatch):
    texts = [f"post {i}: " + "pancakes with maple syrup and a pinch of salt " * (1 + i % 5) for i in range(50)]
    monkeypatch.setattr(D, "_SIGN_CHUNK", 7)
    here_norms, here = D.sign_texts(texts)
    monkeypatch.setattr(D, "PARALLEL_SIGN_MIN", 10)
    monkeypatch.setattr(D, "usable_cores", lambda: 2)  # 2 workers on any machine
    norms, sigs = D.sign_texts(texts)
    assert norms == here_norms and sigs.shape == (50, D._NUM_PERM) and (sigs == here).all()


def test_assistant_content_keep_and_strip():
    lab = {"name": "x"}
    kept = D.assistant_content(lab, "because", keep_reasoning=True)
    assert kept == '<think>\nbecause\n</think>\n\n{"name": "x"}'
    assert drop_reasoning_block(kept) == '{"name": "x"}'  # 07 and --reasoning strip read it back
    assert D.assistant_content(lab, "because", keep_reasoning=False) == '{"name": "x"}'
    assert D.assistant_content(lab, None, keep_reasoning=True) == '{"name": "x"}'


def test_every_shipped_task_loads():
    assert "recipe" in list_tasks()
    for name in list_tasks():
        t = load_task(name)
        assert t.student_messages("hello")[1]["content"].endswith("hello")
        assert t.fields


def test_unknown_task_key_is_an_error(tmp_path):
    src = load_task("recipe").dir
    dst = tmp_path / "mytask"
    dst.mkdir()
    for p in ("schema.json",):
        (dst / p).write_text((src / p).read_text())
    (dst / "prompts").mkdir()
    (dst / "prompts" / "s.md").write_text("Extract.")
    (dst / "task.yaml").write_text(
        "name: mytask\ndescription: d\nschema: schema.json\nstudent: {system_prompt: prompts/s.md, user_template: '{text}'}\n"
        "fields: {name: {score: text}}\nstyels: []\n")
    with pytest.raises(StageError, match="unknown key.*styels"):
        load_task(dst)
    (dst / "task.yaml").write_text(
        "name: mytask\ndescription: d\nschema: schema.json\nstudent: {system_prompt: prompts/s.md, user_template: '{text}'}\n"
        "fields: {name: {score: fuzzy}}\n")
    with pytest.raises(StageError, match="score"):
        load_task(dst)


def test_unknown_task_name_lists_installed():
    with pytest.raises(StageError, match="recipe"):
        load_task("no-such-task")
