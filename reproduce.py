"""
reproduce.py: the paper's three findings, measured here, by one command.

  C1  joint prediction matters: MDM (full) vs SIDM (independent), trained identically.
  C2  the dial: a semi-causal model's accuracy against the number of latent tokens k.
  C3  latent tokens help AR: AR vs AR+MTP vs the NTP-only ablation, same task and budget.

    python reproduce.py --scale=cpu --seeds=0,1      # 6x6 Sudoku + small path-star, 2 CPU cores
    python reproduce.py --scale=gpu --seeds=0        # 9x9 Sudoku, paper-scale model, one GPU
    python reproduce.py --scale=smoke                # seconds; what the test suite runs

Writes <out>/models.csv (accuracy per model and seed), <out>/sweep_latent_seed*.csv/.json/.png
(the dial, with MDM and SIDM reference lines), <out>/summary.json (mean and spread over seeds,
hardware, wall-clock) and <out>/dial.png (the dial averaged over seeds).
"""
import dataclasses, json, os, platform, sys, time
import torch
from model import load_checkpoint, parse_settings, pick_device
from sample import SampleConfig, evaluate, plot_sweep, sweep
from tasks import get_task, load_splits
from train_ar_mtp import ar_loss, mtp_loss
from train_mdlm import TrainConfig, train

SCALES = {   # (sudoku settings for C1/C2, settings for C3 (path-star unless a task is named), test puzzles, latent ks)
    # cpu: C3 runs on 6x6 Sudoku with the puzzle as a prompt. Path-star (degree 2, arms of 5,
    # 20 labels) left plain AR at 0% after 800 steps here, so it could not show a difference.
    'smoke': (dict(task_options=dict(size=4, givens=6), n_train=500, n_val=16, n_test=32, n_layer=1, n_head=2,
                   n_embd=32, batch_size=32, max_iters=20, eval_interval=20, eval_iters=1, eval_n=8, dtype='float32'),
              dict(task_options=dict(degree=2, arm_length=3, n_nodes=12), n_train=500, n_val=16, n_test=32, n_layer=1,
                   n_head=2, n_embd=32, batch_size=32, max_iters=20, eval_interval=20, eval_iters=1, eval_n=8, dtype='float32'),
              32, '0,1,all'),
    'cpu': (dict(task_options=dict(size=6, givens=12), max_iters=1200, learning_rate=2e-3, eval_interval=600),
            dict(task='sudoku', task_options=dict(size=6, givens=12, layout='prompt'), max_iters=800, learning_rate=2e-3,
                 eval_interval=400),
            500, '0,1,2,4,8,16,all'),
    'gpu': (dict(task_options=dict(size=9, givens=30), n_train=200000, n_layer=6, n_head=8, n_embd=512, batch_size=512,
                 max_iters=20000, learning_rate=3e-4, min_lr=3e-5, warmup_iters=1000, eval_interval=2000, eval_n=500, ema=0.999),
            dict(task_options=dict(degree=5, arm_length=5, n_nodes=50), n_train=200000, n_layer=6, n_head=8, n_embd=512,
                 batch_size=512, max_iters=20000, learning_rate=3e-4, min_lr=3e-5, warmup_iters=1000, eval_interval=2000, eval_n=500),
            1000, '0,1,2,4,8,16,32,all'),
}


@dataclasses.dataclass
class ReproduceConfig:
    scale: str = 'cpu'
    seeds: str = '0,1'
    out: str = 'results'
    device: str = 'auto'
    table: bool = False        # only (re)write <out>/table.md from <out>/summary.json


def main(argv):
    cfg = parse_settings(ReproduceConfig(), argv)
    if cfg.table:
        return print(write_table(cfg.out))
    if cfg.scale not in SCALES:
        raise SystemExit(f'error: --scale must be one of {list(SCALES)}')
    sudoku, path, n_test, ks = SCALES[cfg.scale]
    device = pick_device(cfg.device)
    os.makedirs(cfg.out, exist_ok=True)
    t_start, rows = time.time(), []
    for seed in [int(s) for s in cfg.seeds.split(',')]:
        # a finished checkpoint is reused (resume at its last step): a rerun continues a killed run
        done = lambda name: os.path.exists(f'{cfg.out}/ckpt/{name}_seed{seed}/ckpt.pt')
        run = lambda name, task, settings, **kw: train(TrainConfig(task=task, seed=seed, device=cfg.device,
                                                                   out_dir=f'{cfg.out}/ckpt/{name}_seed{seed}', resume=done(name),
                                                                   **{**settings, **kw}), quiet=cfg.scale == 'smoke')
        # C1 and C2: three diffusion models, identical but for the attention structure
        ckpts = {name: run(name, 'sudoku', sudoku, attn=attn)[1]
                 for name, attn in (('MDM', 'full'), ('SIDM', 'independent'), ('SCDM', 'semi_causal'))}
        model, ck = load_checkpoint(ckpts['SCDM'], device)
        task = get_task(**ck['task_config'])
        tc = ck['train_config']
        test = load_splits(task, tc['n_train'], tc['n_val'], tc['n_test'], tc['data_seed'], tc['data_dir'])['test'][:n_test]
        for name, path_ in ckpts.items():   # both decoding orders (../shared/DESIGN.md section 5)
            m, c = load_checkpoint(path_, device)
            for order in ('random', 'top_prob'):
                if name == 'SCDM':
                    dec = dict(method='latent', n_latent='all', policy='uniform' if order == 'random' else 'confidence')
                else:
                    dec = dict(method='mdm', order=order)
                r = evaluate(m, task, test, c['structure'], dec, device=device)
                rows.append(dict(finding='C1/C2', model=name, seed=seed, decoding=order, accuracy=r['accuracy'],
                                 positions_per_sample=r['positions_per_sample'], n=r['n']))
        sweep(model.eval(), ck, task, test, SampleConfig(ckpt=ckpts['SCDM'], sweep_latent=ks, policy='uniform',
              ref_ckpts=f'{ckpts["MDM"]},{ckpts["SIDM"]}', results=f'{cfg.out}/sweep_latent_seed{seed}', device=device), device)
        # C3: AR, AR+MTP and the NTP-only ablation, same task and budget
        for name, kw, loss, structure, dec in (
                ('AR', dict(mtp_window=0), ar_loss, 'causal', dict(method='ar')),
                ('AR+MTP', dict(mtp_window=-1), mtp_loss, 'prefix', dict(method='ar_mtp', window=-1)),
                ('AR-NTP', dict(mtp_window=-1, ntp_only=True), mtp_loss, 'prefix', dict(method='ar_mtp', window=-1)),
                ('AR+MTP causal prefix', dict(mtp_window=-1, prefix='causal'), mtp_loss, 'causal_prefix',
                 dict(method='ar_mtp', window=-1))):   # ours: a KV-cacheable prefix; does accuracy hold?
            settings = {'task': 'path_star', **path, **kw}
            c = TrainConfig(seed=seed, device=cfg.device, out_dir=f'{cfg.out}/ckpt/{name}_seed{seed}', resume=done(name), **settings)
            _, p = train(c, loss, structure, dec, quiet=cfg.scale == 'smoke')
            m, ckp = load_checkpoint(p, device)
            ptask = get_task(**ckp['task_config'])
            ptest = load_splits(ptask, c.n_train, c.n_val, c.n_test, c.data_seed, c.data_dir)['test'][:n_test]
            r = evaluate(m, ptask, ptest, structure, dec, device=device)
            rows.append(dict(finding='C3', model=name, seed=seed, decoding='left_to_right', accuracy=r['accuracy'],
                             positions_per_sample=r['positions_per_sample'], n=r['n']))
    with open(f'{cfg.out}/models.csv', 'w') as f:
        f.write('finding,model,seed,decoding,accuracy,positions_per_sample,n\n')
        for r in rows:
            f.write(','.join(str(r[k]) for k in ('finding', 'model', 'seed', 'decoding', 'accuracy', 'positions_per_sample', 'n')) + '\n')
    summary = {}
    for r in rows:
        summary.setdefault(f'{r["model"]} ({r["decoding"]})', []).append(r['accuracy'])
    sweeps = [json.load(open(f'{cfg.out}/sweep_latent_seed{s}.json')) for s in cfg.seeds.split(',')]
    mean = lambda xs: sum(xs) / len(xs)
    dial = [dict(k=row['k'], **{c: mean([s['rows'][i][c] for s in sweeps]) for c in
                                ('accuracy', 'positions_per_sample', 'seconds_per_sample')}) for i, row in enumerate(sweeps[0]['rows'])]
    refs = [dict(k=ref['k'], accuracy=mean([s['references'][i]['accuracy'] for s in sweeps])) for i, ref in enumerate(sweeps[0]['references'])]
    plot_sweep(dial, refs, 'n_latent', f'{cfg.out}/dial.png')
    out = dict(scale=cfg.scale, seeds=cfg.seeds, wall_clock_minutes=(time.time() - t_start) / 60,
               hardware=f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
                        f'{torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"}',
               models={k: dict(mean=mean(v), min=min(v), max=max(v), per_seed=v) for k, v in summary.items()},
               dial=dial, dial_references=refs)
    json.dump(out, open(f'{cfg.out}/summary.json', 'w'), indent=1)
    print(write_table(cfg.out))


def write_table(out_dir):
    """Markdown tables of summary.json (what the README shows), written to <out>/table.md."""
    s = json.load(open(f'{out_dir}/summary.json'))
    pct = lambda x: f'{100 * x:.1f}'
    lines = [f'Scale `{s["scale"]}`, seeds {s["seeds"]}, {s["wall_clock_minutes"]:.0f} minutes on {s["hardware"]}.', '',
             '| model | decoding | accuracy % (mean) | min-max over seeds |', '|---|---|---|---|']
    for name, m in s['models'].items():
        model, decoding = name.rsplit(' (', 1)
        lines.append(f'| {model} | {decoding[:-1]} | {pct(m["mean"])} | {pct(m["min"])}-{pct(m["max"])} |')
    lines += ['', '| latent tokens k | accuracy % | positions processed / puzzle | ms / puzzle |', '|---|---|---|---|']
    for r in s['dial']:
        lines.append(f'| {r["k"]} | {pct(r["accuracy"])} | {r["positions_per_sample"]:.0f} | {1000 * r["seconds_per_sample"]:.1f} |')
    for r in s['dial_references']:
        lines.append(f'| reference: {r["k"]} model, random order | {pct(r["accuracy"])} | | |')
    table = '\n'.join(lines) + '\n'
    open(f'{out_dir}/table.md', 'w').write(table)
    return table


if __name__ == '__main__':
    main(sys.argv[1:])
