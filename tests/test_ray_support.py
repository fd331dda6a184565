"""Ray helpers that need no Ray: the token file is made private before Ray is used."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import pytest

from verifiable_mu._ray_support import protect_token_file


def test_world_readable_token_file_is_made_private_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = tmp_path / "auth_token"
    tok.write_text("secret")
    os.chmod(tok, 0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tok))
    with pytest.warns(UserWarning, match="readable by others \\(mode 644\\); it is now 600"):
        assert protect_token_file() is True
    assert stat.S_IMODE(os.stat(tok).st_mode) == 0o600
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert protect_token_file() is False  # already private: nothing to do, no warning


def test_missing_or_odd_token_paths_are_left_alone(tmp_path: Path) -> None:
    assert protect_token_file(str(tmp_path / "none")) is False
    d = tmp_path / "dir"
    d.mkdir(mode=0o755)
    assert protect_token_file(str(d)) is False
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o755
