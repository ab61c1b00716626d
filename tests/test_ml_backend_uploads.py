"""The ML backend reads a task's image from the uploads of the Label Studio beside it only when the file there
is the task's (its content hash), and never from outside that folder."""

from __future__ import annotations

import hashlib

from poseops.ml_backend import local_upload


def test_an_upload_is_read_only_with_the_task_s_hash_and_from_inside_the_uploads(tmp_path):
    uploads = tmp_path / "media" / "upload"
    (uploads / "3").mkdir(parents=True)
    content = b"\x89PNG the picture"
    (uploads / "3" / "1a2b3c4d-cat 1.png").write_bytes(content)
    (tmp_path / "secret.txt").write_bytes(b"not an upload")
    sha = hashlib.sha256(content).hexdigest()
    assert local_upload(uploads, "/data/upload/3/1a2b3c4d-cat%201.png", sha) == content
    assert local_upload(uploads, "/data/upload/3/1a2b3c4d-cat%201.png?x=1", sha) == content
    assert local_upload(uploads, "/data/upload/3/1a2b3c4d-cat%201.png", "0" * 64) is None  # another file: download
    assert local_upload(uploads, "/data/upload/3/1a2b3c4d-cat%201.png", None) is None  # no hash in the task
    assert local_upload(uploads, "/data/upload/3/missing.png", sha) is None
    secret = hashlib.sha256(b"not an upload").hexdigest()
    for url in ("/data/upload/../../secret.txt", "/data/upload/3/%2e%2e/%2e%2e/%2e%2e/secret.txt",
                "/data/upload//secret.txt", "/data/local-files/?d=secret.txt", "http://elsewhere/secret.txt"):
        assert local_upload(uploads, url, secret) is None, url
