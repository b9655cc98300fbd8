"""Failure reasons: one bounded line that names the file once and never carries its bytes."""

from __future__ import annotations

from stemcast.errors import FormatError
from stemcast.service.live.discovery import GONE, FileIdentity
from stemcast.service.live.navigation import NavigationTracker
from stemcast.service.live.reasons import MAX_REASON, describe
from stemcast.shape import Evidence


def test_a_stemcast_error_names_its_file_once() -> None:
    error = FormatError("not a Merlin frame header", path="/data/scan.mib", offset=0)
    assert describe(error, "/data/scan.mib") == (
        "/data/scan.mib, byte 0: not a Merlin frame header"
    )


def test_any_other_error_gets_the_file_and_its_type() -> None:
    reason = describe(ValueError('Error parsing datetime string "XXXX"'), "/data/scan.mib")
    assert reason == '/data/scan.mib: ValueError: Error parsing datetime string "XXXX"'
    gone = FileNotFoundError(2, "No such file or directory", "/data/scan.mib")
    assert describe(gone, "/data/scan.mib").count("/data/scan.mib") == 1


def test_file_bytes_in_a_message_are_escaped_and_cut() -> None:
    quoted = "root:x:0:0:root:/root:/bin/bash\n" * 100 + "\x1b[2J"
    reason = describe(FormatError(f"starts with {quoted}", path="/data/p.mib"), "/data/p.mib")
    assert len(reason) == MAX_REASON
    assert reason.endswith("...")
    assert "\n" not in reason
    assert "\\n" in reason


def test_a_name_stands_for_another_file_with_a_new_inode_or_a_smaller_size() -> None:
    ended = FileIdentity(device=1, inode=10, size=1000, mtime_ns=5, head="ab")
    assert ended.same_file(FileIdentity(1, 10, 1000, 5)) is True
    assert ended.same_file(FileIdentity(1, 10, 999, 6)) is False
    assert ended.same_file(FileIdentity(1, 11, 1000, 5)) is False
    # The same inode written since: a new file may get the inode of one just deleted.
    assert ended.same_file(FileIdentity(1, 10, 2000, 6)) is None
    assert FileIdentity(1, 10, 1000, 5).same_file(FileIdentity(1, 10, 2000, 6)) is True
    assert GONE.same_file(FileIdentity(1, 10, 1000, 5)) is False


def test_a_late_hdr_gives_the_frame_count_and_replaces_a_scan_from_timestamps() -> None:
    tracker = NavigationTracker()
    assert tracker.announce(frames_expected=64) is False
    assert tracker.frames_expected == 64
    assert tracker.complete_reason == "all 64 frames announced by the .hdr"
    assert tracker.announce(hdr_shape=(16, 4), frames_expected=64) is True
    assert tracker.scan is not None
    assert (tracker.scan.shape, tracker.scan.evidence) == ((16, 4), Evidence.HDR)


def test_a_late_hdr_never_replaces_the_users_shape() -> None:
    tracker = NavigationTracker(user=(8, 8))
    assert tracker.announce(hdr_shape=(16, 4), frames_expected=64) is False
    assert tracker.scan is not None
    assert (tracker.scan.shape, tracker.scan.evidence) == ((8, 8), Evidence.USER)
