"""perceiver-convert --remote: the output uploaded to an S3 server (moto's, on 127.0.0.1), manifests last, reruns
refused or replacing only an earlier conversion, a failed upload leaving no manifest."""

from __future__ import annotations

import json
from pathlib import Path

import perceiver_stream.convert.output
from tests.convert.test_convert import run_cli, xlnet
from tests.convert.test_hub import error_of


def local_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def remote_files(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    client = s3.client()
    return {key[len(prefix) + 1:]: client.get_object(Bucket=bucket, Key=key)["Body"].read()
            for key in s3.objects(bucket, prefix + "/")}


def test_the_output_is_uploaded_and_reruns_replace_only_an_earlier_conversion(s3, wiki_files, tmp_path, capsys):
    bucket = s3.bucket()
    remote = f"s3://{bucket}/wiki"
    argv = ["text", "--input", wiki_files[0], "--tokenizer", xlnet(), "--workers", "1", "--max-seq-len", "128",
            "--remote", remote]
    run_cli(*argv, "--out", tmp_path / "a")
    uploaded = remote_files(s3, bucket, "wiki")
    assert uploaded == local_files(tmp_path / "a")
    assert {"train/manifest.json", "val/manifest.json", "train/index.json"} <= set(uploaded)

    # a rerun onto a complete remote is refused, and changes nothing there
    message = error_of(capsys, *argv, "--out", tmp_path / "b")
    assert message == (f"perceiver-convert: error: --remote {remote}: holds {len(uploaded)} objects already (pass "
                       "--overwrite to replace an earlier conversion)")
    assert remote_files(s3, bucket, "wiki") == uploaded
    # --overwrite replaces it: the new output exactly, nothing of the earlier one left (other shards at seq 64)
    run_cli(*argv[:-4], "--max-seq-len", "64", "--remote", remote, "--out", tmp_path / "c", "--overwrite")
    replaced = remote_files(s3, bucket, "wiki")
    assert replaced == local_files(tmp_path / "c") and replaced != uploaded
    assert json.loads(replaced["train/manifest.json"])["max_seq_len"] == 64

    # a remote holding anything else is not replaced
    s3.client().put_object(Bucket=bucket, Key="wiki/notes.txt", Body=b"mine")
    message = error_of(capsys, *argv, "--out", tmp_path / "d", "--overwrite")
    assert message == (f"perceiver-convert: error: --remote {remote}: is not an earlier perceiver-convert output "
                       "(notes.txt is not a file a conversion writes), so --overwrite will not replace it")
    assert not (tmp_path / "d").exists()  # refused before converting
    message = error_of(capsys, *argv[:-1], str(tmp_path / "elsewhere"), "--out", tmp_path / "e")
    assert message == (f"perceiver-convert: error: --remote {tmp_path / 'elsewhere'}: not an object-store URI "
                       "(s3://bucket/prefix, gs://..., oci://...); a local directory is --out")


def test_a_failed_upload_names_the_object_and_leaves_no_manifest(s3, wiki_files, tmp_path, capsys, monkeypatch):
    """The S3 server stops after three objects: the error names the fourth; what reached the bucket holds no
    manifest, so nothing there looks complete."""
    bucket = s3.bucket()
    uploaded = []
    real_upload = perceiver_stream.convert.output.upload

    def upload_then_stop(local: Path, uri: str) -> None:
        if len(uploaded) == 3:
            s3.server.stop()
        real_upload(local, uri)
        uploaded.append(uri)

    monkeypatch.setattr(perceiver_stream.convert.output, "upload", upload_then_stop)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # botocore's retries of the refused connection, kept short
    try:
        message = error_of(capsys, "text", "--input", wiki_files[0], "--tokenizer", xlnet(), "--workers", "1",
                           "--remote", f"s3://{bucket}/wiki", "--out", tmp_path / "a")
    finally:
        s3.server.start()
    assert len(uploaded) == 3
    assert message.startswith(f"perceiver-convert: error: cannot upload s3://{bucket}/wiki/"), message
    assert "EndpointConnectionError" in message and len(message.splitlines()) == 1
    remaining = s3.objects(bucket)
    assert len(remaining) == 3 and not any(key.endswith("manifest.json") for key in remaining)


def test_labelled_shards_upload_too(s3, tmp_path):
    bucket = s3.bucket()
    table = tmp_path / "reviews.csv"
    table.write_text("text,label\n" + "".join(f"review number {i} of a film,{'good' if i % 2 else 'bad'}\n"
                                                for i in range(40)))
    run_cli("labelled", "--input", table, "--tokenizer", xlnet(), "--max-seq-len", "32", "--out", tmp_path / "rt",
            "--remote", f"s3://{bucket}/rt")
    assert remote_files(s3, bucket, "rt") == local_files(tmp_path / "rt")
    assert json.loads(remote_files(s3, bucket, "rt")["train/manifest.json"])["labels"] == ["bad", "good"]


def test_overwrite_deletes_the_manifests_first_then_uploads_then_removes_the_rest(s3, wiki_files, tmp_path,
                                                                                   monkeypatch):
    """The order that keeps a remote from ever looking complete with mixed contents: the earlier conversion's
    manifests deleted first, every new shard and index uploaded, the new manifests last, then what is left of the
    earlier conversion deleted (here a labelled conversion's shards, replaced by a text conversion's)."""
    bucket = s3.bucket()
    remote = f"s3://{bucket}/data"
    table = tmp_path / "reviews.csv"
    table.write_text("text,label\n" + "".join(f"review {i} of a film,{'good' if i % 2 else 'bad'}\n"
                                              for i in range(40)))
    run_cli("labelled", "--input", table, "--tokenizer", xlnet(), "--max-seq-len", "32", "--out", tmp_path / "first",
            "--remote", remote)
    earlier = set(remote_files(s3, bucket, "data"))
    calls: list[tuple[str, str]] = []
    for name in ("upload", "delete"):
        real = getattr(perceiver_stream.convert.output, name)

        def recorded(*args, real=real, name=name):
            calls.append((name, (args[1] if name == "upload" else args[0]).removeprefix(f"{remote}/")))
            real(*args)

        monkeypatch.setattr(perceiver_stream.convert.output, name, recorded)
    run_cli("text", "--input", wiki_files[0], "--tokenizer", xlnet(), "--workers", "1", "--max-seq-len", "128",
            "--out", tmp_path / "second", "--remote", remote, "--overwrite")
    new = set(local_files(tmp_path / "second"))
    manifests = {"train/manifest.json", "val/manifest.json"}
    assert earlier - new, "the earlier conversion should leave objects the new one does not write"
    kinds = [("delete manifest" if op == "delete" and key in manifests else
              "upload manifest" if op == "upload" and key in manifests else op) for op, key in calls]
    assert kinds == (["delete manifest"] * 2 + ["upload"] * (len(new) - 2) + ["upload manifest"] * 2
                     + ["delete"] * len(earlier - new)), calls
    assert {key for op, key in calls if op == "delete"} - manifests == earlier - new
    assert set(remote_files(s3, bucket, "data")) == new
