"""`torchrun -m serpent_cli deblur` with 2 CPU processes (gloo) gives exactly the single-process result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from deblur_helpers import crop, make_weights, run


def test_two_processes_shard_and_match_one(data_dir: Path, tmp_path: Path, serpent_cmd: list[str]) -> None:
    weights = make_weights(tmp_path / "w.safetensors")
    src = tmp_path / "in"
    src.mkdir()
    crop(data_dir, "kodak24", 0, (300, 200, 396, 264)).save(src / "a.png")
    crop(data_dir, "set14", 1, (0, 0, 64, 48)).convert("L").save(src / "b.png")
    crop(data_dir, "cbsd68", 0, (0, 0, 80, 64)).save(src / "c.png")
    crop(data_dir, "mcmaster18", 0, (0, 0, 64, 64)).save(src / "d.jpg", quality=90)
    (src / "e.png").write_bytes((src / "a.png").read_bytes()[:200])  # truncated: fails on one rank only
    common = ["deblur", str(src), "--weights", str(weights), "--device", "cpu", "--json"]

    single = run([*serpent_cmd, *common, "-o", str(tmp_path / "one")])
    multi = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                 "-m", "serpent_cli", *common, "-o", str(tmp_path / "two")])
    assert single.returncode == 1 and multi.returncode == 1, multi.stderr.decode()[-2000:]
    rows = [json.loads(line) for line in multi.stdout.decode().splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b.png", "c.png", "d.jpg", "e.png"]  # input order
    assert {r["rank"] for r in rows if r["status"] == "ok"} == {0, 1}  # both processes did work
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["failed"]
    assert multi.stderr.decode().count("e.png: cannot decode") == 1
    assert "deblurred 4 images, 1 failed" in multi.stderr.decode() and "on 2 processes" in multi.stderr.decode()
    for name in ("a.png", "b.png", "c.png", "d.jpg"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert not (tmp_path / "two" / "e.png").exists()
