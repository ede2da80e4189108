"""The one advisory lock (featkit.locks) that extraction and the results folder share."""

from __future__ import annotations

from pathlib import Path

import pytest

from featkit.locks import LockBusyError, file_lock

fcntl = pytest.importorskip("fcntl")


def test_a_held_lock_refuses_a_non_waiting_second_holder(tmp_path: Path) -> None:
    lock = tmp_path / "sub" / ".lock"
    # flock belongs to an open file: a second open of the file is a second holder.
    with file_lock(lock), pytest.raises(LockBusyError), file_lock(lock, wait=False):
        pass
    with file_lock(lock, wait=False):  # released on exit
        pass


def test_an_error_in_the_block_releases_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    with pytest.raises(ValueError), file_lock(lock):
        raise ValueError("inside")
    with open(lock, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
