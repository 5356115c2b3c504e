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
    python train_mdlm.py --resume                          # continue out_dir/ckpt.pt (saved at each evaluation and on Ctrl-C)
    python train_mdlm.py --bench                           # training tokens/s against a plain GPT
    torchrun --standalone --nproc_per_node=2 train_mdlm.py # data-parallel, one process per device
"""
import copy, dataclasses, math, os, statistics, sys, time
from contextlib import nullcontext
from dataclasses import dataclass, field
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm
from model import ATTNS, INIT_STD, ModelConfig, Transformer, attend, attention_mask
from sample import ATTN_METHOD, default_decoder, evaluate
from data import check_writable, load_splits, on_ctrl_c
from tasks import MASK, TASKS, get_task, task_options
from configurator import parse_settings, refuse_unused
from utils import autocast, load_checkpoint, resolve_system, save_checkpoint


@dataclass
class TrainConfig:
    # task (task options such as --size=6 --givens=14 land in task_options)
    task: str = 'sudoku'              # sudoku | sudoku_gen | countdown | zebra | path_star
    task_options: dict = field(default_factory=lambda: dict(size=6))
    n_train: int = 20000              # training examples (generated once, cached under data_dir)
    n_val: int = 500
    n_test: int = 1000
    data_seed: int = 0
    data_dir: str = 'data'
    # model
    attn: str = 'semi_causal'         # full (MDM) | independent (SIDM) | semi_causal (SCDM)
                                      # | semi_causal_ordered (ours) | masked_full (ours, an ablation)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    # diffusion
    mask_all: bool = False            # mask every position, not only the answer
    eps: float = 1e-3                 # t ~ U(eps, 1)
    independent_share: float = 0.0    # SCDM (ours, off by default): this share of examples ranks all its
                                      # masked positions alike, so none sees another: k = 0's view, trained
                                      # at every masked position of them (results/studies.md)
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
    out_dir: str = 'out/mdlm'         # the checkpoint goes to out_dir/ckpt.pt
    resume: bool = False              # continue out_dir/ckpt.pt exactly (data order, optimizer state)
    grad_accum: int = 1               # batch_size is split into this many steps per process
    # system
    device: str = 'auto'              # auto (cuda, else cpu) | cpu | cuda | mps (untried); torchrun: a device a process
    dtype: str = 'auto'               # auto (bf16 where supported) | bfloat16 | float16 | float32
    compile: str = 'auto'             # auto (on for CUDA) | true | false
    seed: int = 0                     # initial weights, dropout, batch order and masking noise
    init_seed: int = -1               # initial weights and dropout alone (-1: seed); to tell which one a result depends on
    init_std: float = INIT_STD        # scale of the initial weights (GPT-2's 0.02); the seed fixes the draw


DIFFUSION_ATTNS = tuple(a for a, method in ATTN_METHOD.items() if method in ('mdm', 'latent'))   # sample.py's table
TASK_OPTIONS = sorted({p for name in TASKS for p in task_options(name)})


# Settings that do not change what a run computes: they may differ when a checkpoint is resumed.
SYSTEM_SETTINGS = ('out_dir', 'resume', 'device', 'compile', 'eval_interval', 'eval_iters', 'eval_n')


def changed_since_checkpoint(saved, cfg):
    """'key: saved -> now' for every training setting of cfg that differs from a checkpoint's
    saved train_config (empty string when none does). A setting added after the checkpoint was
    written counts as its default, which is what the checkpoint was trained with."""
    saved = {**{f.name: f.default for f in dataclasses.fields(cfg)}, **saved}
    return ', '.join(f'{k}: {saved[k]!r} -> {v!r}' for k, v in dataclasses.asdict(cfg).items()
                     if k not in SYSTEM_SETTINGS and saved[k] != v)


# What --bench builds and times: one training step of every model, at this size and batch. Any
# other setting on the command line would be ignored, so it is refused; a preset's other settings
# are not (the 19M bench borrows presets/sudoku9_gpu.json for its size alone).
BENCH_SETTINGS = ('task', 'task_options', 'n_layer', 'n_head', 'n_embd', 'batch_size', 'eps', 'device', 'dtype', 'compile')


def settings(argv, cfg=None, bench=True, refuse=None):
    """Parse --key=value; task options (--size=9) go to cfg.task_options. Defaults that do not
    apply to the chosen task are dropped; a task option the task does not have is an error here,
    before training or the benchmark starts. Returns (cfg, bench?)."""
    cfg, extra = parse_settings(cfg or TrainConfig(), argv, extra=TASK_OPTIONS + (['bench'] if bench else []),
                                refuse=refuse)
    do_bench = bool(extra.pop('bench', False))
    if do_bench:
        given = [arg[2:].partition('=')[0] for arg in argv if arg.startswith('--')]
        refuse_unused(cfg, (), '--bench', 'it times one training step of every model: only the size, batch, '
                      'task and system settings count; a preset may set others',
                      extras=[k for k in given if k not in (*BENCH_SETTINGS, *TASK_OPTIONS, 'bench', 'preset')])
    valid = task_options(cfg.task)
    cfg.task_options = {**{k: v for k, v in cfg.task_options.items() if k in valid}, **extra}
    try:
        get_task(cfg.task, **cfg.task_options)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    return cfg, do_bench


def check_settings(cfg):
    """Values no run can train with: an error that says why, before any data, model or file is
    made (not a traceback, a silent fallback or a misleading 'diverged' later)."""
    rules = [
        (cfg.max_iters >= 1, 'max_iters must be at least 1'),
        (cfg.batch_size >= 1 and cfg.grad_accum >= 1, 'batch_size and grad_accum must be at least 1'),
        (min(cfg.n_train, cfg.n_val, cfg.n_test) >= 1, 'n_train, n_val and n_test must be at least 1'),
        (cfg.learning_rate > 0 and cfg.min_lr >= 0, 'learning_rate must be positive and min_lr not negative'),
        (cfg.warmup_iters >= 0, 'warmup_iters must not be negative'),
        (cfg.lr_decay in ('cosine', 'constant'), f'lr_decay must be cosine or constant, not {cfg.lr_decay!r}'),
        (cfg.weight_decay >= 0 and cfg.grad_clip >= 0, 'weight_decay and grad_clip must not be negative'),
        (0 <= cfg.ema < 1, 'ema must be at least 0 (off) and below 1'),
        (0 <= cfg.dropout < 1, 'dropout must be at least 0 and below 1'),
        (0 < cfg.eps < 1, 'eps must be between 0 and 1: t is drawn from U(eps, 1)'),
        (min(cfg.n_layer, cfg.n_head, cfg.n_embd) >= 1, 'n_layer, n_head and n_embd must be at least 1'),
        (cfg.n_head < 1 or cfg.n_embd % (2 * cfg.n_head) == 0,
         f'n_embd ({cfg.n_embd}) must be a multiple of 2 x n_head ({cfg.n_head}): each head rotates pairs of channels'),
        (cfg.eval_interval >= 1 and cfg.eval_iters >= 1 and cfg.eval_n >= 1,
         'eval_interval, eval_iters and eval_n must be at least 1'),
        (cfg.init_std > 0, f"init_std must be positive (the initial weights' scale), got {cfg.init_std}"),
        (0 <= cfg.independent_share <= 1, f'independent_share is a share of examples, 0 to 1, got {cfg.independent_share}'),
        (cfg.independent_share == 0 or ATTN_METHOD.get(cfg.attn) == 'latent',   # the ranked structures
         f'independent_share ranks masked positions alike: it applies to semi_causal models, not --attn={cfg.attn}'),
    ]
    for ok, why in rules:
        if not ok:
            raise SystemExit(f'error: {why}')


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
    # EXERCISE 2: the MDLM loss
    return (ce * masked / t[:, None]).sum() / answer_mask.sum()
    # END EXERCISE 2


def diffusion_loss(model, ids, answer_mask, cfg, gen, rows=slice(None)):
    """The noise is drawn for the whole batch, then only `rows` go through the model (a
    data-parallel rank's or an accumulation step's share): splitting a batch changes nothing."""
    B, T = ids.shape
    u = (torch.rand(1, generator=gen, device=ids.device) + torch.arange(B, device=ids.device) / B) % 1
    t = cfg.eps + (1 - cfg.eps) * u                          # stratified t: lower variance
    masked = answer_mask & (torch.rand(B, T, generator=gen, device=ids.device) < t[:, None])
    rank = torch.rand(B, T, generator=gen, device=ids.device)  # only used by semi_causal(_ordered)
    if cfg.independent_share > 0:                   # ours: equal ranks do not see each other
        alike = torch.rand(B, 1, generator=gen, device=ids.device) < cfg.independent_share
        rank = rank.masked_fill(alike, 0.5)
    if cfg.attn == 'semi_causal_ordered':          # the givens come before every decoded position
        rank = rank.masked_fill(~answer_mask, -1.0)
    ids, answer_mask, masked, rank, t = ids[rows], answer_mask[rows], masked[rows], rank[rows], t[rows]
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


def setup_ddp(device):
    """Under torchrun (RANK set): join the process group (nccl on CUDA, gloo on CPU), one device
    per process, each CPU process with its share of the cores.
    -> (rank, world size, device, whether this call joined the group, and so must leave it)"""
    if 'RANK' not in os.environ:
        return 0, 1, device, False
    rank, local_rank, world = (int(os.environ[k]) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'))
    if device.startswith('cuda'):
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get('LOCAL_WORLD_SIZE', world))))
    joined = not dist.is_initialized()
    if joined:
        try:
            dist.init_process_group('nccl' if device.startswith('cuda') else 'gloo')
        except (ValueError, RuntimeError) as e:
            raise SystemExit(f'error: cannot join the process group ({e}); start with torchrun, e.g. '
                             '`torchrun --standalone --nproc_per_node=2 train_mdlm.py`')
    return rank, world, device, joined


def end_torchrun_process():
    """Under torchrun, end the process here, skipping Python's shutdown (call it last). PyTorch's
    DistributedDataParallel keeps the gloo process group and its worker threads alive after
    destroy_process_group; at shutdown they can abort a run that went fine ("terminate called
    without an active exception", exit -6: 1 in 60 two-process runs here). Everything is saved
    and printed by then."""
    if 'RANK' in os.environ:
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(0)


def load_data(cfg, progress=False):
    """-> (task, its train/val/test splits): generated once, then read from cfg.data_dir. A task
    that cannot make them (e.g. too few givens for unique puzzles) is an error that says why."""
    task = get_task(cfg.task, **cfg.task_options)
    try:
        return task, load_splits(task, cfg.n_train, cfg.n_val, cfg.n_test, cfg.data_seed, cfg.data_dir, progress=progress)
    except ValueError as e:
        raise SystemExit(f'error: {e}')


class Stopped(SystemExit):
    """Training stopped by Ctrl-C after saving a checkpoint (the message says which and where), so
    that a caller with its own way to continue (reproduce.py) can say so instead."""


def train(cfg, loss_fn=diffusion_loss, attn=None, decoder=None, quiet=False, same_settings=False):
    """Train, evaluate, checkpoint. loss_fn(model, ids, answer_mask, cfg, gen, rows) -> (loss, ce).
    `attn`/`decoder` say how the model attends and how evaluation decodes it (default: cfg.attn
    and its row of sample.DECODERS). Under torchrun, data-parallel: every process draws the same
    global batch and computes its own rows; rank 0 alone logs, evaluates and saves.
    On resume, settings that differ from the checkpoint's are printed, or refused with
    same_settings=True. Ctrl-C (one process) finishes the step under way, saves a checkpoint that
    --resume continues exactly, and stops with Stopped (a SystemExit). Returns (final metrics, checkpoint path)."""
    attn = attn or cfg.attn
    if attn not in ATTNS:
        raise SystemExit(f'error: unknown attn {attn!r}; choose from {ATTNS}')
    check_settings(cfg)
    check_writable(cfg.out_dir, 'out_dir', 'hold checkpoints', folder=True)
    decoder = decoder or default_decoder(attn)
    device, dtype, use_compile = resolve_system(cfg.device, cfg.dtype, cfg.compile)
    rank, world, device, joined = setup_ddp(device)
    micro = cfg.batch_size // (world * cfg.grad_accum)            # rows per process per accumulation step
    if micro * world * cfg.grad_accum != cfg.batch_size:          # (check_settings: grad_accum >= 1)
        raise SystemExit(f'error: batch_size {cfg.batch_size} must split evenly over {world} processes x '
                         f'grad_accum {cfg.grad_accum} (at least one example each)')
    quiet = quiet or rank != 0
    task, splits = load_data(cfg, progress=not quiet)
    ids, answer_mask = (torch.from_numpy(a).to(device) for a in task.encode_batch(splits['train']))
    val_ids, val_answer = (torch.from_numpy(a).to(device) for a in task.encode_batch(splits['val']))
    if cfg.mask_all:
        answer_mask[:], val_answer[:] = True, True

    torch.manual_seed(cfg.seed if cfg.init_seed < 0 else cfg.init_seed)    # initial weights, dropout
    gen = torch.Generator(device=device).manual_seed(cfg.seed)     # data order and masking
    model_cfg = ModelConfig(vocab_size=len(task.vocab), block_size=task.seq_len, n_layer=cfg.n_layer,
                            n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout)
    model = Transformer(model_cfg, cfg.init_std).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=cfg.weight_decay),
                                   dict(params=no_decay, weight_decay=0.0)],
                                  lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                                  fused=device.startswith('cuda'))
    # float16 (for GPUs without bf16) keeps 5 exponent bits: small gradients underflow to zero
    # unless the loss is scaled up first (and the gradients down before clipping). The scaler
    # skips a step whose gradients overflowed and lowers the scale. bf16 and float32 need none.
    scaler = torch.amp.GradScaler(device.split(':')[0], enabled=dtype == 'float16')
    # EMA: a second copy of the weights, averaged after every step; evaluation and the saved
    # 'model' use it. Without EMA, eval_model is the trained model itself.
    ema_model = copy.deepcopy(model).requires_grad_(False) if cfg.ema > 0 else None
    eval_model = ema_model or model
    ckpt_path = os.path.join(cfg.out_dir, 'ckpt.pt')
    step, history = 0, []
    # A fresh run into a folder holding a checkpoint: that earlier run is kept, once, as ckpt.prev.pt
    # when this run first saves (at its first evaluation, or on Ctrl-C), not lost to a rerun.
    earlier = [os.path.join(cfg.out_dir, 'ckpt.prev.pt')] if not cfg.resume and os.path.exists(ckpt_path) else []
    if earlier and not quiet:
        print(f'{ckpt_path} holds an earlier run: this run keeps it as {earlier[0]} when it first saves '
              '(--resume continues it instead)')
    if cfg.resume:
        _, ckpt = load_checkpoint(ckpt_path, device)
        if ckpt['model_config'] != dataclasses.asdict(model_cfg) or ckpt['task_config'] != task.config():
            raise SystemExit(f'error: {ckpt_path} was trained with another model or task; '
                             'use a fresh --out_dir or the same settings')
        changed = changed_since_checkpoint(ckpt['train_config'], cfg)
        if changed and same_settings:       # reproduce.py: never continue (or only evaluate) an old recipe
            raise SystemExit(f'error: {ckpt_path} was trained with other settings ({changed}); '
                             'delete it or choose another out_dir')
        if changed and not quiet:
            print(f'resuming {ckpt_path} with changed settings: {changed}')
        model.load_state_dict(ckpt.get('raw_model', ckpt['model']))
        if ema_model is not None: ema_model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        if ckpt.get('scaler'): scaler.load_state_dict(ckpt['scaler'])
        step, history = ckpt['step'], ckpt['history']
        gen.set_state(ckpt['rng']['gen'].cpu())        # generator states are CPU byte tensors
        torch.set_rng_state(ckpt['rng']['torch'].cpu())
        if device.startswith('cuda'): torch.cuda.set_rng_state(ckpt['rng']['cuda'].cpu())
    step_model = torch.compile(model) if use_compile else model
    if world > 1:
        step_model = DDP(step_model, device_ids=[torch.device(device).index] if device.startswith('cuda') else None)

    if not quiet:
        print(f'{task.name} {task.options} | {attn} | {model.num_params() / 1e6:.2f}M params | '
              f'{len(ids)} train examples, seq_len {task.seq_len} | {device} {dtype} compile={use_compile}')
    model.train()
    bar = tqdm(range(step, cfg.max_iters), initial=step, total=cfg.max_iters, disable=quiet, dynamic_ncols=True)
    t0, tokens, metrics = time.time(), 0, history[-1] if history else {}
    def save(step):                                     # the checkpoint holds the *next* step
        rng = dict(gen=gen.get_state(), torch=torch.get_rng_state())
        if device.startswith('cuda'): rng['cuda'] = torch.cuda.get_rng_state()
        state = dict(model=eval_model.state_dict(), model_config=dataclasses.asdict(model_cfg),
                     task_config=task.config(), train_config=dataclasses.asdict(cfg), attn=attn, decoder=decoder,
                     optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), step=step, history=history,
                     metrics=metrics, rng=rng)
        if ema_model is not None: state['raw_model'] = model.state_dict()
        if earlier: os.replace(ckpt_path, earlier.pop())
        save_checkpoint(ckpt_path, **state)

    # Ctrl-C: the step under way finishes (one cut in half would leave weights no run has), then a
    # checkpoint is saved and training stops; a second Ctrl-C stops at once. One process only: under
    # torchrun the processes could stop at different steps and then wait on each other for ever.
    stop = []
    def interrupted(signum, frame):
        if stop: raise KeyboardInterrupt
        stop.append(True)
        tqdm.write('Ctrl-C: stopping after this step, with a checkpoint (Ctrl-C again: stop now, unsaved)')
    with on_ctrl_c(interrupted) if world == 1 else nullcontext():
        for step in bar:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups: group['lr'] = lr
            idx = torch.randint(len(ids), (cfg.batch_size,), generator=gen, device=device)   # the global batch
            batch, batch_answer = ids[idx], answer_mask[idx]
            noise = gen.get_state()
            optimizer.zero_grad(set_to_none=True)
            evaluating = (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.max_iters
            shows = step % 10 == 0                          # the progress bar's numbers
            logs = shows or evaluating
            reported = torch.zeros(2, device=device) if logs else None   # the batch's loss and ce
            for a in range(cfg.grad_accum):                 # this process's rows, in grad_accum pieces
                gen.set_state(noise)                        # each piece draws the same global noise
                first = (rank * cfg.grad_accum + a) * micro
                if world > 1: step_model.require_backward_grad_sync = a == cfg.grad_accum - 1
                with autocast(device, dtype):
                    loss, ce = loss_fn(step_model, batch, batch_answer, cfg, gen, slice(first, first + micro))
                scaler.scale(loss / cfg.grad_accum).backward()
                if logs: reported += torch.stack([loss.detach(), ce.detach()]).float() / (cfg.grad_accum * world)
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            # Stop before a bad step touches the weights (one check, one sync): a non-finite loss or,
            # without the float16 scaler, gradient (with it, inf gradients mean a skipped step)
            if not torch.isfinite(loss.detach() if scaler.is_enabled() else loss.detach() + grad_norm):
                bar.close()
                raise SystemExit(f'error: training diverged at step {step}: loss {loss.item():.4g}, gradient norm '
                                 f'{grad_norm.item():.4g} (lr {lr:.2g}). Nothing was saved; the last checkpoint '
                                 f'{ckpt_path} (step {history[-1]["step"] if history else "none"}) is untouched. '
                                 'Lower --learning_rate or use --grad_clip=1.')
            scaler.step(optimizer)
            scaler.update()
            if ema_model is not None:
                with torch.no_grad():
                    for e, p in zip(ema_model.parameters(), model.parameters()): e.lerp_(p, 1 - cfg.ema)
            tokens += ids.shape[1] * cfg.batch_size
            if logs:
                if world > 1: dist.all_reduce(reported)     # the whole batch's, not rank 0's rows'
                batch_loss, batch_ce = reported.tolist()
            if shows:
                bar.set_postfix(loss=f'{batch_loss:.4f}', ce=f'{batch_ce:.4f}', lr=f'{lr:.1e}',
                                tok_s=f'{tokens / (time.time() - t0):.0f}', val_acc=metrics.get('val_accuracy', '-'))
            done = step + 1                                 # steps done: the step a checkpoint resumes at
            if rank == 0 and evaluating:
                # evaluate: validation loss on fixed batches, then solve accuracy on eval_n val puzzles
                eval_model.eval()
                g = torch.Generator(device=device).manual_seed(1234)
                with torch.no_grad(), autocast(device, dtype):
                    val_losses = [float(loss_fn(eval_model, val_ids[i], val_answer[i], cfg, g)[0]) for i in
                                  (torch.randint(len(val_ids), (cfg.batch_size,), generator=g, device=device)
                                   for _ in range(cfg.eval_iters))]
                eval_examples = splits['val'][:cfg.eval_n]        # eval_n, or every one when n_val is smaller
                acc = evaluate(eval_model, task, eval_examples, attn, decoder, device=device, dtype=dtype)
                model.train()
                metrics = dict(step=done, val_loss=sum(val_losses) / len(val_losses), val_accuracy=acc['accuracy'],
                               train_loss=batch_loss)
                history.append(metrics)
                save(done)
                if not quiet:
                    tqdm.write(f'step {done}: val loss {metrics["val_loss"]:.4f}, '
                               f'val solve accuracy {metrics["val_accuracy"]:.1%} ({len(eval_examples)} puzzles)')
            if stop:
                if not evaluating: save(done)
                bar.close()
                raise Stopped(f'stopped by Ctrl-C after step {done} of {cfg.max_iters}: {ckpt_path} holds it '
                                 '(its weights, optimizer and random states); the same command with --resume '
                                 'continues exactly')
        bar.close()
    if world > 1:                                       # every rank returns rank 0's metrics
        shared = [metrics]
        dist.broadcast_object_list(shared, src=0)
        metrics = shared[0]
        dist.barrier()                                  # then leave the group together, if train
        if joined: dist.destroy_process_group()         # joined it (a caller's own group stays)
    if rank == 0 and not quiet:                         # one line, whatever the number of processes
        print(f'final: val solve accuracy {metrics["val_accuracy"]:.1%}, checkpoint {ckpt_path}')
    return metrics, ckpt_path


# ----------------------------------------------------------------------------------------------
# Benchmark: training tokens/s of our model (each attention structure) against a plain GPT of the
# same width, depth, heads, batch and sequence, in the same run: a ratio, not a time.

class PlainGPT(torch.nn.Module):
    """nanoGPT's GPT, the baseline: learned absolute positions, LayerNorm, causal attention,
    GELU MLP, tied embeddings, no biases. Used only by the benchmark."""
    def __init__(self, V, T, n_layer, n_head, d):
        super().__init__()
        nn = torch.nn
        self.n_head, self.wte, self.wpe = n_head, nn.Embedding(V, d), nn.Embedding(T, d)
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(
            ln1=nn.LayerNorm(d, bias=False), qkv=nn.Linear(d, 3 * d, bias=False), proj=nn.Linear(d, d, bias=False),
            ln2=nn.LayerNorm(d, bias=False), fc=nn.Linear(d, 4 * d, bias=False), out=nn.Linear(4 * d, d, bias=False)))
            for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d, bias=False)

    def forward(self, idx, targets, our_attend=False):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.blocks:
            q, k, v = b.qkv(b.ln1(x)).view(B, T, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)
            y = (attend(q, k, v, None, True, 0.0) if our_attend else
                 torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
            x = x + b.proj(y.transpose(1, 2).reshape(B, T, -1))
            x = x + b.out(torch.nn.functional.gelu(b.fc(b.ln2(x))))
        logits = self.ln_f(x) @ self.wte.weight.T
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def bench(cfg, steps=60, warmup=3):
    """Tokens/s per training step: plain GPT, then ours with causal attention and with each
    diffusion structure (and, when the run uses bf16/fp16 autocast, ours in float32).
    The rows take turns step by step, and each row's ratio to the plain GPT is taken against the
    plain GPT's step of the same turn, then summarised by the median over steps with the middle
    half of them: on a shared 2-core machine the speed drifts over seconds by more than the
    differences measured here, and steps a second apart drift together."""
    check_settings(cfg)
    device, dtype, use_compile = resolve_system(cfg.device, cfg.dtype, cfg.compile)
    task = get_task(cfg.task, **cfg.task_options)
    T, B, V = task.seq_len, cfg.batch_size, len(task.vocab)
    torch.manual_seed(0)
    ours = Transformer(ModelConfig(V, T, cfg.n_layer, cfg.n_head, cfg.n_embd)).to(device)
    gpt = PlainGPT(V, T, cfg.n_layer, cfg.n_head, cfg.n_embd).to(device)
    ids = torch.randint(3, V, (B, T), device=device)
    answer = torch.zeros(B, T, dtype=torch.bool, device=device); answer[:, task.prompt_len + 1:] = True
    gen = torch.Generator(device=device).manual_seed(0)
    runs = {'plain GPT (causal)': (gpt, lambda m: m(ids, ids.roll(-1, 1)))}
    if device == 'cpu':
        runs['plain GPT, our attend'] = (gpt, lambda m: m(ids, ids.roll(-1, 1), our_attend=True))   # like for like
    causal_loss = lambda m: m(ids, is_causal=True, targets=ids.roll(-1, 1))[1].mean()
    runs['ours, causal'] = (ours, causal_loss)
    for attn in DIFFUSION_ATTNS:
        runs[f'ours, {attn}'] = (ours, lambda m, c=dataclasses.replace(cfg, attn=attn): diffusion_loss(m, ids, answer, c, gen)[0])
    # Where the like-for-like gap goes: ours with nanoGPT's LayerNorm in place of RMSNorm (not a
    # model anyone trains; RMSNorm is the authors' choice), and with PyTorch's RMSNorm, whose
    # backward autograd builds from elementwise ops (model.RMSNorm writes it out)
    def norms_replaced(make_norm):
        m = copy.deepcopy(ours)
        for parent in list(m.modules()):
            for name, child in parent.named_children():
                if isinstance(child, torch.nn.RMSNorm):
                    setattr(parent, name, make_norm().to(device))
        return m
    ours_ln = norms_replaced(lambda: torch.nn.LayerNorm(cfg.n_embd, bias=False))
    ours_autograd_rms = norms_replaced(lambda: torch.nn.RMSNorm(cfg.n_embd))
    runs['ours, causal, LayerNorm'] = (ours_ln, causal_loss)
    runs['ours, causal, autograd RMSNorm'] = (ours_autograd_rms, causal_loss)
    # ... and with no rotation (what rotary embeddings cost; nanoGPT has none). The copy keeps
    # q and k laid out as the rotation leaves them, so only the rotation's arithmetic is missing
    import model as model_py                      # Attention.forward looks rotary up here
    def no_rotary_loss(m):
        saved, model_py.rotary = model_py.rotary, lambda x, cos, sin: x.contiguous()
        try:
            return causal_loss(m)
        finally:
            model_py.rotary = saved
    runs['ours, causal, no rotary'] = (ours, no_rotary_loss)
    if dtype != 'float32':                          # does autocast pay on this machine? measure it
        def float32_loss(m):
            with torch.autocast(device.split(':')[0], enabled=False):
                return causal_loss(m)
        runs['ours, causal, float32'] = (ours, float32_loss)
    models = (ours, gpt, ours_ln, ours_autograd_rms)
    compiled = {id(m): torch.compile(m) if use_compile else m for m in models}
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-4) for m in models}
    speeds = {name: [] for name in runs}          # tokens/s of each row, one entry per step
    progress = tqdm(total=(warmup + steps) * len(runs), desc='bench (steps x rows)', leave=False)   # minutes on a CPU
    for i in range(warmup + steps):
        for name, (m, loss_of) in runs.items():
            if device == 'cuda': torch.cuda.synchronize()
            t = time.time()
            with autocast(device, dtype):
                loss = loss_of(compiled[id(m)])
            opts[id(m)].zero_grad(); loss.backward(); opts[id(m)].step()
            if device == 'cuda': torch.cuda.synchronize()
            if i >= warmup:
                speeds[name].append(B * T / (time.time() - t))
            progress.update()
    progress.close()

    def ratio(row, base):       # median (middle half) over steps of row / base, from the same turn
        r = sorted(a / b for a, b in zip(speeds[row], speeds[base]))
        return f'{statistics.median(r):.2f}x', f'({r[len(r) // 4]:.2f}-{r[(3 * len(r)) // 4]:.2f})'
    print(f'{task.name} {task.options}: ours {ours.num_params() / 1e6:.2f}M params, plain GPT '
          f'{sum(p.numel() for p in gpt.parameters()) / 1e6:.2f}M, batch {B} x {T} tokens, {device} {dtype} '
          f'compile={use_compile}, {steps} steps of each row in turn: median tokens/s, and the '
          f'median (middle half) over steps of the ratio to the plain GPT in the same turn')
    median_speed = {name: statistics.median(v) for name, v in speeds.items()}
    for name, tps in median_speed.items():
        mfu = f', MFU {ours.estimate_mfu(tps, T):.1%}' if device == 'cuda' else ''
        median, spread = ratio(name, 'plain GPT (causal)')
        print(f'  {name:30s} {tps:10.0f} tokens/s  {median} plain GPT {spread}{mfu}')
    if 'plain GPT, our attend' in runs:             # like for like: the same attention code
        print(f'  like for like, ours causal / plain GPT with our attend: '
              f'{" ".join(ratio("ours, causal", "plain GPT, our attend"))}')
    return median_speed


def main(argv):
    cfg, do_bench = settings(argv)
    if cfg.attn not in DIFFUSION_ATTNS:
        raise SystemExit(f'error: train_mdlm.py trains --attn={"|".join(DIFFUSION_ATTNS)}; '
                         'AR models are trained by train_ar_mtp.py')
    if do_bench:
        return bench(cfg)
    train(cfg)


if __name__ == '__main__':
    main(sys.argv[1:])
    end_torchrun_process()
