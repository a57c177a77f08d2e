"""`serpent download` through the real huggingface_hub client against a local Hub-compatible server."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from hubserver import FakeHub, WeightFiles, closed_port


def run(cmd: list[str], env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=timeout)


def register(env: dict[str, str], entries: dict[str, dict[str, object]]) -> None:
    Path(env["SERPENT_REGISTRY"]).write_text(json.dumps(entries))


def cache_blobs(env: dict[str, str], repo_id: str) -> list[Path]:
    folder = Path(env["HF_HOME"]) / "hub" / f"models--{repo_id.replace('/', '--')}" / "blobs"
    return sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []


def assert_one_clean_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_download_cache_hit_fallback_and_offline(
    serpent_cmd: list[str], hub: FakeHub, hub_env: dict[str, str], weight_files: WeightFiles
) -> None:
    commit = hub.commit("serpent-test/serpent-b", {"model.safetensors": weight_files.b})
    register(
        hub_env,
        {
            "serpent-b": {
                "repo_id": "serpent-test/serpent-b",
                "revision": "main",
                "published": True,
                "sha256": weight_files.sha(weight_files.b),
            }
        },
    )
    first = run(serpent_cmd, hub_env, "download", "serpent-b")
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip())
    assert path.read_bytes() == weight_files.b
    assert path.is_relative_to(Path(hub_env["HF_HOME"]))  # HF_HOME honoured
    assert f"snapshots/{commit}" in str(path)
    assert "sha256 verified" in first.stderr
    assert hub.count("GET") == 1

    # Cache hit: the client asks for the metadata of a branch, but transfers nothing.
    second = run(serpent_cmd, hub_env, "download", "serpent-b", "--json")
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["from_cache"] is True and result["verified"] is True and result["variant"] == "serpent-b"
    assert hub.count("GET") == 1, hub.requests

    # The Hub answering 503 falls back to the cached copy, with a warning.
    hub.fail["serpent-test/serpent-b"] = 503
    flaky = run(serpent_cmd, hub_env, "download", "serpent-b")
    assert flaky.returncode == 0, flaky.stderr
    assert "HTTP 503" in flaky.stderr and "using the cached copy" in flaky.stderr
    assert Path(flaky.stdout.strip()).read_bytes() == weight_files.b

    # Offline with the file cached works, with no request at all; so does the Python API, pin checked.
    offline = dict(hub_env, HF_HUB_OFFLINE="1")
    hub.reset_log()
    proc = run(serpent_cmd, offline, "download", "serpent-b")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).read_bytes() == weight_files.b
    probe = subprocess.run(
        [
            str(Path(serpent_cmd[0]).with_name("python")),
            "-c",
            "import json; from serpent_cli import create_model; from serpent_cli.hub.client import model_status; "
            "m = create_model('serpent-b', pretrained=True); "
            "print(json.dumps([m.config.name, {r['name']: [r['status'], r['pin_ok']] for r in model_status()}]))",
        ],
        env=offline,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    name, status = json.loads(probe.stdout)
    assert name == "serpent-b"
    assert status["serpent-b"] == ["cached", True]
    assert hub.requests == []


def test_pinned_revision_wins_over_a_moved_branch(
    serpent_cmd: list[str], hub: FakeHub, hub_env: dict[str, str], weight_files: WeightFiles
) -> None:
    old = hub.commit("serpent-test/pinned", {"model.safetensors": weight_files.b})
    hub.commit("serpent-test/pinned", {"model.safetensors": weight_files.b2})  # main moves on
    register(
        hub_env,
        {
            "serpent-b": {
                "repo_id": "serpent-test/pinned",
                "revision": old,
                "published": True,
                "sha256": weight_files.sha(weight_files.b),
            }
        },
    )
    proc = run(serpent_cmd, hub_env, "download", "serpent-b")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).read_bytes() == weight_files.b
    assert f"/resolve/{old}/" in " ".join(p for _, p in hub.requests)

    # A pinned commit that is cached needs no network at all.
    hub.reset_log()
    again = run(serpent_cmd, hub_env, "download", "serpent-b")
    assert again.returncode == 0, again.stderr
    assert hub.requests == []

    # Asking for another revision gets that revision, with a warning that the pin does not apply.
    other = run(serpent_cmd, hub_env, "download", "serpent-b", "--revision", "main")
    assert other.returncode == 0, other.stderr
    assert Path(other.stdout.strip()).read_bytes() == weight_files.b2
    assert "not the registered file" in other.stderr


def test_hash_mismatch_is_an_error_and_leaves_nothing_cached(
    serpent_cmd: list[str], hub: FakeHub, hub_env: dict[str, str], weight_files: WeightFiles
) -> None:
    hub.commit("serpent-test/tampered", {"model.safetensors": weight_files.b2})
    register(
        hub_env,
        {
            "serpent-b": {
                "repo_id": "serpent-test/tampered",
                "published": True,
                "sha256": weight_files.sha(weight_files.b),
            }
        },
    )
    proc = run(serpent_cmd, hub_env, "download", "serpent-b")
    assert_one_clean_error(proc, "sha256 mismatch", weight_files.sha(weight_files.b))
    assert proc.stdout == ""
    assert cache_blobs(hub_env, "serpent-test/tampered") == []


def test_server_error_fails_fast_and_clearly(
    serpent_cmd: list[str], hub: FakeHub, hub_env: dict[str, str], weight_files: WeightFiles
) -> None:
    hub.commit("serpent-test/broken", {"model.safetensors": weight_files.b})
    hub.fail["serpent-test/broken"] = 500
    start = time.monotonic()
    proc = run(serpent_cmd, hub_env, "download", "--repo-id", "serpent-test/broken")
    assert_one_clean_error(proc, "HTTP 500", "not cached")
    assert time.monotonic() - start < 30  # no long retry back-off
    assert hub.count("GET") == 0


def test_connection_refused(serpent_cmd: list[str], hub_env: dict[str, str]) -> None:
    env = dict(hub_env, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    proc = run(serpent_cmd, env, "download", "--repo-id", "someone/model")
    assert_one_clean_error(proc, "cannot reach the Hub", "127.0.0.1")


def test_offline_without_cache_fails_clearly(
    serpent_cmd: list[str], hub: FakeHub, hub_env: dict[str, str], weight_files: WeightFiles
) -> None:
    hub.commit("serpent-test/offline", {"model.safetensors": weight_files.b})
    offline = dict(hub_env, HF_HUB_OFFLINE="1")
    missing = run(serpent_cmd, offline, "download", "--repo-id", "serpent-test/offline")
    assert_one_clean_error(missing, "offline", "HF_HUB_OFFLINE", "not in the cache")
    assert hub.requests == []


def test_users_own_repo_with_revision_and_filename(
    serpent_cmd: list[str], hub: FakeHub, hub_env: dict[str, str], weight_files: WeightFiles
) -> None:
    hub.commit("alice/my-deblur", {"weights/v1.safetensors": weight_files.sl, "config.json": b"{}"}, ref="v1")
    hub.commit("alice/my-deblur", {"weights/v1.safetensors": weight_files.b}, ref="main")
    env = dict(hub_env, HF_HUB_CACHE=str(Path(hub_env["HF_HOME"]).parent / "hub-cache"))
    proc = run(
        serpent_cmd,
        env,
        "download",
        "--repo-id",
        "alice/my-deblur",
        "--revision",
        "v1",
        "--filename",
        "weights/v1.safetensors",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["variant"] == "serpent-l"
    assert result["sha256"] == weight_files.sha(weight_files.sl)
    assert Path(result["path"]).read_bytes() == weight_files.sl
    assert Path(result["path"]).is_relative_to(env["HF_HUB_CACHE"])  # HF_HUB_CACHE honoured


def test_missing_repo_is_clear(serpent_cmd: list[str], hub: FakeHub, hub_env: dict[str, str]) -> None:
    proc = run(serpent_cmd, hub_env, "download", "--repo-id", "alice/nope")
    assert_one_clean_error(proc, "repository alice/nope not found")


def test_foreign_file_on_the_hub_is_rejected(serpent_cmd: list[str], hub: FakeHub, hub_env: dict[str, str]) -> None:
    import pickle

    hub.commit("alice/pickled", {"model.safetensors": pickle.dumps({"weight": [1.0, 2.0]})})
    proc = run(serpent_cmd, hub_env, "download", "--repo-id", "alice/pickled")
    assert_one_clean_error(proc, "not a safetensors file")


def test_unpublished_and_unknown_names(serpent_cmd: list[str], hub: FakeHub, hub_env: dict[str, str]) -> None:
    proc = run(serpent_cmd, hub_env, "download", "serpent-h")
    assert_one_clean_error(proc, "not published on the Hub yet")
    assert hub.requests == []  # the registry does not pretend: no network for unpublished weights
    everything = run(serpent_cmd, hub_env, "download", "--all")
    assert_one_clean_error(everything, "no registered model is published")
    unknown = run(serpent_cmd, hub_env, "download", "serpent-b", "serpent-x")
    assert unknown.returncode == 2 and "unknown model 'serpent-x'" in unknown.stderr
    assert hub.requests == []
