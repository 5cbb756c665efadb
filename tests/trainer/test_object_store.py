"""s3:// sources through megatron-core's object-storage reader, against a real S3 API over HTTP.

The server is moto's (`ThreadedMotoServer`, an S3 emulator speaking the wire protocol, as the
Kubernetes emulator does for the controller); the client is boto3, configured from the
environment exactly as in a trainer pod whose credentials come from a Secret.
"""

from __future__ import annotations

import socket
from pathlib import Path

import boto3
import pytest
import torch
from moto.server import ThreadedMotoServer

from tests.trainer.test_data import write_source
from trainer.corpora import SourceUnavailable
from trainer.data import MixtureDataset
from trainer.tokenizer import ByteTokenizer

BUCKET = "corpus"


@pytest.fixture(scope="module")
def s3_endpoint():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """The environment a trainer pod gets from its credentials Secret, and a client for setting up."""
    for key, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "reader",
        "AWS_SECRET_ACCESS_KEY": "not-a-real-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    return client


def upload(client, local_prefix: str, key: str, *, sidecar: bool = True) -> str:
    for extension in (".bin", ".idx", ".json") if sidecar else (".bin", ".idx"):
        client.upload_file(f"{local_prefix}{extension}", BUCKET, f"{key}{extension}")
    return f"s3://{BUCKET}/{key}"


def test_an_s3_source_gives_the_batches_the_same_pair_on_a_volume_gives(s3, tmp_path):
    local = write_source(tmp_path, "web", seed=8, documents=80, short=20, long=300)
    remote = upload(s3, local, "v1/web")
    on_volume = MixtureDataset([("web", local, 1.0)], seq_length=32, seed=4, tokenizer=ByteTokenizer())
    on_s3 = MixtureDataset([("web", remote, 1.0)], seq_length=32, seed=4, tokenizer=ByteTokenizer(), cache_dir=tmp_path / "cache")
    for k in (0, 3, 40):
        a, b = on_volume.batch(k, 8), on_s3.batch(k, 8)
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert torch.equal(on_volume.eval_batch(2)["tokens"], on_s3.eval_batch(2)["tokens"])
    assert not on_s3.sources[0].indexed.mmap  # the .bin is read in ranges, never downloaded whole
    assert not list((tmp_path / "cache").rglob("*.bin"))


def test_a_missing_object_or_a_foreign_tokenizer_is_refused_naming_the_source(s3, tmp_path):
    local = write_source(tmp_path, "web", seed=9, documents=20, short=20, long=60)
    with pytest.raises(SourceUnavailable, match=r"'web' \(s3://corpus/nowhere/web\): cannot read s3://corpus/nowhere/web\.bin"):
        MixtureDataset([("web", "s3://corpus/nowhere/web", 1.0)], seq_length=8, seed=0, tokenizer=ByteTokenizer())
    Path(f"{local}.json").write_text(Path(f"{local}.json").read_text().replace('"byte"', '"hf-0000"'))
    remote = upload(s3, local, "v2/web")
    with pytest.raises(SourceUnavailable, match="prepared with tokenizer 'hf-0000'"):
        MixtureDataset([("web", remote, 1.0)], seq_length=8, seed=0, tokenizer=ByteTokenizer())


def test_without_credentials_the_error_says_what_is_missing(s3, tmp_path, monkeypatch):
    remote = upload(s3, write_source(tmp_path, "web", seed=10, documents=20, short=20, long=60), "v3/web")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # boto3 resolves credentials once a session
    with pytest.raises(SourceUnavailable, match="'web'.*cannot read .*(credentials|Credentials)"):
        MixtureDataset([("web", remote, 1.0)], seq_length=8, seed=0, tokenizer=ByteTokenizer())


def test_two_ranks_train_from_s3_each_with_its_own_index_copy(s3, s3_endpoint, tmp_path):
    import os

    from tests.trainer.test_epoch import config_for
    from tests.trainer.test_train import records, run_trainer

    local = write_source(tmp_path / "pairs", "web", seed=11, documents=120, short=20, long=300)
    corpus = [("web", upload(s3, local, "v4/web"), 1.0)]
    config = config_for(tmp_path, corpus, 3)
    config["data"]["cache_dir"] = str(tmp_path / "cache")
    env = {key: os.environ[key] for key in os.environ if key.startswith("AWS_")}
    run_trainer(tmp_path, config, nproc=2, env=env)
    assert [r["step"] for r in records(tmp_path, "train")] == [0, 1, 2]
    assert (tmp_path / "cache" / "object-store-index" / "corpus" / "v4" / "web.idx").is_file()
