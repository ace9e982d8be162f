"""``ldeq train`` command line: --resume with nothing to resume is an error saying where it looked
(issue 13), before any file is written."""
import os

from ldeq.train.cli import main


def test_resume_with_nothing_to_resume_is_an_error_naming_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["--preset", "synthetic-small", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume: nothing to resume" in err and os.path.join(str(out), "checkpoints", "last.pt") in err
    # a folder without last.pt: both places it looked are named
    (tmp_path / "empty").mkdir()
    assert main(["--out", str(out), "--resume", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert os.path.join(str(tmp_path / "empty"), "last.pt") in err
    assert os.path.join(str(tmp_path / "empty"), "checkpoints", "last.pt") in err
    assert main(["--out", str(out), "--resume", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["empty"]  # nothing written, no generated faces
