"""The optimizer core on models built from ``transformers`` (tiny configs): which matrices are projected, parity
with the reference packages after 20 steps, and the direct use of the classes the way those packages are used."""

from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genai_train.optim import GaLore, OptimConfig, build_optimizer, low_rank_params  # noqa: E402
from genai_train.optim.apollo import APOLLO  # noqa: E402

from .optim_tiny import mirror_groups  # noqa: E402

STEPS, TOL, VOCAB = 20, 1e-5, 64


def _gpt2():
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=16, bos_token_id=0, eos_token_id=0,
        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)


def _llama():
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=16, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg)


def _bert():
    cfg = transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, vocab_size=VOCAB,
        max_position_embeddings=16, pad_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertForMaskedLM(cfg)


MODELS = {"gpt2": _gpt2, "llama": _llama, "bert": _bert}


def _pair(kind: str):
    torch.manual_seed(0)
    a = MODELS[kind]().train()
    b = MODELS[kind]().train()
    b.load_state_dict(a.state_dict())  # (dropout is off in the configs: both runs see the same function)
    return a, b


def _train(model, opt, steps=STEPS):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(1, VOCAB, (4, 12), generator=g)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _rel(a, b) -> float:
    """Worst relative difference over the parameters, leaving out attention key biases: softmax ignores a shift of
    every key, so their gradient is zero in exact arithmetic and what reaches Adam is rounding noise (in both
    runs, differently), which Adam's normalisation turns into full-size steps."""
    return max(
        ((x - y).norm() / y.norm().clamp_min(1e-12)).item()
        for (n, x), y in zip(a.named_parameters(), b.parameters())
        if not n.endswith("key.bias")
    )


@pytest.mark.parametrize("kind", list(MODELS))
def test_selection_projects_the_block_matrices_never_embeddings_or_tied_heads(kind):
    model = MODELS[kind]()
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = sorted(names[i] for i in low_rank_params(model))
    per_layer = {"gpt2": 4, "llama": 7, "bert": 6}[kind]  # GPT-2 Conv1D: c_attn, c_proj, c_fc, mlp.c_proj
    assert len(chosen) == 2 * per_layer, chosen
    every = {names[i] for i in low_rank_params(model, "all_linear")}
    assert not any("wte" in n or "embed" in n for n in every), every
    # GPT-2's lm_head and BERT's decoder are the token embedding (tied): all_linear adds no head for them
    extra = sorted(every - set(chosen))
    assert extra == {"gpt2": [], "llama": ["lm_head.weight"], "bert": ["cls.predictions.transform.dense.weight"]}[kind]


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("name", ["galore", "apollo"])
def test_parity_with_the_reference_package_on_transformers_models(kind, name):
    ref_pkg = pytest.importorskip("galore_torch" if name == "galore" else "apollo_torch")
    a, b = _pair(kind)
    cfg = OptimConfig(name=name, lr=1e-2, rank=4, update_proj_gap=7, weight_decay=0.1)
    opt = build_optimizer(a, cfg)
    keys = {"rank": 4, "update_proj_gap": 7, "scale": cfg.resolved_scale, "proj_type": "std"}
    if name == "apollo":
        keys.update(proj="random", scale_type="channel")
    groups = []
    for g in mirror_groups(opt.param_groups, a, b):
        ref = {"params": g["params"], "weight_decay": g["weight_decay"]}
        groups.append({**ref, **keys} if g.get("low_rank") else ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "galore":
            ref = ref_pkg.GaLoreAdamW(groups, lr=1e-2, no_deprecation_warning=True)
        else:
            ref = ref_pkg.APOLLOAdamW(groups, lr=1e-2)
    _train(a, opt)
    _train(b, ref)
    assert _rel(a, b) < TOL


def test_classes_take_param_groups_the_way_the_reference_packages_do():
    a, b = _pair("llama")
    chosen = low_rank_params(a)
    matrices = [p for p in a.parameters() if id(p) in chosen]
    others = [p for p in a.parameters() if id(p) not in chosen]
    groups = [{"params": others}, {"params": matrices, "rank": 4, "update_proj_gap": 7, "scale": 0.25}]
    opt = GaLore(groups, lr=1e-2)
    assert [g["low_rank"] for g in opt.param_groups] == [False, True] and opt.param_groups[1]["rank"] == 4
    built = build_optimizer(b, OptimConfig(name="galore", lr=1e-2, rank=4, update_proj_gap=7))
    _train(a, opt, 5)
    _train(b, built, 5)
    assert _rel(a, b) < TOL


def test_direct_use_that_would_silently_be_adamw_is_refused():
    model = _llama()
    with pytest.raises(ValueError, match="needs to know which matrices to project"):
        GaLore(model.parameters(), lr=1e-3, rank=16)
    with pytest.raises(ValueError, match="no param group is low-rank"):
        APOLLO([{"params": list(model.parameters())}], lr=1e-3)
    with pytest.raises(ValueError, match="proj=.svd. is not supported"):
        APOLLO([{"params": list(model.parameters()), "rank": 4, "proj": "svd"}], lr=1e-3)


def test_per_layer_mode_inside_transformers_trainer_steps_once_per_trainer_step(tmp_path):
    """Trainer(optimizers=(opt, sched)) with gradient_accumulation_steps=2: four Trainer steps are four updates
    of every weight, not eight (the hooks count the backward passes themselves)."""
    pytest.importorskip("accelerate")
    model = _llama()
    opt = build_optimizer(model, OptimConfig(name="galore", lr=1e-3, rank=4))
    opt.attach_per_layer(accumulation_steps=2, clip=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": (ids := torch.randint(1, VOCAB, (12,), generator=g)), "labels": ids} for _ in range(16)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        max_grad_norm=0.0, report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no",
    )  # fmt: skip
    transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, sched)).train()
    steps = {opt.state[p]["step"] for g in opt.param_groups for p in g["params"]}
    assert steps == {4}


def test_per_layer_clipping_clips_each_parameter():
    a, b = _pair("llama")
    ids = torch.randint(1, VOCAB, (4, 12), generator=torch.Generator().manual_seed(3))
    clipped = build_optimizer(a, OptimConfig(name="galore", lr=1e-2, rank=4)).attach_per_layer(clip=1e-3)
    a(input_ids=ids, labels=ids).loss.backward()
    plain = build_optimizer(b, OptimConfig(name="galore", lr=1e-2, rank=4))
    b(input_ids=ids, labels=ids).loss.backward()
    for p in b.parameters():
        p.grad = p.grad * torch.clamp(1e-3 / (p.grad.norm() + 1e-6), max=1.0)  # clip_grad_norm_'s formula
    plain.step()
    assert clipped.state[next(a.parameters())]["step"] == 1 and _rel(a, b) < TOL


def test_adam_mini_partition_comes_from_the_model_and_matches_the_package_on_llama():
    """Grouped-query Llama: q one block per head, k one per key/value head (from the attention module's own
    head_dim), v/o/MLP/embeddings/head one per row; 20 steps equal the adam_mini package set up as its README
    says (dim, n_heads, n_kv_heads from the model's config)."""
    adam_mini = pytest.importorskip("adam_mini")
    a, b = _pair("llama")
    # lr 1e-3 (Adam-mini's default): at 1e-2 this tiny model amplifies the last-bit difference of the block mean
    # (mean of g^2 here, squared norm / n in the package) to 2e-5 in 20 steps
    opt = build_optimizer(a, OptimConfig(name="adam_mini", lr=1e-3, weight_decay=0.1))
    blocks = {n: opt.state[p]["blocks"] for n, p in a.named_parameters()}
    attn = "model.layers.0.self_attn."
    assert blocks[attn + "q_proj.weight"] == 4 and blocks[attn + "k_proj.weight"] == 2
    assert blocks[attn + "v_proj.weight"] == 16 and blocks["model.layers.0.mlp.down_proj.weight"] == 32
    assert blocks["model.embed_tokens.weight"] == VOCAB and blocks["model.norm.weight"] == 1
    c = b.config
    ref = adam_mini.Adam_mini(
        named_parameters=b.named_parameters(), lr=1e-3, weight_decay=0.1, dim=c.hidden_size,
        n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads, verbose=False,
    )  # fmt: skip
    _train(a, opt)
    _train(b, ref)
    assert _rel(a, b) < TOL


def test_adam_mini_heads_of_bert_come_from_its_attention_module():
    model = _bert()
    opt = build_optimizer(model, OptimConfig(name="adam_mini"))
    blocks = {n: opt.state[p]["blocks"] for n, p in model.named_parameters()}
    self_attn = "bert.encoder.layer.0.attention.self."
    assert blocks[self_attn + "query.weight"] == 4 and blocks[self_attn + "key.weight"] == 4
    assert blocks[self_attn + "value.weight"] == 32 and blocks[self_attn + "query.bias"] == 32


@pytest.mark.parametrize(
    "name,per_layer",
    [("adamw", False)] + [(n, pl) for n in ("galore", "apollo", "apollo_mini", "adam_mini", "flora") for pl in (0, 1)],
)
def test_every_optimizer_steps_a_stock_diffusers_unet(name, per_layer):
    """(per-layer steps are the core optimizers' own; torch's AdamW has none)"""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8,
    )  # fmt: skip
    opt = build_optimizer(unet, OptimConfig(name=name, rank=4, per_layer=bool(per_layer)))
    before = [p.detach().clone() for p in unet.parameters()]
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    for _ in range(3):
        (unet(x, t).sample - x).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    moved = sum(not torch.equal(p, q) for p, q in zip(unet.parameters(), before))
    assert all(torch.isfinite(p).all() for p in unet.parameters()) and moved > len(before) // 2


def test_adam_mini_partitions_gpt2_conv1d_per_output_neuron_and_its_fused_qkv_per_head():
    """transformers' Conv1D stores (in, out): one block per output column, and c_attn's q | k | v columns are
    q and k per head, v per output neuron (the package's name rules give c_attn and attn.c_proj one block each)."""
    model = _gpt2()
    opt = build_optimizer(model, OptimConfig(name="adam_mini"))
    state = {n: opt.state[p] for n, p in model.named_parameters()}
    h = "transformer.h.0."
    assert state[h + "attn.c_attn.weight"]["blocks"] == 4 + 4 + 32  # q heads, k heads, v columns
    seg = state[h + "attn.c_attn.weight"]["segments"]
    assert seg[:32].tolist() == [i // 8 for i in range(32)] and seg[32:64].tolist() == [4 + i // 8 for i in range(32)]
    assert seg[64:].tolist() == list(range(8, 40))
    assert state[h + "attn.c_proj.weight"]["blocks"] == 32 and state[h + "mlp.c_fc.weight"]["blocks"] == 128
    assert state[h + "mlp.c_proj.weight"]["blocks"] == 32 and state["transformer.wte.weight"]["blocks"] == VOCAB


def test_adam_mini_column_blocks_follow_the_closed_form_and_resume_exactly():
    """A (in, out) weight with column segments: each block's v is the EMA of the mean g^2 over its columns (all
    rows), written out here by hand; a state saved after 3 steps and loaded continues bit for bit."""
    from genai_train.optim.adam_mini import AdamMini

    g = torch.Generator().manual_seed(0)
    seg = torch.tensor([0, 0, 1, 1, 2, 3, 4])
    w0 = torch.randn(5, 7, generator=g)
    grads = [torch.randn(5, 7, generator=g) for _ in range(5)]
    lr, (b1, b2), eps, wd = 1e-2, (0.9, 0.999), 1e-8, 0.1

    def run(steps, opt=None, w=None):
        w = torch.nn.Parameter(w0.clone()) if w is None else w
        opt = opt or AdamMini(
            [w], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, blocks={id(w): seg}, kernels="torch"
        )
        for gr in steps:
            w.grad = gr.clone()
            opt.step()
        return w, opt

    w, opt = run(grads)
    ref, m, v = w0.clone(), torch.zeros(5, 7), torch.zeros(5)
    for k, gr in enumerate(grads, 1):
        ref *= 1 - lr * wd
        m = b1 * m + (1 - b1) * gr
        v = b2 * v + (1 - b2) * torch.stack([gr[:, seg == s].pow(2).mean() for s in range(5)])
        h = v.sqrt() / (1 - b2**k) ** 0.5 + eps
        ref -= lr * m / (1 - b1**k) / h[seg][None, :]
    torch.testing.assert_close(w.detach(), ref, rtol=1e-6, atol=1e-7)
    a, opt_a = run(grads[:3])
    b = torch.nn.Parameter(a.detach().clone())
    opt_b = AdamMini([b], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, blocks={id(b): seg}, kernels="torch")
    opt_b.load_state_dict(opt_a.state_dict())
    run(grads[3:], opt_b, b)
    assert torch.equal(b.detach(), w.detach())


def test_adam_mini_matches_the_package_on_bert_given_berts_module_names():
    """The package partitions by name substrings; its README says to name a model's layers in its sets. For
    BERT its defaults crash ('embed' and 'output' also match 1-D LayerNorm gains), so it gets BERT's names; then
    20 steps equal ours, whose partition comes from the modules."""
    adam_mini = pytest.importorskip("adam_mini")
    a, b = _pair("bert")
    opt = build_optimizer(a, OptimConfig(name="adam_mini", lr=1e-3, weight_decay=0.1))
    c = b.config
    ref = adam_mini.Adam_mini(
        named_parameters=b.named_parameters(), lr=1e-3, weight_decay=0.1, dim=c.hidden_size,
        n_heads=c.num_attention_heads, verbose=False,
    )  # fmt: skip
    ref.embd_names = {"word_embeddings", "position_embeddings", "token_type_embeddings"}
    ref.output_names = set()  # the MLM decoder is tied to the word embeddings
    ref.attn_proj_names = {"attention.output.dense"}
    ref.mlp_names = {"intermediate.dense", "output.dense", "transform.dense"}
    _train(a, opt)
    _train(b, ref)
    assert _rel(a, b) < TOL


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("scale_parameter", [False, True])
def test_flora_matches_flora_opt_on_transformers_models(kind, scale_parameter):
    """flora-opt compresses the momentum of any 2-D tensor of aspect <= 4 (embeddings included) unless its param
    group says rank=None; given our groups (rank only on the projected matrices) 20 steps agree. lr 1e-3: at
    1e-2 these tiny models amplify last-bit differences of the normalised update past 1e-5 within 20 steps.
    GPT-2's key bias sits inside c_attn.bias: its gradient (zero in exact arithmetic) is zeroed in both runs."""
    pytest.importorskip("flora_opt")
    pytest.importorskip("accelerate")
    from flora_opt.optimizers.torch import Flora as RefFlora

    a, b = _pair(kind)
    if kind == "gpt2":
        width = a.config.n_embd
        for model in (a, b):
            for block in model.transformer.h:
                block.attn.c_attn.bias.register_hook(
                    lambda g: torch.cat([g[:width], torch.zeros_like(g[width : 2 * width]), g[2 * width :]])
                )
    cfg = OptimConfig(name="flora", lr=1e-3, rank=4, kappa=7, weight_decay=0.1, scale_parameter=scale_parameter)
    opt = build_optimizer(a, cfg)
    groups = [
        {"params": g["params"], "weight_decay": g["weight_decay"], "rank": 4 if g.get("low_rank") else None}
        for g in mirror_groups(opt.param_groups, a, b)
    ]
    ref = RefFlora(groups, lr=1e-3, rank=4, kappa=7, beta1=0.9, weight_decay=0.1, scale_parameter=scale_parameter)
    _train(a, opt)
    _train(b, ref)
    assert _rel(a, b) < TOL


def test_adam_mini_matches_the_package_on_gpt2_written_with_linear_layers():
    """The package partitions by names and row-major (out, in) layouts, so on stock GPT-2 (fused c_attn, Conv1D
    stored (in, out)) it makes c_attn and attn.c_proj one block each and splits Conv1D weights per input row. Here
    it gets the same GPT-2 with every Conv1D written as the Linear layers its README expects (q_proj/k_proj/v_proj/
    o_proj, mlp fc/proj, transposed; torch.func.functional_call builds the fused model from them): 20 steps of that
    equal ours on stock GPT-2, whose partition comes from the Conv1D layout (q and k per head, the rest per output
    neuron). The key bias's gradient (zero in exact arithmetic, rounding noise otherwise) is zeroed in both runs."""
    adam_mini = pytest.importorskip("adam_mini")
    a, b = _pair("gpt2")
    width = a.config.n_embd
    for block in a.transformer.h:
        block.attn.c_attn.bias.register_hook(
            lambda g: torch.cat([g[:width], torch.zeros_like(g[width : 2 * width]), g[2 * width :]])
        )
    # the package's copy: Linear layouts (out, in) named as its README says
    linear: dict[str, torch.nn.Parameter] = {}
    for i, block in enumerate(b.transformer.h):
        w, bias = block.attn.c_attn.weight.detach(), block.attn.c_attn.bias.detach()
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            linear[f"h.{i}.attn.{name}.weight"] = torch.nn.Parameter(w[:, j * width : (j + 1) * width].T.contiguous())
            linear[f"h.{i}.attn.{name}.bias"] = torch.nn.Parameter(bias[j * width : (j + 1) * width].clone())
        linear[f"h.{i}.attn.o_proj.weight"] = torch.nn.Parameter(block.attn.c_proj.weight.detach().T.contiguous())
        linear[f"h.{i}.mlp.fc.weight"] = torch.nn.Parameter(block.mlp.c_fc.weight.detach().T.contiguous())
        linear[f"h.{i}.mlp.proj.weight"] = torch.nn.Parameter(block.mlp.c_proj.weight.detach().T.contiguous())
    fused_names = (
        "attn.c_attn.weight",
        "attn.c_attn.bias",
        "attn.c_proj.weight",
        "mlp.c_fc.weight",
        "mlp.c_proj.weight",
    )
    # embeddings, LayerNorms and the other biases keep their names (wte: the package's embedding rule) except wpe,
    # which the package would make one block: 'embed' in its name gives one block per row, as ours does
    rest = {n: p for n, p in b.named_parameters() if not n.endswith(fused_names)}
    package_names = {"transformer.wpe.weight": "transformer.wpe.embed_positions"}

    def fused() -> dict[str, torch.Tensor]:
        out = dict(rest)
        for i in range(len(b.transformer.h)):
            h, q = f"transformer.h.{i}.", f"h.{i}."
            parts = [linear[f"{q}attn.{n}.weight"].T for n in ("q_proj", "k_proj", "v_proj")]
            out[h + "attn.c_attn.weight"] = torch.cat(parts, dim=1)
            out[h + "attn.c_attn.bias"] = torch.cat(
                [linear[f"{q}attn.{n}.bias"] for n in ("q_proj", "k_proj", "v_proj")]
            )
            out[h + "attn.c_proj.weight"] = linear[f"{q}attn.o_proj.weight"].T
            out[h + "mlp.c_fc.weight"] = linear[f"{q}mlp.fc.weight"].T
            out[h + "mlp.c_proj.weight"] = linear[f"{q}mlp.proj.weight"].T
        return out

    for i in range(len(b.transformer.h)):
        linear[f"h.{i}.attn.k_proj.bias"].register_hook(torch.zeros_like)
    opt = build_optimizer(a, OptimConfig(name="adam_mini", lr=1e-3, weight_decay=0.1))
    named = [*linear.items(), *((package_names.get(n, n), p) for n, p in rest.items())]
    ref = adam_mini.Adam_mini(
        named_parameters=named, lr=1e-3, weight_decay=0.1, dim=width, n_heads=a.config.n_head, verbose=False
    )
    _train(a, opt)
    _train(lambda **batch: torch.func.functional_call(b, fused(), (), batch), ref)  # the same batches
    got = dict(a.named_parameters())
    want = {n: p.detach() for n, p in fused().items()}
    worst = max(((got[n] - w).norm() / w.norm()).item() for n, w in want.items())
    assert worst < TOL, worst
