"""In-process checks of the registry, the hub module and weights verification (the CLI tests cover the rest)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from hubserver import FakeHub, WeightFiles
from safetensors.torch import save_file

from serpent_cli import create_model
from serpent_cli.errors import UsageError, WeightsError
from serpent_cli.hub.client import HubError, download
from serpent_cli.hub.local import sha256_file
from serpent_cli.hub.registry import load_registry
from serpent_cli.hub.registry import main as registry_main
from serpent_cli.hub.weights import load_model


@pytest.fixture()
def registry_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "registry.json"
    path.write_text("{}")
    monkeypatch.setenv("SERPENT_REGISTRY", str(path))
    monkeypatch.setenv("SERPENT_WEIGHTS_DIR", str(tmp_path / "bundled"))
    (tmp_path / "bundled").mkdir()
    return path


def test_builtin_registry_does_not_pretend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERPENT_REGISTRY", raising=False)
    entries = load_registry()
    assert list(entries) == ["serpent-b", "serpent-l", "serpent-h", "serpent-l-blind"]
    for entry in entries.values():
        assert entry.published is False  # not on the Hub until we upload
        assert entry.filename == "model.safetensors" and entry.repo_id.endswith(entry.name)


def test_registry_overrides_are_validated(registry_file: Path) -> None:
    registry_file.write_text(json.dumps({"serpent-b": {"published": True}, "mine": {"repo_id": "me/mine"}}))
    entries = load_registry()
    assert entries["serpent-b"].published and entries["serpent-b"].repo_id == "serpent-cli/serpent-b"
    assert entries["mine"].filename == "model.safetensors" and entries["mine"].published
    bad = {
        "not json": "{",
        "unknown field": json.dumps({"serpent-b": {"sha": "x"}}),
        "sha256 must be 64 hex": json.dumps({"serpent-b": {"sha256": "abc"}}),
        "needs at least a repo_id": json.dumps({"new": {"revision": "v1"}}),
        "wrong type": json.dumps({"serpent-b": {"published": "yes"}}),
    }
    for needle, text in bad.items():
        registry_file.write_text(text)
        with pytest.raises(UsageError, match=needle if needle != "not json" else "not a readable JSON"):
            load_registry()


def test_pin_lines_for_bundled_weights(
    tmp_path: Path, weight_files: WeightFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "serpent-l.safetensors").write_bytes(weight_files.sl)
    assert registry_main([str(folder)]) == 0
    assert capsys.readouterr().out.strip() == f'"serpent-l": "{weight_files.sha(weight_files.sl)}",'
    assert registry_main([str(tmp_path / "empty")]) == 1


def test_hub_not_found_errors(tmp_path: Path, hub: FakeHub, weight_files: WeightFiles) -> None:
    hub.commit("alice/exists", {"model.safetensors": weight_files.b})
    for kwargs, needle in [
        ({"revision": "v9"}, "revision 'v9' not found"),
        ({"filename": "nope.safetensors"}, "nope.safetensors not found"),
    ]:
        args = {"filename": "model.safetensors", "revision": "main", **kwargs}
        with pytest.raises(HubError, match=needle):
            download("alice/exists", args["filename"], args["revision"], hub_endpoint=hub.url, cache=tmp_path)
    assert hub.count("GET") == 0
    for repo_id, filename in [("bad repo", "model.safetensors"), ("alice/exists", "../model.safetensors")]:
        with pytest.raises(UsageError, match="invalid"):
            download(repo_id, filename, hub_endpoint=hub.url, cache=tmp_path)
    result = download("alice/exists", "model.safetensors", hub_endpoint=hub.url, cache=tmp_path / "c")
    assert result.path.read_bytes() == weight_files.b and not result.verified and not result.from_cache
    forced = download("alice/exists", "model.safetensors", hub_endpoint=hub.url, cache=tmp_path / "c", force=True)
    assert forced.path == result.path and hub.count("GET") == 2  # --force transfers again


def test_pretrained_load_checks_the_pin(registry_file: Path, weight_files: WeightFiles) -> None:
    bundled = Path(registry_file.parent / "bundled" / "serpent-b.safetensors")
    bundled.write_bytes(weight_files.b)
    registry_file.write_text(json.dumps({"serpent-b": {"sha256": weight_files.sha(weight_files.b)}}))
    model = create_model("serpent-b", pretrained=True)
    assert model.config.name == "serpent-b"

    # The same path via --weights is recognised as the registered file and verified too.
    assert load_model(bundled).config.name == "serpent-b"

    bundled.write_bytes(weight_files.b2)  # a valid file, but not the registered one
    with pytest.raises(WeightsError, match="does not match the registered serpent-b"):
        create_model("serpent-b", pretrained=True)
    with pytest.raises(WeightsError, match="does not match the registered"):
        load_model(bundled)

    bundled.write_bytes(weight_files.b[: len(weight_files.b) // 2])  # truncated
    with pytest.raises(WeightsError, match="corrupt, truncated or replaced"):
        create_model("serpent-b", pretrained=True)

    bundled.unlink()
    with pytest.raises(WeightsError, match="not published on the Hub yet"):
        create_model("serpent-b", pretrained=True)


def test_wrong_files_are_one_clear_error_and_no_pickle_is_loaded(
    tmp_path: Path, weight_files: WeightFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)

    files = {}
    files["pickle"] = tmp_path / "pickled.safetensors"
    buffer = tmp_path / "real.pt"
    torch.save(create_model("unet-32").state_dict(), buffer)  # torch's zip+pickle format
    files["pickle"].write_bytes(buffer.read_bytes())
    files["plain-pickle"] = tmp_path / "plain.safetensors"
    files["plain-pickle"].write_bytes(pickle.dumps({"w": [1.0]}, protocol=2))
    files["foreign"] = tmp_path / "unet.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("unet-32").state_dict().items()}, files["foreign"])
    files["truncated"] = tmp_path / "truncated.safetensors"
    files["truncated"].write_bytes(weight_files.b[:-1000])
    files["empty"] = tmp_path / "empty.safetensors"
    files["empty"].write_bytes(b"")
    # serpent metadata on top of another architecture's tensors
    header_len = int.from_bytes(weight_files.b[:8], "little")
    meta = json.loads(weight_files.b[8 : 8 + header_len])["__metadata__"]
    files["mixed"] = tmp_path / "mixed.safetensors"
    save_file({"conv.weight": torch.zeros(3, 3)}, files["mixed"], metadata=meta)

    expected = {
        "pickle": "not a safetensors file",
        "plain-pickle": "not a safetensors file",
        "foreign": "not a serpent weights file",
        "truncated": "not a safetensors file|truncated or corrupt",
        "empty": "not a safetensors file",
        "mixed": "another architecture",
    }
    for key, path in files.items():
        with pytest.raises(WeightsError, match=expected[key]):
            load_model(path)
    with pytest.raises(WeightsError, match="holds a serpent-l"):
        create_model("serpent-b", weights=weight_files.l_path)
    assert sha256_file(weight_files.b_path) == weight_files.sha(weight_files.b)
