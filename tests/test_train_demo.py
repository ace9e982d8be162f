"""``make demo`` end to end at toy scale: data generated, trained, evaluated, report written."""
import json

from ldeq.demo import main, run_demo  # noqa: E402

TINY = ["data.num_train=16", "data.num_test=6", "train.steps=2", "train.batch_size=4",
        "model.injection_width=8", "model.cell_base_width=8", "model.cell_width_increment=4", "solver.max_iter=2",
        "solver.eval_max_iter=2", "train.eval_batch_size=6"]


def test_demo_writes_report(tmp_path):
    res = run_demo(str(tmp_path / "demo"), minutes=5, overrides=TINY, video=False, progress=False)
    out = tmp_path / "demo"
    report = (out / "report.md").read_text()
    assert res["report"] == str(out / "report.md")
    for needle in ("| test (LDEQ, EMA weights) | 6 |", "mean-shape baseline", "train/curves.png",
                   "eval/ced.png", "eval/grid.png"):
        assert needle in report, needle
    for f in ("train/curves.png", "eval/ced.png", "eval/grid.png", "train/model_final.pt", "data/test.txt"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["summary"]["steps"] == 2
    # the report's figure is the evaluation's figure
    assert f"{summary['eval']['test']['nme']:.2f}" in report
    assert 0 < summary["baseline"]["nme"] < 100


def test_demo_rejects_bad_override(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--no-video", "train.bogus=1"]) == 2
    assert "train.bogus" in capsys.readouterr().err
