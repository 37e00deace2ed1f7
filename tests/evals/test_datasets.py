"""Datasets: shipped test sets with checksums, field mapping, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest

from ttc.evals import datasets
from ttc.evals.datasets import DatasetConfig, dataset_config, load_problems, read_jsonl
from ttc.registry import ConfigError

EXPECTED = {"gsm8k": (1319, "18"), "math500": (500, None), "aime24": (30, "204"),
            "aime25": (30, "70"), "amc23": (40, "27")}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_sets_load_with_gold_answers(name):
    import yaml
    from ttc.compose import CONF_DIR

    cfg = yaml.safe_load((CONF_DIR / "dataset" / f"{name}.yaml").read_text())
    problems = load_problems(cfg)
    count, first_answer = EXPECTED[name]
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    assert all(p.answer for p in problems)
    if first_answer is not None:
        assert problems[0].answer == first_answer


def test_aime25_suffix_is_stripped_and_math500_keeps_metadata():
    aime = load_problems({"name": "aime25", "question_field": "prompt",
                          "strip_suffix": "\nPlease reason step by step, and put your final "
                                          "answer within \\boxed{}."})
    assert not any("Please reason step by step" in p.question for p in aime)
    math = load_problems({"name": "math500", "question_field": "problem",
                          "id_field": "unique_id", "metadata_fields": ["level", "subject"]},
                         limit=5)
    assert len(math) == 5 and math[0].metadata["level"] in range(1, 6)
    assert math[0].id == "test/precalculus/807.json"


def test_manifest_checksums_are_checked(tmp_path, monkeypatch):
    copy = tmp_path / "data"
    shutil.copytree(datasets.DATA_DIR, copy)
    path = copy / "amc23" / "test.jsonl"
    path.write_bytes(path.read_bytes().replace(b"27.0", b"28.0", 1))
    monkeypatch.setattr(datasets, "DATA_DIR", copy)
    with pytest.raises(ConfigError, match="fails its checksum"):
        load_problems({"name": "amc23", "question_field": "problem"})


def test_gsm8k_train_is_not_shipped():
    assert not (datasets.DATA_DIR / "gsm8k" / "train.jsonl").exists()
    assert set(datasets.manifest()) == set(EXPECTED)


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": \n')
    with pytest.raises(ConfigError, match=rf"{path}:3: malformed JSON line"):
        read_jsonl(path)
    with pytest.raises(ConfigError, match=r"bad.jsonl:3"):
        load_problems({"name": "x", "source": "file", "path": str(path)})


def test_local_files_with_field_mapping(tmp_path):
    rows = [{"q": f"What is {i}+1?", "a": i + 1, "key": f"k{i}"} for i in range(4)]
    jl = tmp_path / "p.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    js = tmp_path / "p.json"
    js.write_text(json.dumps({"data": rows}))
    pq = tmp_path / "p.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq_mod

    pq_mod.write_table(pa.Table.from_pylist(rows), pq)
    for path in (jl, js, pq):
        problems = load_problems({"name": "mine", "source": "file", "path": str(path),
                                  "question_field": "q", "answer_field": "a",
                                  "id_field": "key"})
        assert [p.id for p in problems] == ["k0", "k1", "k2", "k3"]
        assert problems[2].answer == "3" and problems[2].question == "What is 2+1?"


def test_bad_inputs_give_one_clear_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="has no problems"):
        load_problems({"name": "e", "source": "file", "path": str(empty)})
    with pytest.raises(ConfigError, match="unknown dataset 'gsm9k'; available by name: .*gsm8k"):
        dataset_config("gsm9k")
    with pytest.raises(ConfigError, match="unknown builtin dataset 'gsm9k'"):
        dataset_config({"name": "gsm9k"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_problems({"name": "m", "source": "file", "path": str(tmp_path / "nope.jsonl")})
    wrong = tmp_path / "w.jsonl"
    wrong.write_text('{"problem": "x", "answer": 1}\n')
    with pytest.raises(ConfigError, match="has no field 'question'"):
        load_problems({"name": "w", "source": "file", "path": str(wrong)})
    dup = tmp_path / "d.jsonl"
    dup.write_text('{"question": "x", "answer": 1, "id": 1}\n{"question": "y", "answer": 2, "id": 1}\n')
    with pytest.raises(ConfigError, match="share the id '1'"):
        load_problems({"name": "d", "source": "file", "path": str(dup), "id_field": "id"})


def test_simulated_sets_follow_their_difficulty_range():
    problems = load_problems(DatasetConfig(name="s", source="simulated", n=50,
                                           difficulty=(0.6, 0.9), seed=3))
    assert len(problems) == 50
    assert all(0.6 <= p.metadata["difficulty"] <= 0.9 for p in problems)


def test_every_dataset_yaml_holds_exactly_the_schema_fields():
    import yaml
    from ttc.compose import CONF_DIR

    paths = sorted((CONF_DIR / "dataset").glob("*.yaml"))
    assert {p.stem for p in paths} >= {*EXPECTED, "sim_easy", "sim_mixed", "sim_hard"}
    for path in paths:
        data = yaml.safe_load(path.read_text())
        assert set(data) == set(DatasetConfig.model_fields), path
        assert data["name"] == path.stem
        dataset_config(data)


@pytest.mark.parametrize("source,size", [("countdown", 4), ("arithmetic_chain", 3)])
def test_generated_task_sets_have_exact_step_checks(source, size):
    from ttc.evals.tasks import reference_steps
    from ttc.verifiers.programmatic import check_steps_exact

    problems = load_problems({"name": source, "source": source, "n": 5, "seed": 2,
                              "task_size": size})
    assert [p.id for p in problems] == [f"{source}-2-{i}" for i in range(5)]
    assert len({p.question for p in problems}) == 5
    for p in problems:
        assert p.metadata["task"] == source
        steps = reference_steps(p)
        assert all(check_steps_exact(p, steps))
        assert not all(check_steps_exact(p, ["1 + 1 = 3\n\n", *steps]))
    again = load_problems({"name": source, "source": source, "n": 5, "seed": 2,
                           "task_size": size})
    assert again == problems


def test_every_dataset_the_cli_names_loads_by_name_in_python():
    """``load_problems(NAME)`` loads what ``ttc eval dataset=NAME`` does (same settings)."""
    from ttc.compose import compose_eval
    from ttc.evals.runner import split_config

    for name in ("sim_hard", "arithmetic_chain", "countdown", "gsm8k", "amc23"):
        by_name = load_problems(name, limit=5)
        _, settings = split_config(compose_eval([f"dataset={name}"]))
        assert by_name == load_problems(settings.dataset, limit=5), name
