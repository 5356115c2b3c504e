"""model.py: attention-structure semantics (by perturbation), position ids, KV cache pieces."""
import itertools
import pytest
import torch
from model import ModelConfig, RMSNorm, RMSNormFunction, Transformer, attend, attention_mask, rotary, rotary_cos_sin

torch.manual_seed(0)
V, T = 12, 9


def tiny(n_layer=2, n_head=2, n_embd=32):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=V, block_size=32, n_layer=n_layer, n_head=n_head, n_embd=n_embd)).eval()


def influence(model, x, mask, is_causal=False):
    """[T, T] bool: does changing the token at key j change the output at query i?"""
    base, _ = model(x, attn_mask=mask, is_causal=is_causal)
    out = torch.zeros(T, T, dtype=torch.bool)
    for j in range(T):
        y = x.clone(); y[0, j] = (y[0, j] + 1) % V
        changed, _ = model(y, attn_mask=mask, is_causal=is_causal)
        out[:, j] = (changed - base)[0].abs().amax(-1) > 1e-5
    return out


MASKED = torch.tensor([[0, 0, 1, 1, 0, 1, 1, 1, 0]], dtype=torch.bool)
# positions 2 and 7 share a rank: equal ranks must not see each other (the latent sampler ranks
# all its candidates alike so that each sees the same latents and no other candidate)
RANK = torch.tensor([[0.0, 0.0, 0.7, 0.1, 0.0, 0.9, 0.3, 0.7, 0.0]])
# semi_causal_ordered also ranks the clean positions: two givens (-1), then decoded in order 4, 1
ORDERED_RANK = torch.tensor([[-1.0, 2.6, 0.7, 0.1, 1.2, 0.9, 0.3, 0.7, -1.0]])


def expected(structure, window=None):
    m, r = MASKED[0], (ORDERED_RANK if structure == 'semi_causal_ordered' else RANK)[0]
    allow = torch.zeros(T, T, dtype=torch.bool)
    order = {i: k for k, i in enumerate(torch.nonzero(m).flatten().tolist())}   # prefix: distance from cut
    for i, j in itertools.product(range(T), range(T)):
        if structure == 'full': allow[i, j] = True
        elif structure == 'causal': allow[i, j] = j <= i
        elif structure == 'independent': allow[i, j] = (not m[j]) or i == j
        elif structure == 'masked_full': allow[i, j] = (not m[j]) or m[i]
        elif structure == 'semi_causal':
            allow[i, j] = (not m[j]) or i == j or (m[i] and r[j] < r[i])
        elif structure == 'semi_causal_ordered':     # as above, but clean sees clean decoded no later
            allow[i, j] = i == j or (m[i] and (not m[j] or r[j] < r[i])) or (not m[i] and not m[j] and r[j] <= r[i])
        else:
            in_w = lambda p: (not m[p]) or order[p] < window
            if structure == 'prefix': allow[i, j] = i == j or (in_w(i) and in_w(j))
            elif not m[i]: allow[i, j] = i == j or (not m[j] and j <= i)
            else: allow[i, j] = i == j or (in_w(i) and in_w(j))
    return allow


@pytest.mark.parametrize('structure', ['full', 'causal', 'independent', pytest.param('semi_causal', marks=pytest.mark.exercise(1)),
                                       'semi_causal_ordered', 'masked_full', 'prefix', 'causal_prefix'])
def test_each_query_sees_exactly_what_its_structure_allows(structure):
    model = tiny()
    x = torch.randint(3, V, (1, T))
    rank = ORDERED_RANK if structure == 'semi_causal_ordered' else RANK
    if structure in ('prefix', 'causal_prefix'):
        rank = torch.cumsum(MASKED.float(), 1) - 1               # 0, 1, 2, ... from the first masked
    mask = attention_mask(structure, MASKED, rank, window=2)
    allowed = expected(structure, window=2)
    if mask is not None:
        assert torch.equal(mask[0], allowed)
    seen = influence(model, x, mask, is_causal=structure == 'causal')
    assert torch.equal(seen, allowed), f'{structure}: perturbation influence differs from the rule'


@pytest.mark.exercise(1)
def test_semi_causal_rank_semantics():
    mask = attention_mask('semi_causal', MASKED, RANK)[0]
    masked = torch.nonzero(MASKED[0]).flatten().tolist()
    for i in masked:       # a masked position sees exactly the masked positions of lower rank
        assert {j for j in masked if mask[i, j] and j != i} == {j for j in masked if RANK[0, j] < RANK[0, i]}
    for i in torch.nonzero(~MASKED[0]).flatten().tolist():
        assert not mask[i, MASKED[0]].any()           # clean queries never see masked keys
    ind = attention_mask('independent', MASKED)[0]
    for i in masked:
        assert {j for j in masked if ind[i, j]} == {i}


def test_subset_of_positions_with_position_ids_matches_full_sequence():
    """Independent attention: a masked query sees clean + itself, so running only the clean
    positions and that one query (with their position ids, in shuffled order) is exact."""
    model = tiny()
    x = torch.randint(3, V, (1, T))
    full, _ = model(x, attn_mask=attention_mask('independent', MASKED))
    keep = torch.tensor([5, 0, 8, 1, 4])                      # masked position 5 and the clean ones
    sub_masked = MASKED[:, keep]
    sub, _ = model(x[:, keep], pos=keep[None], attn_mask=attention_mask('independent', sub_masked))
    assert torch.allclose(sub[0], full[0, keep], atol=1e-5)


def test_position_ids_beyond_block_size_are_an_error():
    with pytest.raises(ValueError, match='block_size'):
        tiny()(torch.zeros(1, 40, dtype=torch.long))


def test_parameter_count_and_flops_by_hand():
    """V=12 tokens, 32 positions, width 32, 2 layers: embeddings V*d + 32*d; per layer qkv 3d^2,
    proj d^2, MLP 8d^2 and two norms 2d; a final norm d. FLOPs: 6N + 12 L H Q T (PaLM)."""
    d, L = 32, 2
    n = V * d + 32 * d + L * (12 * d * d + 2 * d) + d
    model = tiny(n_layer=L)
    assert model.num_params() == n == 26_144
    assert model.flops_per_token(T) == 6 * n + 12 * L * 2 * 16 * T


def test_absolute_positions_follow_position_ids():
    """The absolute embedding is looked up by position id, not by slot: swapping two tokens
    together with their ids changes nothing but the order of the outputs; swapping the tokens
    alone (full attention, so only positions tell them apart) changes the outputs."""
    model = tiny()
    x = torch.randint(3, V, (1, T))
    base, _ = model(x)
    perm = torch.tensor([3, 1, 2, 0, 4, 5, 8, 7, 6])
    moved, _ = model(x[:, perm], pos=perm[None])
    assert torch.allclose(moved[0], base[0, perm], atol=1e-5)
    x2 = x.clone(); x2[0, [0, 3]] = x[0, [3, 0]]
    if x[0, 0] != x[0, 3]:
        swapped, _ = model(x2)
        assert not torch.allclose(swapped[0, 5], base[0, 5], atol=1e-4)


def test_rotary_is_a_rotation_by_position():
    """RoPE's two properties: it keeps each vector's length, and the score of a rotated query with
    a rotated key depends on their positions only through the offset between them."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 16, dtype=torch.float64).unbind(0)
    def rotated(x, p):
        cos, sin = rotary_cos_sin(torch.tensor([[p]]), 16)
        return rotary(x.view(1, 1, 1, 16), cos.double(), sin.double()).view(16)
    assert torch.allclose(rotated(q, 5).norm(), q.norm())
    score = lambda pq, pk: rotated(q, pq) @ rotated(k, pk)
    assert torch.allclose(score(7, 3), score(4, 0)) and torch.allclose(score(2, 9), score(10, 17))
    assert not torch.allclose(score(7, 3), score(3, 7))          # the offset's sign matters


def test_our_cpu_attention_equals_pytorchs():
    """On CPU model.attend writes attention out (faster here); it must compute what PyTorch's
    scaled_dot_product_attention computes, for a structure mask, causal and no mask: to float32
    rounding in float32, and within bf16 rounding for bf16 inputs."""
    q, k, v = torch.randn(3, 2, 2, T, 16).unbind(0)
    mask = attention_mask('semi_causal', MASKED, RANK)                     # [B, T, T]
    for m, causal in ((mask, False), (None, True), (None, False)):
        ref = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=None if m is None else m[:, None], is_causal=causal)
        torch.testing.assert_close(attend(q, k, v, m, causal, 0.0), ref, atol=1e-5, rtol=1e-4)
        q16, k16, v16 = (t.bfloat16() for t in (q, k, v))
        ref16 = torch.nn.functional.scaled_dot_product_attention(
            q16, k16, v16, attn_mask=None if m is None else m[:, None], is_causal=causal)
        ours16 = attend(q16, k16, v16, m, causal, 0.0)
        assert ours16.dtype == torch.bfloat16
        assert (ours16.float() - ref.float()).abs().max() < 0.05 and (ours16.float() - ref16.float()).abs().max() < 0.05
        with torch.autocast('cpu', dtype=torch.bfloat16):   # autocast runs the products in bf16 whatever
            assert torch.equal(attend(q, k, v, m, causal, 0.0), ours16)   # the inputs' dtype (docstring)


def test_rms_norm_backward_written_out_matches_autograd():
    """model.RMSNorm's hand-written backward (used on CPU) against autograd through PyTorch's
    RMSNorm: same output and same gradients for x and the weight, and a finite-difference check
    in float64."""
    torch.manual_seed(0)
    x, w, g = (torch.randn(*shape, dtype=torch.float64) for shape in ((3, 5, 16), (16,), (3, 5, 16)))
    assert torch.autograd.gradcheck(lambda x, w: RMSNormFunction.apply(x, w, 1e-6),
                                    (x[:2, :2].requires_grad_(), w.clone().requires_grad_()))
    ours, ref = RMSNorm(16).double(), torch.nn.RMSNorm(16).double()
    with torch.no_grad():
        ours.weight.copy_(w); ref.weight.copy_(w)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    ys = [m(xi) for m, xi in zip((ours, ref), xs)]
    torch.testing.assert_close(ys[0], ys[1])
    for y in ys:
        y.backward(g)
    torch.testing.assert_close(xs[0].grad, xs[1].grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)


def test_bf16_autocast_stays_close_to_fp32():
    model, x = tiny(), torch.randint(0, V, (4, T))
    _, ce32 = model(x, targets=x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        _, ce16 = model(x, targets=x)
    assert ce16.dtype == torch.float32 and (ce16 - ce32).abs().max() < 0.05 * ce32.abs().max()


@pytest.mark.slow
def test_compiled_model_matches_eager_on_cpu():
    """torch.compile (on by default on CUDA) must not change a training step's numbers: logits
    and every gradient, checked on CPU (~20 s). The backward matters: a hand-written rotary
    backward once compiled a forward alone and failed inside the compiler in training, with the
    default width and heads and not with the tiny model's (so they are used here)."""
    model, x = tiny(n_head=4, n_embd=128), torch.randint(0, V, (4, T))       # ModelConfig's defaults
    mask = attention_mask('semi_causal', MASKED.expand(4, T), RANK.expand(4, T))
    def training_step(run):
        logits, ce = run(x, attn_mask=mask, targets=x)
        ce.mean().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return logits, grads
    eager, eager_grads = training_step(model)
    compiled, compiled_grads = training_step(torch.compile(model))
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e, atol=1e-5, rtol=1e-3)
