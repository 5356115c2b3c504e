"""
train_mdlm.py: masked diffusion training for MDM (attn=full), SIDM (attn=independent) and
SCDM (attn=semi_causal). One loop; only the attention structure changes.

What it teaches: the MDLM objective in a dozen lines (`diffusion_loss`), and a small,
complete training loop (AdamW, warmup + cosine, clipping, EMA, bf16 autocast, torch.compile,
periodic solve-accuracy evaluation, atomic checkpoints, exact resume). train_ar_mtp.py reuses
this loop with its own loss.

    python train_mdlm.py                                   # CPU quick start: 6x6 Sudoku, SCDM
    python train_mdlm.py --attn=full --out_dir=out/mdm
    python train_mdlm.py presets/sudoku9_gpu.json          # paper scale, one GPU
    python train_mdlm.py --resume                          # continue out_dir/ckpt.pt
    python train_mdlm.py --bench                           # training tokens/s per structure
"""
import dataclasses, math, os, random, sys, time
from dataclasses import dataclass, field
import numpy as np
import torch
from tqdm import tqdm
from model import (ModelConfig, Transformer, STRUCTURES, attention_mask, autocast, load_checkpoint,
                   parse_settings, pick_device, save_checkpoint)
from tasks import MASK, TASKS, get_task, load_splits, parse_value, task_options
from sample import default_decoder, evaluate


@dataclass
class TrainConfig:
    # task (task options such as --size=6 --givens=14 land in task_options)
    task: str = 'sudoku'
    task_options: dict = field(default_factory=lambda: dict(size=6))
    n_train: int = 20000
    n_val: int = 500
    n_test: int = 1000
    data_seed: int = 0
    data_dir: str = 'data'
    # model
    attn: str = 'semi_causal'         # full (MDM) | independent (SIDM) | semi_causal (SCDM)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    # diffusion
    mask_all: bool = False            # mask every position, not only the answer
    eps: float = 1e-3                 # t ~ U(eps, 1)
    # AR / AR+MTP (used by train_ar_mtp.py)
    mtp_window: int = 0               # 0: plain AR;  W > 0 (or -1 = all): AR+MTP
    ntp_only: bool = False            # ablation: loss on the first masked position only
    prefix: str = 'full'              # full (paper) | causal (ours: a cacheable prefix)
    # optimisation
    batch_size: int = 128
    max_iters: int = 1500
    learning_rate: float = 2e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay: str = 'cosine'          # cosine | constant
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema: float = 0.0                  # e.g. 0.999; 0 = off. Evaluation and sampling use EMA weights
    # evaluation, checkpoints
    eval_interval: int = 500
    eval_iters: int = 10              # validation-loss batches
    eval_n: int = 200                 # validation puzzles decoded for solve accuracy
    out_dir: str = 'out/mdlm'
    resume: bool = False
    # system
    device: str = 'auto'              # auto | cpu | cuda | mps
    dtype: str = 'auto'               # auto (bf16 where supported) | bfloat16 | float16 | float32
    compile: str = 'auto'             # auto (on for CUDA) | true | false
    seed: int = 0


TASK_OPTIONS = sorted({p for name in TASKS for p in task_options(name)})


def settings(argv, cfg=None):
    """Parse --key=value; task options (--size=9) go to cfg.task_options. Defaults that do not
    apply to the chosen task are dropped; a wrong task option is reported by get_task."""
    cfg, extra = parse_settings(cfg or TrainConfig(), argv, extra=TASK_OPTIONS + ['bench'])
    bench = extra.pop('bench', False)
    valid = task_options(cfg.task)
    cfg.task_options = {**{k: v for k, v in cfg.task_options.items() if k in valid},
                        **{k: parse_value(v) if isinstance(v, str) else v for k, v in extra.items()}}
    return cfg, bench


def resolve_system(cfg):
    device = pick_device(cfg.device)
    dtype = cfg.dtype
    if dtype == 'auto':  # bf16 on CUDA and on CPUs with bf16 instructions (measured ~2x faster here)
        cpu_bf16 = device == 'cpu' and 'AVX512' in torch.backends.cpu.get_cpu_capability()
        dtype = 'bfloat16' if (device == 'cuda' and torch.cuda.is_bf16_supported()) or cpu_bf16 else 'float32'
    use_compile = device == 'cuda' if cfg.compile == 'auto' else str(cfg.compile).lower() == 'true'
    return device, dtype, use_compile


# ----------------------------------------------------------------------------------------------
# The masked diffusion loss (MDLM, Sahoo et al. 2024), log-linear schedule alpha_t = 1 - t:
#
#     L = E_{t ~ U(eps,1)} E_{x_t ~ q(.|x, t)} [ (1/t) * sum_{i: x_t^i = MASK} -log p_theta(x^i | x_t) ] / |answer|
#
# Each answer position is masked independently with probability t. Since E[#masked] = t |answer|,
# the 1/t weight makes every t count equally per answer token. The model gets no t: a masked
# model is time-agnostic. SCDM draws a fresh random rank per position: masked position i sees
# the masked positions of lower rank, so one batch trains every latent count 0..|M|-1.

def mdlm_loss(ce, masked, t, answer_mask):
    """The equation above, given per-token cross-entropy ce [B, T], the mask and t [B]."""
    return (ce * masked / t[:, None]).sum() / answer_mask.sum()


def diffusion_loss(model, ids, answer_mask, cfg, gen):
    B, T = ids.shape
    u = (torch.rand(1, generator=gen, device=ids.device) + torch.arange(B, device=ids.device) / B) % 1
    t = cfg.eps + (1 - cfg.eps) * u                          # stratified t: lower variance
    masked = answer_mask & (torch.rand(B, T, generator=gen, device=ids.device) < t[:, None])
    rank = torch.rand(B, T, generator=gen, device=ids.device)  # only used by semi_causal
    x_t = ids.masked_fill(masked, MASK)
    _, ce = model(x_t, mask=attention_mask(cfg.attn, masked, rank), targets=ids)
    loss = mdlm_loss(ce, masked, t, answer_mask)
    plain_ce = (ce * masked).sum() / masked.sum().clamp(min=1)  # easier to read than the ELBO
    return loss, plain_ce


# ----------------------------------------------------------------------------------------------
# The training loop (shared with train_ar_mtp.py)

def lr_at(it, cfg):
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / cfg.warmup_iters
    if cfg.lr_decay == 'constant':
        return cfg.learning_rate
    progress = min(1.0, (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def train(cfg, loss_fn=diffusion_loss, structure=None, decoder=None, quiet=False):
    """Train, evaluate, checkpoint. loss_fn(model, ids, answer_mask, cfg, gen) -> (loss, ce).
    `structure`/`decoder` tell evaluation how to decode this model. Returns the final metrics."""
    structure = structure or cfg.attn
    if structure not in STRUCTURES:
        raise SystemExit(f'error: unknown attn {structure!r}; choose from {STRUCTURES}')
    device, dtype, use_compile = resolve_system(cfg)
    try:
        task = get_task(cfg.task, **cfg.task_options)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    splits = load_splits(task, cfg.n_train, cfg.n_val, cfg.n_test, cfg.data_seed, cfg.data_dir)
    ids, answer_mask = (torch.from_numpy(a).to(device) for a in task.encode_batch(splits['train']))
    val_ids, val_answer = (torch.from_numpy(a).to(device) for a in task.encode_batch(splits['val']))
    if cfg.mask_all:
        answer_mask[:], val_answer[:] = True, True

    torch.manual_seed(cfg.seed); random.seed(cfg.seed); np.random.seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)     # data order and masking
    model_cfg = ModelConfig(vocab_size=len(task.vocab), block_size=task.seq_len, n_layer=cfg.n_layer,
                            n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout)
    model = Transformer(model_cfg).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=cfg.weight_decay),
                                   dict(params=no_decay, weight_decay=0.0)],
                                  lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                                  fused=device == 'cuda')
    ema = [p.detach().clone() for p in model.parameters()] if cfg.ema > 0 else None
    ckpt_path = os.path.join(cfg.out_dir, 'ckpt.pt')
    step, history = 0, []
    if cfg.resume:
        _, ckpt = load_checkpoint(ckpt_path, device)
        if ckpt['model_config'] != dataclasses.asdict(model_cfg) or ckpt['task_config'] != task.config():
            raise SystemExit(f'error: {ckpt_path} was trained with another model or task; '
                             'use a fresh --out_dir or the same settings')
        model.load_state_dict(ckpt['raw_model'] if 'raw_model' in ckpt else ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        if ema is not None and 'model' in ckpt:
            for e, v in zip(ema, ckpt['model'].values()): e.copy_(v)
        step, history = ckpt['step'], ckpt.get('history', [])
        gen.set_state(ckpt['rng']['gen'].cpu())        # generator states are CPU byte tensors
        torch.set_rng_state(ckpt['rng']['torch'])
        np.random.set_state(ckpt['rng']['numpy']); random.setstate(ckpt['rng']['python'])
    step_model = torch.compile(model) if use_compile else model

    def eval_weights():
        """Swap EMA weights in for evaluation/saving; returns a function that swaps back."""
        if ema is None: return lambda: None
        raw = [p.detach().clone() for p in model.parameters()]
        for p, e in zip(model.parameters(), ema): p.data.copy_(e)
        return lambda: [p.data.copy_(r) for p, r in zip(model.parameters(), raw)]

    def run_eval():
        restore = eval_weights()
        model.eval()
        g = torch.Generator(device=device).manual_seed(1234)       # same val batches every time
        with torch.no_grad(), autocast(device, dtype):
            losses = [float(loss_fn(model, val_ids[idx], val_answer[idx], cfg, g)[0])
                      for idx in (torch.randint(len(val_ids), (cfg.batch_size,), generator=g, device=device)
                                  for _ in range(cfg.eval_iters))]
        acc = evaluate(model, task, splits['val'][:cfg.eval_n], structure, decoder, device=device, dtype=dtype)
        model.train()
        raw_state = {k: v.clone() for k, v in model.state_dict().items()}
        restore()
        return dict(step=step, val_loss=sum(losses) / len(losses), val_accuracy=acc['accuracy']), raw_state

    def save(metrics, eval_state):
        state = dict(model=eval_state, model_config=dataclasses.asdict(model_cfg), task_config=task.config(),
                     train_config=dataclasses.asdict(cfg), structure=structure, decoder=decoder,
                     optimizer=optimizer.state_dict(), step=step, history=history, metrics=metrics,
                     rng=dict(gen=gen.get_state(), torch=torch.get_rng_state(), numpy=np.random.get_state(),
                              python=random.getstate()))
        if ema is not None: state['raw_model'] = model.state_dict()
        save_checkpoint(ckpt_path, **state)

    if not quiet:
        print(f'{task.name} {task.options} | {structure} | {model.num_params() / 1e6:.2f}M params | '
              f'{len(ids)} train examples, seq_len {task.seq_len} | {device} {dtype} compile={use_compile}')
    model.train()
    bar = tqdm(range(step, cfg.max_iters), initial=step, total=cfg.max_iters, disable=quiet, dynamic_ncols=True)
    t0, tokens, metrics = time.time(), 0, history[-1] if history else {}
    for step in bar:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups: group['lr'] = lr
        idx = torch.randint(len(ids), (cfg.batch_size,), generator=gen, device=device)
        with autocast(device, dtype):
            loss, ce = loss_fn(step_model, ids[idx], answer_mask[idx], cfg, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                for e, p in zip(ema, model.parameters()): e.lerp_(p, 1 - cfg.ema)
        tokens += ids.shape[1] * cfg.batch_size
        if step % 10 == 0:
            bar.set_postfix(loss=f'{loss.item():.4f}', ce=f'{ce.item():.4f}', lr=f'{lr:.1e}',
                            tok_s=f'{tokens / (time.time() - t0):.0f}', val_acc=metrics.get('val_accuracy', '-'))
        last = step + 1 == cfg.max_iters
        if (step + 1) % cfg.eval_interval == 0 or last:
            step += 1                                   # the checkpoint holds the *next* step
            metrics, eval_state = run_eval()
            metrics['train_loss'] = loss.item()
            history.append(metrics)
            save(metrics, eval_state)
            if not quiet:
                tqdm.write(f'step {step}: val loss {metrics["val_loss"]:.4f}, '
                           f'val solve accuracy {metrics["val_accuracy"]:.1%} ({cfg.eval_n} puzzles)')
    bar.close()
    return metrics, ckpt_path


# ----------------------------------------------------------------------------------------------
# Benchmark: training tokens/s for each attention structure vs a plain causal model of the same
# size, in the same run (the generality of the mask builder should cost close to nothing).

def bench(cfg, iters=20):
    device, dtype, use_compile = resolve_system(cfg)
    task = get_task(cfg.task, **cfg.task_options)
    T, B = task.seq_len, cfg.batch_size
    model = Transformer(ModelConfig(len(task.vocab), T, cfg.n_layer, cfg.n_head, cfg.n_embd)).to(device)
    step_model = torch.compile(model) if use_compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(3, len(task.vocab), (B, T), device=device)
    answer = torch.zeros(B, T, dtype=torch.bool, device=device); answer[:, task.prompt_len + 1:] = True
    gen = torch.Generator(device=device).manual_seed(0)
    results = {}

    def causal_loss(m, ids, answer_mask, cfg, gen):
        _, ce = m(ids, is_causal=True, targets=ids.roll(-1, 1))
        return ce.mean(), ce.mean()

    for name in ['causal', 'full', 'independent', 'semi_causal', 'causal', 'full', 'independent', 'semi_causal']:
        c = dataclasses.replace(cfg, attn=name)
        fn = causal_loss if name == 'causal' else diffusion_loss
        for i in range(iters + 3):
            if i == 3:
                if device == 'cuda': torch.cuda.synchronize()
                t = time.time()
            with autocast(device, dtype):
                loss, _ = fn(step_model, ids, answer, c, gen)
            opt.zero_grad(); loss.backward(); opt.step()
        if device == 'cuda': torch.cuda.synchronize()
        results[name] = B * T * iters / (time.time() - t)     # second round overwrites the warm-up round
    print(f'{task.name} {task.options}, {model.num_params() / 1e6:.2f}M params, batch {B} x {T} tokens, '
          f'{device} {dtype} compile={use_compile}')
    for name, tps in results.items():
        mfu = f', MFU {model.estimate_mfu(tps, T):.1%}' if device == 'cuda' else ''
        print(f'  {name:12s} {tps:10.0f} tokens/s  ({tps / results["causal"]:.2f}x causal{mfu})')
    return results


if __name__ == '__main__':
    cfg, do_bench = settings(sys.argv[1:])
    if do_bench:
        bench(cfg)
    else:
        metrics, path = train(cfg)
        print(f'final: val solve accuracy {metrics["val_accuracy"]:.1%}, checkpoint {path}')
