"""On a CUDA machine only (skipped elsewhere, so CI never needs one): what no CPU run reaches.
PyTorch's fused attention in place of the written-out one, PyTorch's RMSNorm backward in place
of ours, tensors and random generators on the card, bf16 autocast and torch.compile there, and
checkpoints moving between the card and a CPU. `.ci/gpu checks` runs this file first on a GPU
(all passed on an NVIDIA H200, 2026-12-04: results/gpu_h200/)."""
import pytest
import torch
from model import ModelConfig, Transformer, attention_mask
from tasks import MASK
from sample import decode_ar_mtp, decode_latent, decode_mdm, evaluate
from utils import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
V, T = 12, 9
MASKED = torch.tensor([[0, 0, 1, 1, 0, 1, 1, 1, 0], [1, 0, 1, 0, 1, 1, 0, 0, 1]], dtype=torch.bool)
RANK = torch.tensor([[0.0, 0.0, 0.7, 0.1, 0.0, 0.9, 0.3, 0.5, 0.0], [0.2, 0.0, 0.4, 0.0, 0.8, 0.6, 0.0, 0.0, 0.1]])


@pytest.mark.parametrize('structure', ['full', 'causal', 'independent', 'semi_causal', 'masked_full', 'prefix'])
def test_the_card_computes_what_the_cpu_computes(structure):
    """The same weights and inputs on the card (scaled_dot_product_attention, autograd RMSNorm)
    and on the CPU (attend written out, RMSNorm's backward written out): outputs and gradients
    agree to float32 rounding, for the full sequence and for a trimmed pass (position ids)."""
    torch.manual_seed(0)
    cpu = Transformer(ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32))
    gpu = Transformer(ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32)).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randint(3, V, (2, T))
    mask = attention_mask(structure, MASKED, RANK.argsort(1).argsort(1).float() if structure == 'prefix' else RANK,
                          window=2 if structure == 'prefix' else None)
    keep = torch.tensor([[0, 2, 3, 5], [1, 2, 4, 8]])                       # a trimmed pass: 4 positions each
    sub_mask = None if mask is None else torch.gather(torch.gather(mask, 1, keep[..., None].expand(-1, -1, T)),
                                                      2, keep[:, None, :].expand(-1, 4, -1))
    for inp, pos, m in ((x, None, mask), (torch.gather(x, 1, keep), keep, sub_mask)):
        causal = structure == 'causal'
        out_c, _ = cpu(inp, pos=pos, attn_mask=m, is_causal=causal)
        out_g, _ = gpu(inp.cuda(), pos=None if pos is None else pos.cuda(), attn_mask=None if m is None else m.cuda(),
                       is_causal=causal)
        torch.testing.assert_close(out_g.cpu(), out_c, atol=1e-4, rtol=1e-3)
        cpu.zero_grad(); gpu.zero_grad()
        out_c.square().mean().backward(); out_g.square().mean().backward()
        for (name, p_c), p_g in zip(cpu.named_parameters(), gpu.parameters()):
            if p_c.grad is not None:
                torch.testing.assert_close(p_g.grad.cpu(), p_c.grad, atol=1e-4, rtol=1e-3, msg=name)


def train_tiny(tmp_path, name, compile='false', **overrides):
    """A tiny 4x4 model trained on the card (tests/conftest.py's recipe); -> its checkpoint path."""
    from train_ar_mtp import ARConfig, objective
    from train_mdlm import settings, train
    args = ['presets/tiny_test.json', f'--out_dir={tmp_path}/{name}', f'--data_dir={tmp_path}/data',
            '--device=cuda', '--dtype=auto', f'--compile={compile}', '--max_iters=150', '--eval_interval=150']
    args += [f'--{k}={v}' for k, v in overrides.items()]
    if 'mtp_window' in overrides:                     # AR+MTP, as train_ar_mtp.py's main trains it
        cfg, _ = settings(args, ARConfig(), bench=False)
        return train(cfg, *objective(cfg), quiet=True)[1]
    return train(settings(args)[0], quiet=True)[1]


def test_models_train_on_the_card_in_bf16_and_decode_on_either_device(tmp_path):
    """MDM and SCDM train on the card under bf16 autocast; their checkpoints load on the CPU and on
    the card; the MDM's decoder (confidence order, no random draws) gives the same answers on
    both; the latent sampler's random draws come from a generator on the card; its cache
    refreshed every pass equals no cache there too."""
    from sample import checkpoint_examples
    mdm = train_tiny(tmp_path, 'mdm', attn='full')
    scdm = train_tiny(tmp_path, 'scdm', attn='semi_causal')
    model_c, ckpt = load_checkpoint(mdm, 'cpu')
    model_g, _ = load_checkpoint(mdm, 'cuda')
    task, examples = checkpoint_examples(ckpt, 'test', 64)
    on_cpu = evaluate(model_c, task, examples, ckpt['attn'], device='cpu', return_answers=True)
    on_gpu = evaluate(model_g, task, examples, ckpt['attn'], device='cuda', return_answers=True)
    assert on_gpu['accuracy'] > 0.2                               # it learned on the card
    same = sum(a == b for a, b in zip(on_cpu['answers'], on_gpu['answers']))
    assert same >= len(examples) - 1                              # float32 both ways; a near tie may flip one
    model_s, ckpt_s = load_checkpoint(scdm, 'cuda')
    x = torch.from_numpy(task.encode_batch([(p, None) for p, _ in examples])[0]).cuda()
    for k in (0, 'all'):
        runs = [decode_latent(model_s, x, n_latent=k, order='random', cache_refresh=r,
                              gen=torch.Generator(device='cuda').manual_seed(0))[0] for r in (0, 1)]
        assert torch.equal(runs[0], runs[1]) and not (runs[0] == MASK).any()     # every cell decoded
    assert evaluate(model_s, task, examples, ckpt_s['attn'], device='cuda', dtype='bfloat16')['n'] == len(examples)


def test_ar_mtp_trains_on_the_card_and_its_cache_is_exact_there(tmp_path):
    ckpt_path = train_tiny(tmp_path, 'ar_mtp', mtp_window=-1, prefix='causal', layout='prompt')
    model, ckpt = load_checkpoint(ckpt_path, 'cuda')
    from sample import checkpoint_examples
    task, examples = checkpoint_examples(ckpt, 'test', 32)
    x = torch.from_numpy(task.encode_batch([(p, None) for p, _ in examples])[0]).cuda()
    cached, _ = decode_ar_mtp(model, x, ckpt['attn'], use_cache=True)
    uncached, _ = decode_ar_mtp(model, x, ckpt['attn'], use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.slow
def test_compiled_training_on_the_card(tmp_path):
    """torch.compile is on by default on CUDA: a compiled bf16 run learns, and its checkpoint
    decodes on the card."""
    from sample import checkpoint_examples
    model, ckpt = load_checkpoint(train_tiny(tmp_path, 'compiled', compile='true', attn='full'), 'cuda')
    task, examples = checkpoint_examples(ckpt, 'test', 64)
    assert evaluate(model, task, examples, ckpt['attn'], device='cuda')['accuracy'] > 0.2
