"""Data-parallel training (sfs.distributed): two gloo processes on the CPU train what one does.

One start of two ranks, set up as torchrun sets up its processes, runs these jobs: (a) the
command line ``python -m sfs train ... --export``, from scratch, (b) a resume on 2 ranks of a
1-rank run, (d) the autoencoder and the text-to-image model, the other model kinds through the
same loop, (e) with dropout, a
straight run and a resumed one, (c) a run whose rank 1 dies after step 3, resumed afterwards on
1 rank. Each is checked against a straight run.
"""

import faulthandler
import json
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import sfs.train
from sfs import distributed
from sfs.__main__ import main
from sfs.autoencoder import Autoencoder, AutoencoderConfig
from sfs.canvas import make_canvases
from sfs.data import load_sample
from sfs.train import TrainConfig, train
from sfs.checkpoints import save_checkpoint
from sfs.text import TextEncoderConfig
from sfs.text2image import TextToImageConfig
from sfs.train_autoencoder import AutoencoderTrainConfig, train_autoencoder
from sfs.train_text2image import TextToImageTrainConfig, train_text2image
from sfs.unet import UNetConfig

# dropout 0: the one draw made on a rank's own rows (see sfs.distributed), so off for exactness
TINY = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, num_heads=2, attn_resolutions=(),
            dropout=0.0)
STEPS, DIED_AT = 4, 3
# lr 1e-4: Adam divides each gradient by its running size, so for a weight whose gradients nearly
# cancel, the last-bit differences of the summation order grow to a few percent of lr; at 1e-4
# they stay below ATOL while every step still moves the weights by far more (checked below)
LR, ATOL = 1e-4, 1e-5


def _cfg(out, dropout: float = 0.0, **kw) -> TrainConfig:
    return TrainConfig(model=UNetConfig(**{**TINY, "dropout": dropout}), steps=STEPS, batch_size=8, lr=LR, warmup_steps=2,
                       conditional=True, ckpt_every=2, sample_every=4, sample_n=4, sample_steps=2,
                       log_every=1, out=str(out), device="cpu", **kw)


def _ae_cfg(out) -> AutoencoderTrainConfig:
    return AutoencoderTrainConfig(model=AutoencoderConfig(base_channels=8, channel_mults=(1, 2, 2)),
                                  steps=STEPS, batch_size=8, lr=LR, warmup_steps=2, ckpt_every=2,
                                  sample_every=0, log_every=1, device="cpu", out=str(out))


def _t2i_cfg(out, tmp) -> TextToImageTrainConfig:
    model = TextToImageConfig(
        unet=UNetConfig(in_channels=4, image_size=12, base_channels=8, channel_mults=(1, 2),
                        num_res_blocks=1, attn_resolutions=(), cross_attn_resolutions=(6,),
                        context_dim=16, num_heads=2, dropout=0.0),
        text=TextEncoderConfig(dim=16, num_layers=1, num_heads=2))
    return TextToImageTrainConfig(model=model, autoencoder=f"{tmp}/ae.safetensors", steps=STEPS,
                                  batch_size=8, lr=LR, warmup_steps=2, ckpt_every=2, sample_every=0,
                                  log_every=1, device="cpu", out=str(out))


def _sample():
    data = load_sample("mnist")
    data.images, data.labels = data.images[:64], data.labels[:64]
    return data


def _free_ports(n: int) -> tuple[int, ...]:
    """n distinct ports that nothing listens on now (MASTER_PORT for each process group)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = tuple(s.getsockname()[1] for s in sockets)
    for s in sockets:
        s.close()
    return ports


def _record_writes(root: str, written: list) -> None:
    """Record every file that this process creates, opens for writing, renames or removes under root."""
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, os.PathLike)) and args[2] & write_flags:
            paths = [args[0]]
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate"):
            paths = [a for a in args[:2] if isinstance(a, (str, os.PathLike))]
        else:
            return
        written.extend(str(p) for p in paths if os.fspath(p).startswith(root))
    sys.addaudithook(hook)


def _cli_args(out: str, models: str) -> list[str]:
    """The command line of _cfg(out), with an export."""
    return ["train", "--steps", str(STEPS), "--batch-size", "8", "--lr", str(LR), "--warmup-steps", "2",
            "--conditional", "--ckpt-every", "2", "--sample-every", "4", "--sample-n", "4",
            "--sample-steps", "2", "--log-every", "1", "--device", "cpu", "--base-channels", "8",
            "--channel-mults", "1,2", "--num-res-blocks", "1", "--num-heads", "2",
            "--attn-resolutions", "", "--dropout", "0", "--out", out, "--export", "tiny",
            "--models-dir", models, "--no-progress"]


def _worker(rank: int, world: int, ports: tuple[int, int], tmp: str) -> None:
    # what torchrun sets for each process it starts
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(60, exit=True)  # a hung rank fails with its stack, not silently
    written: list = []
    if rank == 1:
        _record_writes(tmp, written)
    data = _sample()
    sfs.train.load_dataset = lambda *args, **kw: data  # in this child process only
    main(_cli_args(f"{tmp}/two", f"{tmp}/models"))                 # (a): joins and leaves the group
    assert not torch.distributed.is_initialized()
    os.environ["MASTER_PORT"] = str(ports[1])  # a new group, a new port: no race with the old one
    distributed.init_from_env()
    train(_cfg(f"{tmp}/one-two"), dataset=data, progress=False)    # (b) resumes at step 2
    train_autoencoder(_ae_cfg(f"{tmp}/ae-two"), make_canvases(64, seed=0), progress=False)  # (d)
    train_text2image(_t2i_cfg(f"{tmp}/t2i-two", tmp), make_canvases(64, seed=0), progress=False)
    train(_cfg(f"{tmp}/drop", dropout=0.1), dataset=data, progress=False)  # (e) straight
    rng = [None, None]  # the ranks' dropout streams (torch's global RNG) must differ
    torch.distributed.all_gather_object(rng, torch.get_rng_state().tolist())
    assert rng[0] != rng[1], "both ranks drew the same dropout masks"
    if rank == 0:  # the test, not sfs, copies the run as if it had been killed after step 3
        _copy_without_last_state(f"{tmp}/drop", f"{tmp}/drop-resumed")
    distributed.barrier()
    train(_cfg(f"{tmp}/drop-resumed", dropout=0.1), dataset=data, progress=False)  # (e) resumed
    assert written == [], f"rank 1 wrote {written}"
    distributed.barrier()
    if rank == 0:
        open(f"{tmp}/a-b-d-done", "w").close()

    def die(step):  # (c): rank 1 is killed after step 3, one step after the state of step 2
        if rank == 1 and step == DIED_AT:
            os._exit(7)
    try:
        train(_cfg(f"{tmp}/killed"), dataset=data, progress=False, on_step=die)
    except RuntimeError:  # rank 0: gloo reports the lost peer
        os._exit(7)


def _copy_without_last_state(src, dst) -> None:
    shutil.copytree(src, dst)
    for f in Path(dst).glob(f"state-{STEPS:07d}.*"):
        f.unlink()


def _state(run_dir, step=STEPS) -> dict:
    return {k: v for k, v in load_file(str(run_dir / f"state-{step:07d}.safetensors")).items()
            if k.startswith(("model.", "ema."))}


def _log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "loss.jsonl").read_text().splitlines()]


def _assert_same_run(a, b) -> None:
    """Same weights and EMA (to float tolerance: the ranks sum gradients in another order), same log."""
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=ATOL, rtol=0, msg=k)
    la, lb = _log(a), _log(b)
    assert [r["step"] for r in la] == [r["step"] for r in lb] == list(range(1, STEPS + 1))
    for ra, rb in zip(la, lb):
        assert ra["lr"] == rb["lr"] and abs(ra["loss"] - rb["loss"]) < 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data = _sample()
    train(_cfg(tmp / "one"), dataset=data, progress=False)  # the reference: 1 rank, batch 8
    train_autoencoder(_ae_cfg(tmp / "ae-one"), make_canvases(64, seed=0), progress=False)
    torch.manual_seed(0)
    save_checkpoint(tmp / "ae.safetensors", Autoencoder(_ae_cfg(tmp).model), None, {})
    train_text2image(_t2i_cfg(tmp / "t2i-one", tmp), make_canvases(64, seed=0), progress=False)
    _copy_without_last_state(tmp / "one", tmp / "one-two")  # as if killed after step 3
    # fork: the children inherit the imported torch (about 1 s here, against 15 s to import it
    # afresh in two processes on a busy 2-core machine)
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with pytest.raises(mp.ProcessExitedException) as died:  # 2 ranks, 4 images each
        mp.start_processes(_worker, args=(2, _free_ports(2), str(tmp)), nprocs=2, start_method=method)
    assert (tmp / "a-b-d-done").is_file(), "jobs (a), (b) or (d) failed"
    assert died.value.exit_code == 7
    return tmp


def test_two_ranks_train_what_one_rank_trains_at_the_same_global_batch(runs):
    _assert_same_run(runs / "one", runs / "two")
    # the tolerance is strict: two steps move the weights ten times further than it
    moved = max((a - b).abs().max().item()
                for a, b in zip(_state(runs / "one").values(), _state(runs / "one", 2).values()))
    assert moved > 10 * ATOL


def test_only_rank_0_writes_and_both_world_sizes_write_the_same_files(runs):
    # rank 1 recorded no write (asserted in _worker); rank 0 wrote what a single process writes
    names = {p.relative_to(runs / "one") for p in (runs / "one").rglob("*")}
    assert names == {p.relative_to(runs / "two") for p in (runs / "two").rglob("*")}
    assert any(n.parts[0] == "samples" for n in names)
    card = json.loads((runs / "models" / "tiny.json").read_text())  # the export, by rank 0
    assert card["steps"] == STEPS and card["batch_size"] == 8


def test_the_autoencoder_trains_the_same_on_two_ranks(runs):
    # the same loss at every step and the same function. Not the same weights to ATOL: the biases
    # that a GroupNorm cancels get only rounding noise as gradient, which Adam scales up to ~lr
    la, lb = _log(runs / "ae-one"), _log(runs / "ae-two")
    assert [r["step"] for r in la] == [r["step"] for r in lb] == list(range(1, STEPS + 1))
    for ra, rb in zip(la, lb):
        assert abs(ra["loss"] - rb["loss"]) < 1e-5 and abs(ra["kl"] - rb["kl"]) < 1e-5
    x = make_canvases(8, seed=1).images_float()
    outs = []
    for name in ("ae-one", "ae-two"):
        ae = Autoencoder(_ae_cfg(name).model)
        ae.load_state_dict({k[6:]: v for k, v in _state(runs / name).items() if k.startswith("model.")})
        with torch.no_grad():
            outs.append(ae.decode(ae.encode(x)))
    torch.testing.assert_close(outs[0], outs[1], atol=ATOL, rtol=ATOL)


def test_with_dropout_two_ranks_resume_bit_exactly(runs):
    # dropout is drawn per rank from (seed, step, rank) (the ranks differ: asserted in _worker),
    # so a resumed run draws the same masks
    a, b = _state(runs / "drop"), _state(runs / "drop-resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (runs / "drop" / "loss.jsonl").read_text() == (runs / "drop-resumed" / "loss.jsonl").read_text()
    assert not torch.equal(a["model.conv_out.weight"], _state(runs / "two")["model.conv_out.weight"])


def test_the_text_to_image_model_trains_the_same_on_two_ranks(runs):
    _assert_same_run(runs / "t2i-one", runs / "t2i-two")  # its latent cache written by rank 0 only


def test_a_one_rank_run_resumes_on_two_ranks(runs):
    _assert_same_run(runs / "one", runs / "one-two")


def test_a_killed_two_rank_run_resumes_on_one_rank_and_loses_nothing(runs):
    killed = runs / "killed"
    assert sorted(p.name for p in killed.glob("state-*.json")) == ["state-0000002.json"]
    train(_cfg(killed), dataset=_sample(), progress=False)  # 1 rank, from step 2
    _assert_same_run(runs / "one", killed)


def test_a_batch_that_does_not_split_evenly_over_the_ranks_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ValueError, match="multiple of the number of ranks"):
        train(_cfg(tmp_path), dataset=_sample(), progress=False)
