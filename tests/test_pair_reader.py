"""The pair data path at real-size rules, on the toy backbone: streaming builds, stored dtype,
unpaired rows without a stored loser, row reads of about their own bytes, and the
DataLoader that reads ahead in exactly the sampler's order."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from prefopt.data.build import build_pair_dataset
from prefopt.data.loader import BatchLoader
from prefopt.data.pairset import PairDataset, dataset_header, resolve_latent_dtype, tensor_path
from prefopt.engine.trainer import EpochSampler
from prefopt.errors import DataError
from prefopt.interfaces import PromptPair, Runtime
from prefopt.registry import PluginRegistry

ROWS = 24
SHARD_SIZE = 5


@pytest.fixture(scope="module")
def toy():
    cls = PluginRegistry().get("backbone", "toy2d")
    backbone = cls(cls.Config(num_conditions=4, hidden=8, layers=1, sample_steps=2))
    backbone.load(Runtime(device=torch.device("cpu"), dtype=torch.float32))
    return backbone


def rows(count: int = ROWS, unpaired: bool = False) -> list[PromptPair]:
    """Given x0 data (no sampling), so the stored values are known exactly."""
    out = []
    for i in range(count):
        winner = torch.tensor([float(i), 0.5 + i])
        if unpaired:
            out.append(PromptPair(prompt=str(i % 4), degraded=str((i + 1) % 4), seed=i, winner=winner,
                                  loser_from=(i + 3) % count))
        else:
            out.append(PromptPair(prompt=str(i % 4), degraded=str((i + 1) % 4), seed=i, winner=winner,
                                  loser=-winner))
    return out


def build(directory, backbone, pairs, dtype: str = "float32", seed: int = 0) -> PairDataset:
    header = dataset_header(backbone.data_signature(), {"test": True, "seed": seed}, SHARD_SIZE, dtype)
    build_pair_dataset(directory, pairs, backbone, header, sample_batch_size=4)
    return PairDataset(directory, identity=backbone.data_signature())


def test_a_stream_is_read_one_shard_at_a_time_and_gives_the_list_dataset(tmp_path, toy, monkeypatch):
    import prefopt.data.build as builder

    pulled = []

    def stream():
        for i, pair in enumerate(rows()):
            pulled.append(i)
            yield pair

    written = []
    write = builder._write_shard
    monkeypatch.setattr(builder, "_write_shard", lambda *a: (written.append(len(pulled)), write(*a)))
    streamed = build(tmp_path / "stream", toy, stream())
    # Each shard is written once its rows are read, before the next shard's rows are.
    assert written == [5, 10, 15, 20, 24]
    listed = build(tmp_path / "list", toy, rows())
    for name in ("manifest.json", "metadata.jsonl"):
        assert (tmp_path / "stream" / name).read_bytes() == (tmp_path / "list" / name).read_bytes()
    assert all(torch.equal(a, b) for a, b in zip(streamed.batch(range(ROWS))[:2], listed.batch(range(ROWS))[:2]))


def test_unpaired_rows_store_no_loser_and_read_another_rows_winner(tmp_path, toy):
    dataset = build(tmp_path, toy, rows(unpaired=True))
    with safe_open(str(tensor_path(tmp_path, 0)), framework="pt") as shard:
        assert list(shard.keys()) == ["x0_w"]
    x0_w, x0_l, _, _ = dataset.batch(range(ROWS))
    assert torch.equal(x0_l, x0_w[[(i + 3) % ROWS for i in range(ROWS)]])


def test_stored_dtype_and_auto_default(tmp_path, toy):
    assert resolve_latent_dtype("auto", {"data_space": "latent"}) == "float16"
    assert resolve_latent_dtype("auto", toy.data_signature()) == "float32"
    assert resolve_latent_dtype("bfloat16", toy.data_signature()) == "bfloat16"
    dataset = build(tmp_path, toy, rows(), dtype="float16")
    x0_w, x0_l, _, _ = dataset.batch([3, 11])
    assert x0_w.dtype == torch.float16
    assert torch.equal(x0_w, torch.tensor([[3.0, 3.5], [11.0, 11.5]], dtype=torch.float16))
    assert torch.equal(x0_l, -x0_w)


def test_values_outside_the_stored_dtype_are_refused(tmp_path, toy):
    big = [PromptPair(prompt="0", degraded="1", seed=0, winner=torch.tensor([1e6, 0.0]), loser=torch.zeros(2))]
    with pytest.raises(DataError, match="outside float16's range.*latent_dtype: float32"):
        build(tmp_path, toy, big * 2, dtype="float16")


def test_a_batch_reads_its_own_rows_only(tmp_path, toy):
    dataset = build(tmp_path, toy, rows())
    dataset.batch([0, 7, 23])
    assert dataset.bytes_read == 3 * 2 * 2 * 4  # 3 pairs, winner and loser, 2 float32 each


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_gives_the_sampler_order_from_any_start(tmp_path, toy, workers):
    dataset = build(tmp_path, toy, rows())
    sampler = EpochSampler(len(dataset), seed=3)
    settings = dict(batch_size=4, grad_accum=2, world=2, max_steps=9)

    def expected(step, micro, rank):
        position = ((step * 2 + micro) * 2 + rank) * 4
        return dataset.batch(sampler.take(position, 4))

    for rank, start in ((0, 0), (1, 4)):  # a resumed run starts part way
        loader = BatchLoader(dataset, sampler, rank=rank, start=start, workers=workers, prefetch=2, **settings)
        for step in range(start, 9):
            for micro in range(2):
                got, want = loader.batch(step, micro), expected(step, micro, rank)
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[2:] == want[2:]
        loader.close()


OUTLIVING_LOADER = r"""
import sys
from prefopt.data.loader import BatchLoader
from prefopt.data.pairset import PairDataset
from prefopt.engine.trainer import EpochSampler

dataset = PairDataset(sys.argv[1])
loader = BatchLoader(dataset, EpochSampler(len(dataset), seed=0), batch_size=4, grad_accum=1, rank=0,
                     world=1, start=0, max_steps=3, workers=1)
loader.batch(0, 0)
loader.cycle = loader  # alive until the end, as an exception's traceback can keep it
print("read", flush=True)
"""


def test_a_process_whose_loader_outlives_its_work_still_exits(tmp_path, toy):
    """Workers ignore SIGTERM; multiprocessing's exit hook terminates and then joins them.

    A loader still referenced at exit once made every process that used workers hang
    there forever (CI waited 90 minutes after the last test had passed).
    """
    import subprocess
    import sys

    build(tmp_path, toy, rows())
    done = subprocess.run([sys.executable, "-c", OUTLIVING_LOADER, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "read\n", done.stderr


def test_close_stops_the_workers_even_while_the_iterator_is_referenced(tmp_path, toy):
    import multiprocessing

    dataset = build(tmp_path, toy, rows())
    loader = BatchLoader(dataset, EpochSampler(len(dataset), seed=0), batch_size=4, grad_accum=1, rank=0,
                         world=1, start=0, max_steps=3, workers=1)
    loader.batch(0, 0)
    kept = loader._batches  # what a traceback would hold
    assert multiprocessing.active_children()
    loader.close()
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
    del kept


def test_a_loader_dropped_in_a_reference_cycle_stops_its_workers(tmp_path, toy):
    """torch's own shutdown fails silently there, and the orphaned worker then held up exit."""
    import gc
    import multiprocessing
    import time

    dataset = build(tmp_path, toy, rows())

    def fail_inside():
        loader = BatchLoader(dataset, EpochSampler(len(dataset), seed=0), batch_size=4, grad_accum=1, rank=0,
                             world=1, start=0, max_steps=3, workers=1)
        loader.batch(0, 0)
        try:
            raise DataError("a run that failed")
        except DataError as exc:
            loader.failure = exc  # loader -> exception -> traceback -> this frame -> loader

    fail_inside()
    assert multiprocessing.active_children()
    gc.collect()
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()


def test_a_damaged_row_read_by_a_worker_is_one_data_error(tmp_path, toy):
    dataset = build(tmp_path, toy, rows())
    path = tensor_path(tmp_path, 2)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    loader = BatchLoader(dataset, EpochSampler(len(dataset), seed=0), batch_size=ROWS, grad_accum=1, rank=0,
                         world=1, start=0, max_steps=1, workers=1)
    with pytest.raises(DataError, match=r"shard-00002\.safetensors is damaged \(row 4 of x0_w") as caught:
        loader.batch(0, 0)
    assert "\n" not in str(caught.value)


def test_closing_a_loader_whose_iterator_ran_to_its_end(tmp_path, toy):
    """torch has stopped the workers and closed their queues then: asking again must not fail."""
    dataset = build(tmp_path, toy, rows())
    loader = BatchLoader(dataset, EpochSampler(len(dataset), seed=0), batch_size=4, grad_accum=1, rank=0,
                         world=1, start=0, max_steps=1, workers=1)
    loader.batch(0, 0)
    with pytest.raises(StopIteration):
        next(loader._batches)
    loader.close()
