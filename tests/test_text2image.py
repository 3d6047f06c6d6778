"""Text in, cross-attention, CFG on prompts, the text-to-image model, its training and the CLI."""

import subprocess
import sys

import pytest
import torch

from sfs.autoencoder import Autoencoder, AutoencoderConfig
from sfs.canvas import make_canvases
from sfs.checkpoints import load_model, save_checkpoint
from sfs.guidance import CFGModel
from sfs.samplers import ddim_sample, dpm_solver_2m_sample
from sfs.schedules import cosine_schedule
from sfs.text import BOS, EOS, PAD, TextContext, TextEncoder, TextEncoderConfig, Tokenizer
from sfs.text2image import TextToImage, TextToImageConfig, generate
from sfs.train_text2image import TextToImageTrainConfig, init_from, lineage_runs, train_text2image
from sfs.unet import CrossAttention, UNetConfig


def tiny_config() -> TextToImageConfig:
    return TextToImageConfig(
        unet=UNetConfig(in_channels=4, image_size=12, base_channels=8, channel_mults=(1, 2),
                        num_res_blocks=1, attn_resolutions=(6,), cross_attn_resolutions=(12, 6),
                        context_dim=16, num_heads=2, dropout=0.0),
        text=TextEncoderConfig(dim=16, num_layers=1, num_heads=2))


def perturbed(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


# ---- tokenizer -------------------------------------------------------------------------------

def test_tokenizer_round_trip_and_layout():
    tok = Tokenizer()
    ids = tok.encode(["a red 3 left of a blue 7", ""])
    assert ids.shape == (2, 20) and ids.dtype == torch.long
    assert ids[0, 0] == BOS and ids[0, 9] == EOS and (ids[0, 10:] == PAD).all()
    assert ids[1, :2].tolist() == [BOS, EOS] and (ids[1, 2:] == PAD).all()
    assert tok.decode(ids) == ["a red 3 left of a blue 7", ""]
    assert tok.decode(tok.encode("A Red 3, please?".replace("please", "")))[0] == "a red 3"


def test_every_generated_caption_tokenizes():
    tok = Tokenizer()
    caps = make_canvases(2000, seed=9).captions
    assert tok.decode(tok.encode(caps)) == [" ".join(c.split()) for c in caps]


def test_unknown_words_are_named_or_mapped_to_unk():
    with pytest.raises(ValueError, match=r"\['purple', 'giraffe'\]"):
        Tokenizer().encode("a purple giraffe")
    ids = Tokenizer(unknown="unk").encode("a purple 3")
    assert ids[0, 2] == 3  # <unk>


@pytest.mark.parametrize("bad, err", [(3, TypeError), ([1, 2], TypeError), (None, TypeError),
                                      ("a " * 30, ValueError)])
def test_bad_prompts_are_refused(bad, err):
    with pytest.raises(err):
        Tokenizer().encode(bad)


@pytest.mark.parametrize("kwargs, name", [({"max_length": 2}, "max_length"), ({"unknown": "skip"}, "unknown"),
                                          ({"vocab": ("a", "b")}, "vocab")])
def test_bad_tokenizer_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Tokenizer(**kwargs)


# ---- encoder and cross-attention --------------------------------------------------------------

def test_encoder_states_and_mask():
    enc = perturbed(TextEncoder(TextEncoderConfig(vocab_size=79, dim=16, num_layers=1, num_heads=2)))
    ids = Tokenizer().encode(["a red 3", "two green sneakers"])
    ctx = enc(ids)
    assert ctx.states.shape == (2, 20, 16) and ctx.mask.tolist()[0][:6] == [True] * 5 + [False]
    # padding never leaks into the tokens' states: batch with a longer prompt, same result
    alone = enc(ids[:1]).states[0, :5]
    assert torch.allclose(ctx.states[0, :5], alone, atol=1e-6)
    with pytest.raises(TypeError):
        enc(ids.float())
    with pytest.raises(ValueError, match="shape"):
        enc(ids[:, :10])
    with pytest.raises(ValueError, match="vocab_size"):
        enc(torch.full((1, 20), 500))


def test_cross_attention_ignores_padding_and_exposes_its_maps():
    torch.manual_seed(0)
    ca = perturbed(CrossAttention(8, 16, num_heads=2))
    x = torch.randn(2, 8, 4, 4)
    states, mask = torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    out = ca(x, TextContext(states, mask))
    junk = states.clone()
    junk[~mask] = 100.0  # whatever the padded positions hold
    assert torch.allclose(ca(x, TextContext(junk, mask)), out, atol=1e-6)
    ca.store_attention = True
    out2 = ca(x, TextContext(states, mask))
    assert torch.allclose(out2, out, atol=1e-5)  # the explicit path equals SDPA's
    w = ca.attention
    assert w.shape == (2, 16, 5)
    assert torch.allclose(w.sum(-1), torch.ones(2, 16), atol=1e-6) and (w[~mask[:, None, :].expand_as(w)] == 0).all()


def test_a_fresh_cross_attention_is_the_identity():
    ca = CrossAttention(8, 16, num_heads=2)
    x = torch.randn(1, 8, 4, 4)
    assert torch.equal(ca(x, TextContext(torch.randn(1, 3, 16), torch.ones(1, 3, dtype=torch.bool))), x)


def test_position_embedding_of_the_queries_is_eq_11_6():
    torch.manual_seed(0)
    ca = perturbed(CrossAttention(8, 16, num_heads=2, size=4))
    assert ca.pos.shape == (8, 4, 4)
    x, ctx = torch.randn(2, 8, 4, 4), TextContext(torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.bool))
    plain = CrossAttention(8, 16, num_heads=2)
    plain.load_state_dict({k: v for k, v in ca.state_dict().items() if k != "pos"})
    h = ca.norm(x) + ca.pos  # eq. (11.6) by hand: only the queries see P
    q = ca.q(h.flatten(2).transpose(1, 2)).view(2, 16, 2, 4).transpose(1, 2)
    k, v = ca.kv(ctx.states).view(2, 3, 2, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
    w = (q @ k.transpose(-2, -1) / 2.0).softmax(-1)
    by_hand = x + ca.proj((w @ v).transpose(1, 2).reshape(2, 16, 8)).transpose(1, 2).reshape(2, 8, 4, 4)
    assert torch.allclose(ca(x, ctx), by_hand, atol=1e-5)
    assert not torch.allclose(plain(x, ctx), by_hand, atol=1e-3)  # P changes what the queries pick
    # the same position embedding for every image of the batch: shifting the image changes the output
    assert not torch.allclose(ca(x.roll(1, -1), ctx), ca(x, ctx).roll(1, -1), atol=1e-3)


def test_unet_places_position_embeddings_at_every_cross_attention_and_checks_the_flag():
    from sfs.unet import UNet
    cfg = UNetConfig(**{**tiny_config().unet.to_dict(), "cross_attn_pos": True})
    net = UNet(cfg)
    sizes = sorted(m.pos.shape[-1] for m in net.modules() if isinstance(m, CrossAttention))
    n_blocks = sum(isinstance(m, CrossAttention) for m in net.modules())
    assert len(sizes) == n_blocks and set(sizes) == {6, 12}
    assert all(m.pos is None for m in UNet(tiny_config().unet).modules() if isinstance(m, CrossAttention))
    with pytest.raises(TypeError, match="cross_attn_pos"):
        UNetConfig(**{**tiny_config().unet.to_dict(), "cross_attn_pos": 1})


def test_init_from_adds_position_embeddings_to_a_model_without_them():
    torch.manual_seed(0)
    start = perturbed(TextToImage(tiny_config()))
    with_pos = tiny_config()
    with_pos.unet.cross_attn_pos = True
    model = TextToImage(with_pos)
    init_from(model, start)
    z, t = torch.randn(2, 4, 12, 12), torch.tensor([10, 900])
    ids = start.tokenizer.encode(["a red 3 left of a blue 7", "two bags"])
    with torch.no_grad():  # P = 0 at start: the same function as the model it came from
        assert torch.allclose(model.eval()(z, t, ids), start(z, t, ids), atol=1e-6)
    with pytest.raises(ValueError, match="init"):  # dropping them is not a continuation
        init_from(TextToImage(tiny_config()), model)
    wider = TextToImageConfig(unet=UNetConfig(**{**with_pos.unet.to_dict(), "base_channels": 16}),
                              text=tiny_config().text)
    with pytest.raises(ValueError, match="init"):
        init_from(TextToImage(wider), start)


# ---- the model, guidance and samplers ---------------------------------------------------------

def test_the_prompt_changes_the_prediction_and_none_means_the_empty_prompt():
    model = perturbed(TextToImage(tiny_config()))
    z, t = torch.randn(2, 4, 12, 12), torch.tensor([10, 900])
    ids = model.tokenizer.encode(["a red 3", "a blue 7"])
    a, b = model(z, t, ids), model(z, t, ids.flip(0))
    assert not torch.allclose(a, b)  # other prompts for the same z_t and t: another eps_hat
    assert torch.allclose(model(z, t, None), model(z, t, model.null_cond(2)))


def test_cfg_on_prompts_is_the_plain_formula_on_one_doubled_batch():
    model = perturbed(TextToImage(tiny_config()))
    z, t = torch.randn(3, 4, 12, 12), torch.tensor([5, 50, 500])
    ids = model.tokenizer.encode(["a red 3", "two bags", "a white 1 above a red 2"])
    w = 4.0
    ref = model(z, t, model.null_cond(3)) + w * (model(z, t, ids) - model(z, t, model.null_cond(3)))
    assert torch.allclose(CFGModel(model, w)(z, t, ids), ref, atol=1e-5)


def test_samplers_run_the_text_model_and_check_its_prompts():
    model = perturbed(TextToImage(tiny_config()))
    ids = model.tokenizer.encode(["a red 3", "two bags"])
    z_T = torch.randn(2, 4, 12, 12)
    for out in (ddim_sample(CFGModel(model, 2.0), z_T, cosine_schedule(50), steps=4, cond=ids),
                dpm_solver_2m_sample(CFGModel(model, 2.0), z_T, cosine_schedule(50), steps=4, cond=ids)):
        assert out.shape == z_T.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="shape"):
        ddim_sample(model, z_T, cosine_schedule(50), steps=4, cond=ids[:1])
    with pytest.raises(TypeError):
        ddim_sample(model, z_T, cosine_schedule(50), steps=4, cond=torch.zeros(2))


def test_config_mismatch_between_text_and_unet_is_refused():
    c = tiny_config()
    with pytest.raises(ValueError, match="context_dim"):
        TextToImageConfig(unet=c.unet, text=TextEncoderConfig(dim=32, num_heads=2))


# ---- training, checkpoint, pipeline, CLI ------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(base_channels=8, channel_mults=(1, 2, 2)))
    save_checkpoint(root / "models" / "ae.safetensors", ae, None, {})
    canvases = make_canvases(64, seed=0)
    common = dict(model=tiny_config(), autoencoder=str(root / "models" / "ae.safetensors"), steps=6,
                  batch_size=8, ckpt_every=3, sample_every=3, log_every=1, device="cpu",
                  models_dir=str(root / "models"))
    straight = train_text2image(TextToImageTrainConfig(out=str(root / "a"), **common), canvases, False)
    train_text2image(TextToImageTrainConfig(out=str(root / "b"), **{**common, "steps": 3}), canvases, False)
    resumed = train_text2image(TextToImageTrainConfig(out=str(root / "b"), export="tiny-sd", **common),
                               canvases, False)
    return root, straight, resumed


def test_training_resumes_bit_exactly_and_exports(trained):
    root, straight, resumed = trained
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    model, card = load_model(root / "models" / "tiny-sd.safetensors", kind="text2image")
    assert isinstance(model, TextToImage) and card["steps"] == 6 and card["autoencoder"].endswith("ae.safetensors")
    assert model.tokenizer.vocab == resumed.tokenizer.vocab
    assert list((root / "b").glob("latents-*.safetensors"))  # the cached latents
    snaps = sorted(p.name for p in (root / "a" / "snapshots").glob("*.safetensors"))
    assert snaps == ["ema-0000003.safetensors", "ema-0000006.safetensors"]  # one per sample grid
    last, card = load_model(root / "a" / "snapshots" / snaps[-1], kind="text2image")
    assert card["steps"] == 6
    for a, b in zip(last.state_dict().values(), straight.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-3, rtol=1e-3)  # fp16 copy of the EMA


def test_generate_draws_rgb_canvases(trained):
    root, _, resumed = trained
    ae, _ = load_model(root / "models" / "ae.safetensors", kind="autoencoder")
    imgs = generate(["a red 3", "two bags"], resumed, ae, steps=3, n_per_prompt=2)
    assert imgs.shape == (4, 3, 48, 48) and imgs.abs().max() <= 1
    with pytest.raises(ValueError, match="n_per_prompt"):
        generate("a red 3", resumed, ae, n_per_prompt=0)


def test_cli_generate_writes_a_png_and_refuses_bad_prompts(trained, tmp_path):
    root, _, _ = trained
    model = str(root / "models" / "tiny-sd.safetensors")
    base = [sys.executable, "-m", "sfs", "generate"]
    ok = subprocess.run(base + ["a red 3 left of a blue 7", "--out", str(tmp_path / "x.png"), "--n", "2",
                                "--steps", "2", "--model", model], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for prompt, words in [("", "empty"), ("a purple giraffe", "purple"), ("a " * 30, "words")]:
        bad = subprocess.run(base + [prompt, "--model", model, "--out", str(tmp_path / "y.png")],
                             capture_output=True, text=True)
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr


def test_a_run_can_start_from_a_shipped_model(trained, tmp_path):
    root, _, resumed = trained
    exported = root / "models" / "tiny-sd.safetensors"
    canvases = make_canvases(16, seed=1)
    cfg = TextToImageTrainConfig(model=tiny_config(), autoencoder=str(root / "models" / "ae.safetensors"),
                                 init=str(exported), steps=1, batch_size=4, lr=1e-9, warmup_steps=0,
                                 sample_every=1, device="cpu", out=str(tmp_path / "c"), export="tiny-sd-2",
                                 models_dir=str(tmp_path / "models"))
    more = train_text2image(cfg, canvases, False)
    start, start_card = load_model(exported, kind="text2image")
    for a, b in zip(more.state_dict().values(), start.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-4)  # began where the shipped model ended
    _, card = load_model(tmp_path / "models" / "tiny-sd-2.safetensors", kind="text2image")
    assert card["init"]["file_sha256"] == start_card["file_sha256"]
    assert card["steps_total"] == start_card["steps"] + 1
    # the card says what the run started from and how that was trained (the lineage's commands)
    assert card["init"]["command"] == start_card["command"]
    md = (tmp_path / "models" / "tiny-sd-2.md").read_text()
    assert "started from" in md and f"{card['steps_total']} steps in" in md
    # its snapshots count the whole lineage too (bench_text2image's accuracy against steps reads it)
    _, snap_card = load_model(tmp_path / "c" / "snapshots" / "ema-0000001.safetensors", kind="text2image")
    assert (snap_card["steps"], snap_card["steps_total"]) == (1, start_card["steps"] + 1)
    # a third run, from the second: the card nests the lineage, and every run is still there
    third = TextToImageTrainConfig(**{**cfg.__dict__, "init": str(tmp_path / "models" / "tiny-sd-2.safetensors"),
                                      "steps": 2, "out": str(tmp_path / "e"), "export": "tiny-sd-3"})
    train_text2image(third, canvases, False)
    _, card3 = load_model(tmp_path / "models" / "tiny-sd-3.safetensors", kind="text2image")
    runs = lineage_runs(card3)
    assert [r["steps"] for r in runs] == [start_card["steps"], 1, 2] and card3["steps_total"] == start_card["steps"] + 3
    assert runs[0]["command"] == start_card["command"] and runs[1]["command"] == card["command"]
    assert [r["file_sha256"] for r in runs] == [start_card["file_sha256"], card["file_sha256"], card3["file_sha256"]]
    assert abs(sum(r["wall_time_s"] for r in runs) - card3["wall_time_s_total"]) < 0.5
    md3 = (tmp_path / "models" / "tiny-sd-3.md").read_text()
    assert "which started from" in md3 and start_card["command"] in md3
    other = TextToImageConfig(unet=UNetConfig(**{**tiny_config().unet.to_dict(), "base_channels": 16}),
                              text=tiny_config().text)
    with pytest.raises(ValueError, match="init"):
        train_text2image(TextToImageTrainConfig(**{**cfg.__dict__, "model": other, "out": str(tmp_path / "d")}),
                         canvases, False)


def test_cached_latents_belong_to_their_canvases_only(trained, tmp_path):
    # a cache made from other canvases of the same count and seed (another data source) must not be
    # paired with these captions: it happened to a real run (book ch. 12's fifth run)
    root, _, _ = trained
    from sfs.train_text2image import cached_latents
    ae, ae_card = load_model(root / "models" / "ae.safetensors", kind="autoencoder")
    cfg = TextToImageTrainConfig(model=tiny_config(), out=str(tmp_path / "c"), device="cpu")
    one = make_canvases(8, seed=1)
    other = make_canvases(8, seed=1)
    other.images = 255 - other.images                                   # same captions, other images
    z_one = cached_latents(cfg, ae, ae_card, one)
    z_other = cached_latents(cfg, ae, ae_card, other)
    assert len(list((tmp_path / "c").glob("latents-*.safetensors"))) == 2   # two caches, not one reused
    assert not torch.allclose(z_one, z_other)
    assert torch.equal(cached_latents(cfg, ae, ae_card, one), z_one)       # the same canvases: the cache
    recaptioned = make_canvases(8, seed=1)
    recaptioned.captions = list(reversed(recaptioned.captions))
    cached_latents(cfg, ae, ae_card, recaptioned)
    assert len(list((tmp_path / "c").glob("latents-*.safetensors"))) == 3   # other captions: another key


def test_a_run_records_its_loss_weighting_and_refuses_bad_ones(trained, tmp_path):
    root, _, _ = trained
    canvases = make_canvases(16, seed=1)
    cfg = TextToImageTrainConfig(model=tiny_config(), autoencoder=str(root / "models" / "ae.safetensors"),
                                 steps=2, batch_size=4, sample_every=0, device="cpu", log_every=1,
                                 out=str(tmp_path / "w"), export="tiny-sd-w", models_dir=str(tmp_path / "models"),
                                 weighting="snr+1", max_weight=50.0)
    train_text2image(cfg, canvases, False)
    _, card = load_model(tmp_path / "models" / "tiny-sd-w.safetensors", kind="text2image")
    assert (card["weighting"], card["max_weight"]) == ("snr+1", 50.0)
    assert card["data_dir"] == canvases.meta["images_from"]          # where the canvases' images came from
    assert "loss weighting snr+1 clamped at 50.0" in (tmp_path / "models" / "tiny-sd-w.md").read_text()
    for field, bad in [("weighting", "p2"), ("weighting", "v"), ("max_weight", 0.0), ("max_weight", -1),
                       ("max_weight", "big"), ("max_weight", True)]:
        with pytest.raises((ValueError, TypeError), match=field):
            train_text2image(TextToImageTrainConfig(**{**cfg.__dict__, field: bad, "out": str(tmp_path / "x")}),
                             canvases, False)
    assert not (tmp_path / "x").exists()  # refused at the call, before any work


def test_cli_weighting_options_reach_the_config():
    import argparse
    from sfs import train_text2image as mod
    p = argparse.ArgumentParser()
    mod.add_args(p)
    cfg = mod.config_from_args(p.parse_args([]), ["train-text2image"])
    assert (cfg.weighting, cfg.max_weight) == (None, None)  # the eps loss of eq. (3.7)
    cfg = mod.config_from_args(p.parse_args(["--weighting", "snr+1", "--max-weight", "50"]), ["train-text2image"])
    assert (cfg.weighting, cfg.max_weight) == ("snr+1", 50.0)
    assert cfg.lr_decay == "constant"
    cfg = mod.config_from_args(p.parse_args(["--lr-decay", "cosine", "--steps", "900"]), ["train-text2image"])
    assert (cfg.lr_decay, cfg.steps) == ("cosine", 900)
    for bad in (["--weighting", "p2"], ["--max-weight", "0"], ["--max-weight", "x"], ["--lr-decay", "step"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
