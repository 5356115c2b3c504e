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
import copy, dataclasses, math, os, sys, time
from dataclasses import dataclass, field
import torch
from tqdm import tqdm
from model import ATTNS, ModelConfig, Transformer, attention_mask
from sample import default_decoder, evaluate
from tasks import MASK, TASKS, get_task, load_splits, task_options
from utils import autocast, load_checkpoint, parse_settings, parse_value, resolve_system, save_checkpoint


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
    grad_clip: float = 1.0            # 0 = off
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


DIFFUSION_ATTNS = ('full', 'independent', 'semi_causal')
TASK_OPTIONS = sorted({p for name in TASKS for p in task_options(name)})


def settings(argv, cfg=None, bench=True, refuse=None):
    """Parse --key=value; task options (--size=9) go to cfg.task_options. Defaults that do not
    apply to the chosen task are dropped; a wrong task option is reported by get_task.
    Returns (cfg, bench?)."""
    cfg, extra = parse_settings(cfg or TrainConfig(), argv, extra=TASK_OPTIONS + (['bench'] if bench else []),
                                refuse=refuse)
    do_bench = parse_value(str(extra.pop('bench', False)), False, 'bench')
    valid = task_options(cfg.task)
    cfg.task_options = {**{k: v for k, v in cfg.task_options.items() if k in valid},
                        **{k: parse_value(v) if isinstance(v, str) else v for k, v in extra.items()}}
    return cfg, do_bench


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
    _, ce = model(x_t, attn_mask=attention_mask(cfg.attn, masked, rank), targets=ids)
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


def train(cfg, loss_fn=diffusion_loss, attn=None, decoder=None, quiet=False):
    """Train, evaluate, checkpoint. loss_fn(model, ids, answer_mask, cfg, gen) -> (loss, ce).
    `attn`/`decoder` say how the model attends and how evaluation decodes it (default: cfg.attn
    and its row of sample.DECODERS). Returns (final metrics, checkpoint path)."""
    attn = attn or cfg.attn
    if attn not in ATTNS:
        raise SystemExit(f'error: unknown attn {attn!r}; choose from {ATTNS}')
    decoder = decoder or default_decoder(attn)
    device, dtype, use_compile = resolve_system(cfg.device, cfg.dtype, cfg.compile)
    try:
        task = get_task(cfg.task, **cfg.task_options)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    splits = load_splits(task, cfg.n_train, cfg.n_val, cfg.n_test, cfg.data_seed, cfg.data_dir)
    ids, answer_mask = (torch.from_numpy(a).to(device) for a in task.encode_batch(splits['train']))
    val_ids, val_answer = (torch.from_numpy(a).to(device) for a in task.encode_batch(splits['val']))
    if cfg.mask_all:
        answer_mask[:], val_answer[:] = True, True

    torch.manual_seed(cfg.seed)                                     # initial weights, dropout
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
    # EMA: a second copy of the weights, averaged after every step; evaluation and the saved
    # 'model' use it. Without EMA, eval_model is the trained model itself.
    ema_model = copy.deepcopy(model).requires_grad_(False) if cfg.ema > 0 else None
    eval_model = ema_model or model
    ckpt_path = os.path.join(cfg.out_dir, 'ckpt.pt')
    step, history = 0, []
    if cfg.resume:
        _, ckpt = load_checkpoint(ckpt_path, device)
        if ckpt['model_config'] != dataclasses.asdict(model_cfg) or ckpt['task_config'] != task.config():
            raise SystemExit(f'error: {ckpt_path} was trained with another model or task; '
                             'use a fresh --out_dir or the same settings')
        model.load_state_dict(ckpt.get('raw_model', ckpt['model']))
        if ema_model is not None: ema_model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        step, history = ckpt['step'], ckpt['history']
        gen.set_state(ckpt['rng']['gen'].cpu())        # generator states are CPU byte tensors
        torch.set_rng_state(ckpt['rng']['torch'].cpu())
        if device == 'cuda': torch.cuda.set_rng_state(ckpt['rng']['cuda'].cpu())
    step_model = torch.compile(model) if use_compile else model

    if not quiet:
        print(f'{task.name} {task.options} | {attn} | {model.num_params() / 1e6:.2f}M params | '
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
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if not torch.isfinite(loss.detach() + grad_norm):   # stop before the bad step touches the weights
            bar.close()
            raise SystemExit(f'error: training diverged at step {step}: loss {loss.item():.4g}, gradient norm '
                             f'{grad_norm.item():.4g} (lr {lr:.2g}). Nothing was saved; the last checkpoint '
                             f'{ckpt_path} (step {history[-1]["step"] if history else "none"}) is untouched. '
                             'Lower --learning_rate or use --grad_clip=1.')
        optimizer.step()
        if ema_model is not None:
            with torch.no_grad():
                for e, p in zip(ema_model.parameters(), model.parameters()): e.lerp_(p, 1 - cfg.ema)
        tokens += ids.shape[1] * cfg.batch_size
        if step % 10 == 0:
            bar.set_postfix(loss=f'{loss.item():.4f}', ce=f'{ce.item():.4f}', lr=f'{lr:.1e}',
                            tok_s=f'{tokens / (time.time() - t0):.0f}', val_acc=metrics.get('val_accuracy', '-'))
        if (step + 1) % cfg.eval_interval != 0 and step + 1 != cfg.max_iters:
            continue
        # evaluate: validation loss on fixed batches, then solve accuracy on eval_n val puzzles
        step += 1                                       # the checkpoint holds the *next* step
        eval_model.eval()
        g = torch.Generator(device=device).manual_seed(1234)
        with torch.no_grad(), autocast(device, dtype):
            val_losses = [float(loss_fn(eval_model, val_ids[i], val_answer[i], cfg, g)[0]) for i in
                          (torch.randint(len(val_ids), (cfg.batch_size,), generator=g, device=device)
                           for _ in range(cfg.eval_iters))]
        acc = evaluate(eval_model, task, splits['val'][:cfg.eval_n], attn, decoder, device=device, dtype=dtype)
        model.train()
        metrics = dict(step=step, val_loss=sum(val_losses) / len(val_losses), val_accuracy=acc['accuracy'],
                       train_loss=loss.item())
        history.append(metrics)
        rng = dict(gen=gen.get_state(), torch=torch.get_rng_state())
        if device == 'cuda': rng['cuda'] = torch.cuda.get_rng_state()
        state = dict(model=eval_model.state_dict(), model_config=dataclasses.asdict(model_cfg),
                     task_config=task.config(), train_config=dataclasses.asdict(cfg), attn=attn, decoder=decoder,
                     optimizer=optimizer.state_dict(), step=step, history=history, metrics=metrics, rng=rng)
        if ema_model is not None: state['raw_model'] = model.state_dict()
        save_checkpoint(ckpt_path, **state)
        if not quiet:
            tqdm.write(f'step {step}: val loss {metrics["val_loss"]:.4f}, '
                       f'val solve accuracy {metrics["val_accuracy"]:.1%} ({cfg.eval_n} puzzles)')
    bar.close()
    return metrics, ckpt_path


# ----------------------------------------------------------------------------------------------
# Benchmark: training tokens/s for each attention structure vs a plain causal model of the same
# size, in the same run (the generality of the mask builder should cost close to nothing).

def bench(cfg, iters=20):
    device, dtype, use_compile = resolve_system(cfg.device, cfg.dtype, cfg.compile)
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
    if cfg.attn not in DIFFUSION_ATTNS:
        raise SystemExit(f'error: train_mdlm.py trains --attn={"|".join(DIFFUSION_ATTNS)}; '
                         'AR models are trained by train_ar_mtp.py')
    if do_bench:
        bench(cfg)
    else:
        metrics, path = train(cfg)
        print(f'final: val solve accuracy {metrics["val_accuracy"]:.1%}, checkpoint {path}')
