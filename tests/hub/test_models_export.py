"""`serpent models --json` and `serpent export`, run as real subprocesses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from hubserver import FakeHub, WeightFiles
from huggingface_hub import ModelCard


def run(cmd: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=60)


def test_models_json_says_where_each_model_is(
    serpent_cmd: list[str], hub: FakeHub, hub_env: dict[str, str], weight_files: WeightFiles
) -> None:
    (Path(hub_env["SERPENT_WEIGHTS_DIR"]) / "serpent-b.safetensors").write_bytes(weight_files.b)
    hub.commit("serpent-test/models-l", {"model.safetensors": weight_files.sl})
    registry = {
        "serpent-b": {"sha256": weight_files.sha(weight_files.b2)},  # bundled file is not the pinned one
        "serpent-l": {
            "repo_id": "serpent-test/models-l",
            "published": True,
            "sha256": weight_files.sha(weight_files.sl),
            "metrics": {"faces-test-256": {"psnr": 28.5, "ssim": 0.81}},
        },
        "serpent-h": {"repo_id": "serpent-test/models-h", "published": True},
        "mine": {"repo_id": "alice/mine", "published": False},
    }
    Path(hub_env["SERPENT_REGISTRY"]).write_text(json.dumps(registry))
    # --all: the published ones; serpent-h's repo does not exist, which fails that one but not the batch
    batch = run(serpent_cmd, hub_env, "download", "--all")
    assert batch.returncode == 1, batch.stderr
    assert "skipping models not published on the Hub: serpent-b, serpent-l-blind, mine" in batch.stderr
    assert [line for line in batch.stderr.splitlines() if line.startswith("error:")] == [
        "error: serpent-h: repository serpent-test/models-h not found on "
        f"{hub.url} (check --repo-id; private repos need HF_TOKEN)"
    ]
    assert len(batch.stdout.split()) == 1 and "models--serpent-test--models-l" in batch.stdout

    proc = run(serpent_cmd, hub_env, "models", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)["models"]}
    assert list(rows) == ["serpent-b", "serpent-l", "serpent-h", "serpent-l-blind", "mine"]
    assert rows["serpent-b"]["status"] == "bundled" and rows["serpent-b"]["pin_ok"] is False
    assert rows["serpent-l"]["status"] == "cached" and rows["serpent-l"]["pin_ok"] is True
    assert rows["serpent-l"]["metrics"]["faces-test-256"]["psnr"] == 28.5
    assert rows["serpent-h"]["status"] == "remote" and rows["serpent-h"]["path"] is None
    assert rows["mine"]["status"] == "unavailable" and rows["mine"]["published"] is False
    assert rows["serpent-l"]["url"] == f"{hub.url}/serpent-test/models-l"
    # What deblur uses without --model (the first of the default order found here), and what each is for.
    assert [name for name, row in rows.items() if row["default"]] == ["serpent-l"]
    assert rows["serpent-l"]["trained_for"] == "the benchmark blur (Gaussian sigma 3 + noise 0.05)"
    assert rows["serpent-l-blind"]["trained_for"].startswith("everyday photos")
    assert rows["mine"]["trained_for"] is None
    hub.reset_log()
    table = run(serpent_cmd, dict(hub_env, COLUMNS="200"), "models")
    assert table.returncode == 0, table.stderr
    assert "sha256 MISMATCH" in table.stdout and "unavailable" in table.stdout
    assert hub.requests == []  # listing never touches the network


def test_export_writes_a_hub_ready_folder(
    serpent_cmd: list[str], tmp_path: Path, hub_env: dict[str, str], weight_files: WeightFiles
) -> None:
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"faces-test-256": {"psnr": 28.41, "ssim": 0.8123}, "kodak24": {"psnr": 26.1}}))
    out = tmp_path / "hub-folder"
    proc = run(
        serpent_cmd,
        hub_env,
        "export",
        str(weight_files.b_path),
        "-o",
        str(out),
        "--repo-id",
        "alice/serpent-b",
        "--metrics",
        str(metrics),
        "--training-data",
        "my photos",
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == weight_files.b  # byte for byte: the pin stays valid
    config = json.loads((out / "config.json").read_text())
    assert config["sha256"] == weight_files.sha(weight_files.b)
    assert config["config"]["name"] == "serpent-b" and config["config"]["patch_size"] == 4
    card = (out / "README.md").read_text()
    parsed = ModelCard.load(out / "README.md")  # the Hub's own parser
    meta = parsed.data.to_dict()
    assert meta["license"] == "apache-2.0"
    assert meta["library_name"] == "serpent-cli"
    assert meta["pipeline_tag"] == "image-to-image"
    assert {"image-restoration", "deblurring"} <= set(meta["tags"])
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in parsed.data.eval_results}
    assert results == {("faces-test-256", "psnr"): 28.41, ("faces-test-256", "ssim"): 0.8123, ("kodak24", "psnr"): 26.1}
    assert "| faces-test-256 | 28.4100 | 0.8123 |" in card
    assert "serpent download --repo-id alice/serpent-b" in card
    assert "Training data: my photos" in card
    assert "blind/SET" not in card  # only a card with blind-family rows explains them

    # Without --overwrite an existing export is never replaced.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = run(serpent_cmd, hub_env, "export", str(weight_files.l_path), "-o", str(out))
    assert again.returncode == 1 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_export_of_the_photo_model_explains_its_blind_rows(
    serpent_cmd: list[str], tmp_path: Path, hub_env: dict[str, str]
) -> None:
    from serpent_cli.hub.local import bundled_weights_dir
    from serpent_cli.hub.registry import METRICS

    out = tmp_path / "blind"
    env = {k: v for k, v in hub_env.items() if k != "SERPENT_WEIGHTS_DIR"}  # the bundled, registered file
    proc = run(serpent_cmd, env, "export", str(bundled_weights_dir() / "serpent-l-blind.safetensors"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    card = (out / "README.md").read_text()
    blind = METRICS["serpent-l-blind"]["blind/kodak24"]
    assert f"| blind/kodak24 | {blind['psnr']:.4f} | {blind['ssim']:.4f} |" in card
    assert "| kodak24 |" in card and "Sets named blind/SET: the blind family" in card


def test_export_rejects_a_pickle_without_writing(
    serpent_cmd: list[str], tmp_path: Path, hub_env: dict[str, str]
) -> None:
    import pickle

    fake = tmp_path / "model.safetensors"
    fake.write_bytes(pickle.dumps({"state_dict": {"w": [0.0] * 100}}))
    out = tmp_path / "out"
    proc = run(serpent_cmd, hub_env, "export", str(fake), "-o", str(out))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        f"error: {fake}: not a safetensors file (bad header length); is it a pickle or truncated?"
    ]
    assert not out.exists()
