"""
reproduce.py: the paper's three findings, measured here, by one command.

  C1  joint prediction matters: MDM (full) vs SIDM (independent), trained identically.
  C2  the dial: a semi-causal model's accuracy against the number of latent tokens k, under both
      commit orders, with MDM and SIDM decoded by the same commit rule as reference points.
  C3  latent tokens help AR: AR vs AR+MTP (and the NTP-only ablation where a scale lists it), same
      task and budget.

    python reproduce.py --scale=cpu --seeds=0,1,2      # 6x6 Sudoku on 2 CPU cores
    python reproduce.py --scale=cpu --processes=2      # the same, two models trained at a time (one core each)
    python reproduce.py --scale=path_star --seeds=0    # C3 on path-star graphs, 76 minutes a seed on 2 CPU cores
    python reproduce.py --scale=c2_long --seeds=0      # C1 and C2 only, SCDM and SIDM at 8x MDM's steps, 34 minutes a seed
    python reproduce.py --scale=sudoku9 --seeds=0      # C1 and C2 on 9x9 Sudoku, 105 minutes a seed on 2 CPU cores
    python reproduce.py --scale=sudoku9_long --seeds=0 # the same, SCDM and SIDM at 2x MDM's steps, 155 minutes a seed
    python reproduce.py --scale=sudoku9_gpu --seeds=0  # C1 and C2 on 9x9, paper-scale model, about 7 minutes on one H200
    python reproduce.py --scale=gpu --seeds=0          # 9x9 Sudoku + path-star, paper-scale model, over an hour on one GPU
    python reproduce.py --scale=smoke                  # seconds; what the test suite runs
    python reproduce.py --sweep_latent=0,1,2,4,all --ckpt=out/mdlm/ckpt.pt --ref_ckpts=out/mdm/ckpt.pt,out/sidm/ckpt.pt
    python reproduce.py --sweep_threshold=0,0.5,0.9,0.99 --ckpt=out/mdm/ckpt.pt   # passes vs accuracy
    python reproduce.py --bench_cache --ckpt=out/mdlm/ckpt.pt   # cached vs uncached decoding, one run
    python reproduce.py --bench_cache --ckpt=out/mdlm/ckpt.pt --input=fresh6.txt   # on a file's puzzles (any job on --ckpt)
    python reproduce.py --probe_window --ckpt=out/ar_mtp/ckpt.pt  # what AR+MTP's latent positions know
    python reproduce.py --calibration=0,0.9 --ckpt=out/mdm/ckpt.pt  # is an MDM as sure as it is right?
    python reproduce.py --spread=results,results/seeds3_5  # every target seed by seed, over runs of one recipe

Writes, under --out (default results/ for the cpu scale, results/<scale>/ for the others),
<out>/models.csv (accuracy per task, model, seed and decoding), <out>/sweep_latent_seed*.csv
/.json (the dial under both orders, with matched MDM and SIDM rows), <out>/summary.json (mean and
spread over seeds, hardware, wall-clock), <out>/table.md (the tables, and each finding's target
checked on every seed) and <out>/dial.png (the dial averaged over seeds, both orders in one figure).

Commit orders. 'random' is the paper's setting: the cell decoded next is chosen uniformly, so a
model must be right about whatever cell it is handed. 'top_prob' decodes the most confident of
8 random candidate cells (the same rule for MDM, SIDM and the semi-causal model): on small grids
it lets even an independent model steer around the hard cells, so it flatters SIDM.
"""
import dataclasses, json, math, multiprocessing, os, platform, re, signal, statistics, sys, textwrap, time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
import torch
from tqdm import tqdm
from sample import (DECODERS, checkpoint_examples, choose_tokens, commit_rule, decoder_value_ok, evaluate,
                    load_examples, random_subset, wide_float)
from model import attention_mask
from tasks import MASK, get_task
from train_ar_mtp import ARConfig, objective
from train_mdlm import Stopped, TrainConfig, load_data, train
from configurator import changed_settings, parse_settings, parse_value, refuse_unused
from data import check_writable, on_ctrl_c, paired_difference
from utils import load_checkpoint, pick_device

# C3 models: name -> the settings that differ (train_ar_mtp.objective turns them into loss,
# attention structure and decoder)
AR_MODELS = {'AR': dict(mtp_window=0), 'AR+MTP': dict(mtp_window=-1), 'AR-NTP': dict(mtp_window=-1, ntp_only=True),
             'AR+MTP causal prefix': dict(mtp_window=-1, prefix='causal')}
DIFFUSION_MODELS = {'MDM': 'full', 'SIDM': 'independent', 'SCDM': 'semi_causal'}
# The two commit orders; 'top_prob' picks the most confident of N_CANDIDATES random masked cells.
N_CANDIDATES = 8
ORDERS = {'random': dict(order='random'), 'top_prob': dict(order='top_prob', n_candidates=N_CANDIDATES)}
SMOKE = dict(preset='tiny_test', n_train=500, n_val=16, n_test=32, batch_size=16, max_iters=20, eval_interval=20, eval_n=8)
CPU_SUDOKU = dict(task_options=dict(size=6, givens=12), max_iters=800, eval_interval=800, eval_n=100)   # cpu, c2_long
SCALES = {
    # diffusion: settings of the three sudoku models (C1, C2; None: none); ar: settings of the C3
    # models; ar_models: which C3 models run ('': none); n_test: test puzzles per evaluation;
    # ks: the latent sweep (ending with 'all': SCDM's C1 rows);
    # windows: extra AR+MTP models, one trained per latent window W (a window is fixed in training);
    # longer (optional): diffusion models trained longer than `diffusion` says, name -> steps
    # (evaluated once, at the end, like the others).
    'smoke': dict(diffusion=SMOKE,
                  ar=dict(SMOKE, task='path_star', task_options=dict(degree=2, arm_length=3, n_nodes=12)),
                  ar_models='AR,AR+MTP,AR-NTP,AR+MTP causal prefix', n_test=32, ks='0,1,all', windows='2'),
    # cpu: 2 cores. Training is compute-bound there (torch.compile does not pay for whole runs:
    # AR+MTP trained 1.6x slower compiled on a Xeon, 0.89x as fast on an AMD EPYC; see
    # results/benchmarks.md), so the budget is set by the number of tokens. C3 runs on 6x6 Sudoku
    # with the puzzle as a prompt.
    # SCDM gets five times MDM's steps: it trains every latent count k at once and learns more
    # slowly (with twice, the top of the dial in random order stayed 15 to 28 points below MDM on
    # every seed: results/studies.md). SIDM gets SCDM's steps too: it is SCDM's k = 0 reference, and
    # a confidence order shows the extra training even without latent tokens (C1 only gets harder:
    # SIDM trains 5x MDM's steps).
    # The NTP-only ablation is left out to keep three seeds within an hour: at this budget it
    # solved 0% on every seed (one loss position per example); train it alone with --ntp_only.
    # Every model is tested on all 1,000 test puzzles: on 300, a difference of two accuracies has a
    # 95% interval (4 to 6.5 points each way) as wide as the targets' bands.
    'cpu': dict(diffusion=CPU_SUDOKU,
                longer=dict(SIDM=4000, SCDM=4000),
                ar=dict(task='sudoku', task_options=dict(size=6, givens=12, layout='prompt'), max_iters=600,
                        eval_interval=600, eval_n=100),
                ar_models='AR,AR+MTP', n_test=1000, ks='0,1,2,4,8,16,all', windows=''),
    # path_star: C3 on path-star graphs alone (76 minutes a seed on 2 cores: past the cpu scale's
    # hour). Degree 2, arm 4: a model that follows edges but does not plan solves about half (the
    # Clever-Hans failure). At arm 3 plain AR learns to plan within 8,000 steps (results/studies.md).
    # Learning rate 1e-3: at the default 2e-3 neither model learned to follow an edge in 4,000 steps.
    # 6 layers: with 4, AR+MTP stayed at the Clever-Hans level too (56% after 12,000 steps); planning
    # back from the goal takes one lookup per hop, three hops at arm 4.
    'path_star': dict(diffusion=None,
                      ar=dict(task='path_star', task_options=dict(degree=2, arm_length=4, n_nodes=20), n_train=100000,
                              n_layer=6, learning_rate=1e-3, max_iters=8000, eval_interval=8000, eval_n=200),
                      ar_models='AR,AR+MTP', n_test=500, ks='', windows=''),
    # c2_long: the cpu scale's diffusion models with SCDM (and SIDM, its k = 0 reference) trained
    # 8x MDM's steps, where the cpu scale gives them 5x: the dial's top in random order at or
    # above MDM's level (past the hour; results/studies.md). No C3 models.
    'c2_long': dict(diffusion=CPU_SUDOKU, longer=dict(SIDM=6400, SCDM=6400), ar=None, ar_models='',
                    n_test=300, ks='0,1,2,4,8,16,all', windows=''),
    # sudoku9: C1 and C2 on 9x9 Sudoku (30 givens), the paper's task, on a CPU: the three diffusion
    # models of presets/sudoku9_cpu.json (0.80M parameters, 7,500 steps each, 29 to 33 minutes a
    # model on 2 cores of a Xeon). All three get the same steps. No C3 models.
    'sudoku9': dict(diffusion='sudoku9_cpu', ar=None, ar_models='', n_test=500, ks='0,1,4,16,all', windows=''),
    # sudoku9_long: the same with SCDM and SIDM at twice MDM's steps (SCDM learns every k at once;
    # SIDM is its k = 0 reference): 57 minutes a model on a Xeon.
    'sudoku9_long': dict(diffusion='sudoku9_cpu', longer=dict(SIDM=15000, SCDM=15000), ar=None, ar_models='',
                         n_test=500, ks='0,1,4,16,all', windows=''),
    # sudoku9_gpu: C1 and C2 on 9x9 at the paper's size (presets/sudoku9_gpu.json, 18.9M parameters),
    # sized for a 10-minute slot on one H200: MDM 3,000 steps (99.0% of validation puzzles there),
    # SCDM and SIDM twice that (at equal steps SCDM's dial stayed 17 to 35 points below MDM at k = all:
    # results/gpu_h200/). About 7 minutes by the steps per second measured there; not run yet.
    'sudoku9_gpu': dict(diffusion=dict(preset='sudoku9_gpu', max_iters=3000, warmup_iters=300, eval_interval=3000,
                                       eval_n=200),
                        longer=dict(SIDM=6000, SCDM=6000), ar=None, ar_models='', n_test=500, ks='0,1,4,16,all',
                        windows=''),
    # gpu: the paper-scale preset (presets/sudoku9_gpu.json), 9x9 Sudoku and path-star with 5 arms:
    # more than an hour of one H200 (results/gpu_h200/), not run yet.
    'gpu': dict(diffusion='sudoku9_gpu',
                ar=dict(preset='sudoku9_gpu', task='path_star', task_options=dict(degree=5, arm_length=5, n_nodes=50)),
                ar_models='AR,AR+MTP,AR-NTP,AR+MTP causal prefix', n_test=1000, ks='0,1,2,4,8,16,32,all',
                windows='1,4,16'),
}


def scale_ar_models(scale):
    """The scale's C3 models, name -> the settings that differ: those named in ar_models ('':
    none; an unknown name is a KeyError) and one AR+MTP model per window."""
    models = {name: AR_MODELS[name] for name in scale['ar_models'].split(',') if name}
    models.update({f'AR+MTP W={w}': dict(mtp_window=int(w)) for w in scale['windows'].split(',') if w})
    return models


def scale_settings(spec):
    """A scale's settings for one family: a dict, or the name of a preset file (plus overrides)."""
    if isinstance(spec, str):
        spec = dict(preset=spec)
    spec = dict(spec)
    preset = spec.pop('preset', None)
    if preset:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'presets', preset + '.json')) as f:
            spec = {**json.load(f), **spec}
    return spec


def scale_models(scale, seed, out, device):
    """Every model a scale trains for one seed: name -> its training settings (TrainConfig for
    the diffusion models of C1 and C2, ARConfig for the C3 ones), checkpoint in <out>/ckpt/."""
    models = {}
    unknown = set(scale.get('longer', {})) - set(DIFFUSION_MODELS)
    if unknown:                                       # a misspelt name would train at the default steps
        raise ValueError(f'longer names no diffusion model: {sorted(unknown)} (models: {list(DIFFUSION_MODELS)})')
    for name, attn in DIFFUSION_MODELS.items() if scale['diffusion'] is not None else ():
        steps = scale.get('longer', {}).get(name)
        differ = dict(max_iters=steps, eval_interval=steps) if steps else {}
        models[name] = TrainConfig(**{'task': 'sudoku', **scale_settings(scale['diffusion']), 'attn': attn, **differ})
    for name, differ in scale_ar_models(scale).items():
        models[name] = ARConfig(**{**scale_settings(scale['ar']), **differ})
    return {name: dataclasses.replace(c, seed=seed, device=device, out_dir=f'{out}/ckpt/{name}_seed{seed}')
            for name, c in models.items()}


def train_model(c, quiet=False):
    """Train one model of a scale (a checkpoint in c.out_dir is continued) -> (its checkpoint path,
    minutes of training)."""
    t = time.time()
    try:
        path = train(c, *(objective(c) if isinstance(c, ARConfig) else ()), quiet=quiet, same_settings=True)[1]
    except Stopped as e:                # Ctrl-C: here the way to continue is to rerun, not --resume
        when = str(e).split(':')[0]     # 'stopped by Ctrl-C after step N of M'
        raise Stopped(f'{when}: {c.out_dir}/ckpt.pt holds it; {CONTINUE}') from None
    return path, (time.time() - t) / 60


CONTINUE = ('the same reproduce.py command continues exactly (a checkpoint under --out is continued, a '
            'finished one only evaluated)')


def train_side_by_side(models, processes):
    """--processes=N: train the models (key -> settings) N at a time, each in a process of its own
    with 1/N of the cores, the longest first; -> {key: (checkpoint path, minutes)}. Why: a model
    this small keeps a second core only partly busy (the cpu scale on 2 cores of a Xeon: 52.6
    minutes with N = 2, 58.9 one model at a time; results/processes2/). Each worker trains exactly
    what a run of one model at a time trains (tests/test_reproduce.py), but with fewer threads, and
    some of PyTorch's CPU matrix products sum in an order that depends on the thread count: a model
    can come out different in the last bits (on the cpu scale the AR models do, the diffusion models
    do not)."""
    cost = {}
    for key, c in models.items():      # the data first, in this process: the workers only read it
        task, _ = load_data(c, progress=True)
        cost[key] = c.max_iters * task.seq_len                      # steps x tokens
    threads = max(1, torch.get_num_threads() // processes)
    waiting, running, results = sorted(models, key=lambda k: -cost[k]), {}, {}
    # 'spawn': a process forked from one whose torch threads are running can hang. Models are
    # handed out one at a time as workers free up (not queued ahead), so that after Ctrl-C or an
    # error no other model starts. Workers are started (by submit) with Ctrl-C ignored: train()
    # takes it over while training, to save a checkpoint before stopping.
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context('spawn'),
                             initializer=torch.set_num_threads, initargs=(threads,)) as pool, \
            tqdm(total=len(models), desc=f'training, {processes} models at a time') as bar:
        try:
            while waiting or running:
                while waiting and len(running) < processes:
                    key = waiting.pop(0)
                    with on_ctrl_c(signal.SIG_IGN):
                        running[pool.submit(train_model, models[key], True)] = key
                for f in wait(running, return_when=FIRST_COMPLETED).done:
                    (name, seed), error = running.pop(f), f.exception()
                    if error is not None and running:      # raised below, once the others end
                        tqdm.write(f'{name} seed {seed} failed: waiting for the {len(running)} other model(s) in '
                                   'training to end (Ctrl-C stops them with a checkpoint)', file=sys.stderr)
                    results[name, seed] = f.result()
                    bar.update()
        except KeyboardInterrupt:
            # Ctrl-C in a terminal reaches every process: the models in training finish their
            # step, save a checkpoint and stop (train()); wait for them, then say what is where
            bar.close()
            print(f'Ctrl-C: waiting for {len(running)} models to save a checkpoint and stop; none other starts '
                  '(Ctrl-C again: stop now, unsaved)', file=sys.stderr)
            wait(running)
            results.update({running[f]: f.result() for f in running if f.exception() is None})
            stopped = [running[f] for f in running if isinstance(f.exception(), Stopped)]
            failed = [running[f] for f in running if f.exception() is not None and running[f] not in stopped]
            raise SystemExit('stopped by Ctrl-C: ' + '; '.join(
                f'{label}: {", ".join(f"{n} seed {s}" for n, s in keys)}' for label, keys in
                (('trained', list(results)), ('stopped with a checkpoint', stopped), ('failed', failed),
                 ('not started', waiting)) if keys) + f'; {CONTINUE}') from None
    return results                     # (a worker's error is raised at once: no other model starts)


@dataclasses.dataclass
class ReproduceConfig:
    scale: str = 'cpu'         # smoke | cpu | path_star | c2_long | sudoku9 | sudoku9_long | sudoku9_gpu | gpu (SCALES)
    seeds: str = '0,1,2'       # one full run per seed
    out: str = ''              # default: results/ for the cpu scale, results/<scale>/ for the others
    device: str = 'auto'
    processes: int = 1         # a scale run on a CPU: train this many models at a time, each in a process
                               # of its own with its share of the cores (sooner; fewer threads may round
                               # differently: README, Results)
    table: bool = False        # only (re)write <out>/table.md and dial.png from <out>/summary.json
    spread: str = ''           # e.g. results,results/seeds3_5: finished runs of one recipe; print every
                               # target seed by seed, a column a seed, from their summary.json
    # one sweep or benchmark on existing checkpoints instead of the whole reproduction
    ckpt: str = ''
    sweep_latent: str = ''     # e.g. 0,1,2,4,8,all: the dial of a semi_causal checkpoint
    sweep_threshold: str = ''  # e.g. 0,0.5,0.9,0.99: parallel decoding, passes vs accuracy
    ref_ckpts: str = ''        # MDM / SIDM checkpoints decoded by the same rule as reference rows
    bench_cache: bool = False  # cached vs uncached decoding of --ckpt, in one run
    probe_window: bool = False # what an AR+MTP checkpoint's latent positions know, cut by cut
    calibration: str = ''      # e.g. 0,0.9: how sure an MDM is against how often it is right, per threshold
    n: int = 500               # examples for the jobs on --ckpt: the first n of the test split or of --input
    input: str = ''            # the jobs on --ckpt: puzzles from this file (sample.py's --input) instead of the
                               # checkpoint's test split (their files are named after it, beside the checkpoint)


CKPT_JOBS = ('sweep_latent', 'sweep_threshold', 'bench_cache', 'probe_window', 'calibration')     # each needs --ckpt


def cpu_name():
    """The processor's model name where Linux tells it (benchmarks differ by CPU), else the architecture."""
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


COST_COLUMNS = ('accuracy', 'nfe_per_sample', 'positions_per_sample', 'seconds_per_sample')


def write_csv(path, rows, columns):
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'w') as f:
        f.write(','.join(columns) + '\n')
        for r in rows:
            f.write(','.join(str(r[c]) for c in columns) + '\n')


def decode_both_orders(model, ckpt, task, examples, device):
    """{order: evaluate result} of a diffusion checkpoint decoded by its own sampler under each
    commit order: C1's rows, and the dial's MDM/SIDM reference rows (decoded once, used twice)."""
    method = ckpt['decoder']['method']
    return {order: evaluate(model, task, examples, ckpt['attn'], dict(DECODERS[method][1], method=method, **rule),
                            device=device, progress=True) for order, rule in ORDERS.items()}


def sweep_latent(model, ckpt, task, examples, ks, refs, prefix, device):
    """The paper's Figure 1 under both commit orders: accuracy and cost against the number of
    latent tokens k, plus reference rows (k = 'full' / 'independent') for MDM and SIDM models
    decoded by the same rule. refs: {attn: decode_both_orders(...) of that model on the same
    examples}. Writes <prefix>.csv and .json; returns the rows."""
    rows = []
    most_masked = max(int((task.encode(p)[0] == MASK).sum()) for p, _ in examples)
    for order, rule in ORDERS.items():
        decoded = {}
        for k in ks.split(','):
            # a count that leaves every masked cell but D (or the candidates) a latent decodes as
            # 'all' does, bit for bit (tests/test_sample.py): decoded once (on 6x6, k = 16 with 8
            # candidates among 24 blanks)
            dec = dict(DECODERS['latent'][1], method='latent', **rule)
            front = dec['tokens_per_step'] if order == 'random' else dec['n_candidates']
            n_latent = 'all' if k == 'all' or (front > 0 and int(k) >= most_masked - front) else int(k)
            if n_latent not in decoded:
                decoded[n_latent] = evaluate(model, task, examples, ckpt['attn'], dict(dec, n_latent=n_latent),
                                             device=device, progress=True)
            r = decoded[n_latent]
            rows.append(dict(order=order, k=k, **{c: r[c] for c in COST_COLUMNS}))
            print(f'{order:8s} k={k:>4}: accuracy {r["accuracy"]:.1%}, {r["positions_per_sample"]:.0f} positions/puzzle')
        for attn, by_order in refs.items():
            r = by_order[order]
            rows.append(dict(order=order, k=attn, **{c: r[c] for c in COST_COLUMNS}))
            print(f'{order:8s} reference {attn}: accuracy {r["accuracy"]:.1%}')
    write_csv(prefix + '.csv', rows, ('order', 'k') + COST_COLUMNS)
    with open(prefix + '.json', 'w') as f:
        json.dump(dict(task=ckpt['task_config'], n=len(examples), n_candidates=N_CANDIDATES, rows=rows), f, indent=1)
    return rows


def plot_dial(rows, path, title=''):
    """The dial, two panels. Left: accuracy against k, one line per commit order, that order's
    MDM/SIDM references dashed/dotted in the same colour, and bars from the lowest to the highest
    seed where rows carry `per_seed`. Right: the same accuracies against their cost, positions
    processed per puzzle (MDM and SIDM run the whole sequence in every pass; the latent sampler
    runs clean + k latents + the cells it decodes)."""
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax, cost) = plt.subplots(1, 2, figsize=(10, 4))
    spread_shown = all(len(r.get('per_seed', ())) > 1 for r in rows)
    for i, order in enumerate(ORDERS):
        dial = [r for r in rows if r['order'] == order and r['k'] not in DIFFUSION_MODELS.values()]
        acc = [100 * r['accuracy'] for r in dial]
        ax.plot(range(len(dial)), acc, 'o-', color=f'C{i}', label=f'semi-causal, {order} order')
        if spread_shown:
            spread = [[a - 100 * min(r['per_seed']) for a, r in zip(acc, dial)],
                      [100 * max(r['per_seed']) - a for a, r in zip(acc, dial)]]
            ax.errorbar(range(len(dial)), acc, yerr=spread, fmt='none', color=f'C{i}', capsize=3, alpha=0.6)
        cost.plot([r['positions_per_sample'] for r in dial], acc, 'o-', color=f'C{i}', label=f'semi-causal k = 0 ... all, {order}')
        for r in rows:
            if r['order'] == order and r['k'] in ('full', 'independent'):
                name = 'MDM' if r['k'] == 'full' else 'SIDM'
                ax.axhline(100 * r['accuracy'], color=f'C{i}', ls='--' if name == 'MDM' else ':', label=f'{name}, {order} order')
                cost.plot(r['positions_per_sample'], 100 * r['accuracy'], 's' if name == 'MDM' else 'v', color=f'C{i}',
                          mfc='none', ms=8, label=f'{name}, {order}')
    ax.set_xticks(range(len(dial)), [r['k'] for r in dial])
    ax.set_xlabel('latent tokens k'); ax.set_ylabel('puzzles solved (%)')
    cost.set_xlabel('positions processed per puzzle (the cost of a decode)'); cost.set_ylabel('puzzles solved (%)')
    for a in (ax, cost):
        a.grid(alpha=0.3); a.legend(fontsize=7)
    fig.suptitle(title + (' (bars: lowest to highest seed)' if spread_shown else ''), fontsize=9)
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)
    print(f'wrote {path}')


def sweep_threshold(model, ckpt, taus, task, examples, prefix, device):
    """Threshold decoding: each pass also commits every candidate at least tau confident. Writes
    <prefix>.csv/.png: accuracy against forward passes per puzzle; tau = 0 is one token per pass."""
    rows = []
    for tau in taus.split(','):
        r = evaluate(model, task, examples, ckpt['attn'], dict(ckpt['decoder'], threshold=float(tau)), device=device,
                     progress=True)
        rows.append(dict(threshold=float(tau), **{c: r[c] for c in COST_COLUMNS}))
        print(f'threshold {tau:>5}: accuracy {r["accuracy"]:.1%}, {r["nfe_per_sample"]:.1f} passes/puzzle '
              f'({rows[0]["nfe_per_sample"] / r["nfe_per_sample"]:.2f}x fewer than tau={rows[0]["threshold"]:g})')
    write_csv(prefix + '.csv', rows, ('threshold',) + COST_COLUMNS)
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    line = sorted(rows, key=lambda r: r['nfe_per_sample'])     # a frontier: fewer passes to the left
    ax.plot([r['nfe_per_sample'] for r in line], [100 * r['accuracy'] for r in line], 'o-')
    ax.set_xscale('log')
    ticks = [t for t in (1, 2, 3, 5, 10, 20, 50, 100, 200, 500) if line[0]['nfe_per_sample'] / 1.5 <= t <= line[-1]['nfe_per_sample'] * 1.5]
    ax.set_xticks(ticks, [str(t) for t in ticks]); ax.minorticks_off()
    for i, r in enumerate(line):            # labels alternate above and below: neighbours sit close
        ax.annotate(f'{r["threshold"]:g}', (r['nfe_per_sample'], 100 * r['accuracy']), fontsize=7,
                    textcoords='offset points', xytext=(4, 4 if i % 2 else -10))
    ax.set_xlabel('forward passes per puzzle (log scale)'); ax.set_ylabel('puzzles solved (%)')
    ax.grid(alpha=0.3, which='both')
    ax.set_title(f'threshold decoding (labels: tau), {ckpt["attn"]} model, {len(examples)} puzzles', fontsize=9)
    fig.tight_layout(); fig.savefig(prefix + '.png', dpi=110); plt.close(fig)
    print(f'wrote {prefix}.csv and {prefix}.png')
    return rows


CONFIDENCE_BINS = (0, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1)


@torch.no_grad()
def calibration(model, ckpt, taus, task, examples, path, device, seed=0, batch_size=256):
    """Is an MDM as often right as it is sure, and what does threshold decoding lose to that? For
    each tau, the checkpoint's decoder with --threshold=tau runs on the Sudoku puzzles `examples` with
    every commit replaced by the right digit (of the puzzle's solution): the path decoding takes
    while it makes no mistake, so a puzzle is solved exactly when every committed guess on it is
    right. The committed cells, binned by confidence (top probability): how many, how sure on
    average, how often right (written to `path`, a .csv, and drawn beside it as a .png). Printed
    beside the share solved: what the confidences predict if they were calibrated and the cells of
    a pass independent (solved with the product of the commits' confidences; sum(1 - confidence)
    wrong guesses)."""
    if ckpt['decoder']['method'] != 'mdm' or not ckpt['task_config']['name'].startswith('sudoku'):
        raise SystemExit(f'error: --calibration needs an MDM or SIDM Sudoku checkpoint (a unique solution says '
                         f'which guess is right); this one is {ckpt["attn"]!r} on {ckpt["task_config"]["name"]!r}')
    d = ckpt['decoder']
    rows, summary = [], {}
    for tau in taus:
        gen = torch.Generator(device=device).manual_seed(seed)
        confidence, right, log_p, wrong = [], [], [], []
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            x = torch.from_numpy(task.encode_batch([(p, None) for p, _ in chunk])[0]).to(device)
            solution = torch.from_numpy(task.encode_batch(chunk)[0]).to(device)
            log_p.append(torch.zeros(len(x), dtype=wide_float(device), device=device))
            wrong.append(torch.zeros(len(x), device=device))
            while (x == MASK).any():
                masked = x == MASK
                logits, _ = model(x, attn_mask=attention_mask(ckpt['attn'], masked))
                token, probs = choose_tokens(logits, 0.0, gen)
                commit = commit_rule(probs, random_subset(masked, d['n_candidates'], gen), d['order'],
                                     d['tokens_per_step'], tau, gen)
                c, ok = probs.amax(-1), token == solution
                confidence.append(c[commit]); right.append(ok[commit])
                log_p[-1] += (c.log() * commit).sum(1); wrong[-1] += (commit & ~ok).sum(1)
                x = torch.where(commit, solution, x)
        log_p, wrong = torch.cat(log_p).cpu(), torch.cat(wrong).cpu()   # to the CPU: the means below are float64
        confidence, right = torch.cat(confidence).cpu(), torch.cat(right).cpu()
        for lo, hi in zip(CONFIDENCE_BINS, CONFIDENCE_BINS[1:]):     # the last bin includes 1
            inside = (confidence >= lo) & ((confidence < hi) | (hi == 1))
            if inside.any():
                rows.append(dict(threshold=tau, confidence_from=lo, confidence_to=hi, cells=int(inside.sum()),
                                 mean_confidence=round(float(confidence[inside].mean()), 4),
                                 right=round(float(right[inside].double().mean()), 4)))
                print(f'threshold {tau:g}, confidence {lo:g} to {hi:g}: {rows[-1]["cells"]:6d} guesses committed, '
                      f'{rows[-1]["mean_confidence"]:.4f} sure on average, {rows[-1]["right"]:.4f} right')
        summary[tau] = s = dict(solved=float((wrong == 0).double().mean()), predicted=float(log_p.exp().mean()),
                                wrong=float(wrong.mean()), expected_wrong=float((1 - confidence).sum()) / len(wrong))
        print(f'threshold {tau:g}: {s["solved"]:.1%} solved ({s["wrong"]:.3f} wrong guesses per puzzle); '
              f'calibrated and independent the confidences would give {s["predicted"]:.1%} '
              f'({s["expected_wrong"]:.3f})\n')
    write_csv(path, rows, ('threshold', 'confidence_from', 'confidence_to', 'cells', 'mean_confidence', 'right'))
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    floor = 0.5 / max(r['cells'] for r in rows)      # a bin with no wrong guess is drawn here (open marker)
    ax.plot([1e-5, 1], [1e-5, 1], color='grey', lw=0.8, label='as often wrong as unsure')
    for tau, s in summary.items():       # one line per threshold, a point per bin (area: guesses in it)
        mine = [r for r in rows if r['threshold'] == tau]
        unsure, share_wrong = [1 - r['mean_confidence'] for r in mine], [max(1 - r['right'], floor) for r in mine]
        line, = ax.plot(unsure, share_wrong, '-', lw=0.8, alpha=0.6)
        size = [8 + 60 * r['cells'] / max(x['cells'] for x in rows) for r in mine]
        ax.scatter(unsure, share_wrong, s=size, color=line.get_color(), label=f'tau = {tau:g}: {s["solved"]:.1%} solved '
                   f'({s["predicted"]:.1%} if calibrated)', facecolors=[line.get_color() if r['right'] < 1 else 'none'
                                                                        for r in mine])
    ax.set_xscale('log'); ax.set_yscale('log'); ax.set_xlim(1e-5, 1); ax.set_ylim(floor / 2, 1)
    ax.set_xlabel('1 - mean top probability of the guesses committed (how unsure)')
    ax.set_ylabel('share of them wrong (open: none wrong)')
    ax.grid(alpha=0.3, which='both'); ax.legend(fontsize=7, loc='upper left')
    ax.set_title(f'committed guesses binned by confidence, {ckpt["attn"]} model, {len(examples)} puzzles', fontsize=9)
    fig.tight_layout(); fig.savefig(path[:-len('.csv')] + '.png', dpi=110); plt.close(fig)
    print(f'wrote {path} and {path[:-len(".csv")]}.png')
    return rows, summary


def bench_cache(model, ckpt, task, examples, device, refreshes=(0, 1, 2, 3, 4, 8, -1), doubts=(0.99, 0.999),
                rounds=3):
    """Cached vs uncached decoding of one checkpoint, in one run: ratios, not times. The rows take
    turns for `rounds` rounds; a row's time is its median, its ratio the median over rounds of
    its time over the first row's in the same round (a machine's speed drifts between rounds).
    AR / AR+MTP: use_cache on and off (exact). Latent sampler: k = 0 and k = all, each with the
    clean-position cache off (r = 0) and refreshed every r passes (-1: never; a
    semi_causal_ordered checkpoint's cache is exact and never refreshed, whatever r), and refreshed
    on doubt only (refresh_below = each of `doubts`); times are given against uncached k = all.
    MDM (and SIDM): the cache off and refreshed every r passes.
    Each cached row's accuracy is also compared, puzzle by puzzle, with the uncached row of the same
    k (paired_difference)."""
    never = lambda r: 'never' if r == -1 else r
    if ckpt['decoder']['method'] == 'latent':
        runs = {f'k={k} r={never(r)}': dict(n_latent=k, cache_refresh=r) for k in ('all', 0) for r in refreshes}
        if ckpt['attn'] != 'semi_causal_ordered':    # refresh on doubt (its cache is never stale)
            runs.update({f'k={k} r=never below={tau}': dict(n_latent=k, cache_refresh=-1, refresh_below=tau)
                         for k in ('all', 0) for tau in doubts})
    elif ckpt['decoder']['method'] == 'mdm':
        runs = {f'r={never(r)}': dict(cache_refresh=r) for r in refreshes}
    else:
        runs = {'uncached': dict(use_cache=False), 'cached': dict(use_cache=True)}
    cache_off = lambda s: {k: v for k, v in s.items() if k != 'refresh_below'} | (
        {'use_cache': False} if 'use_cache' in s else {'cache_refresh': 0})
    uncached = {name: next((u for u, s in runs.items() if s == cache_off(settings)), None)   # same settings, no cache
                for name, settings in runs.items()}
    results, seconds, valid = {}, {name: [] for name in runs}, {}
    bar = tqdm(total=rounds * len(runs), desc='bench_cache (rounds x rows)', leave=False)   # minutes on a CPU
    for _ in range(rounds):
        for name, settings in runs.items():
            results[name] = evaluate(model, task, examples, ckpt['attn'], dict(ckpt['decoder'], **settings),
                                     device=device, return_answers=True)
            valid[name] = results[name].pop('valid'); results[name].pop('answers')
            seconds[name].append(results[name]['seconds'])
            bar.update()
    bar.close()
    base = next(iter(results))
    for name, r in results.items():
        r['seconds'] = statistics.median(seconds[name]); r['seconds_per_sample'] = r['seconds'] / r['n']
        r['time_ratio'] = statistics.median(a / b for a, b in zip(seconds[name], seconds[base]))
        paired = ''
        if uncached[name] not in (None, name):
            d, half, r['lost'], r['won'] = paired_difference(valid[uncached[name]], valid[name])
            r['difference'], r['interval95'] = d, half
            paired = f'  {100 * d:+5.1f} +- {100 * half:.1f} points vs {uncached[name]} (lost {r["lost"]}, won {r["won"]})'
        print(f'{name:25s} accuracy {r["accuracy"]:6.1%}  {1000 * r["seconds_per_sample"]:7.2f} ms/puzzle  '
              f'{r["nfe_per_sample"]:5.1f} passes  {r["positions_per_sample"]:6.0f} positions/puzzle  '
              f'time {r["time_ratio"]:.2f}x of {base}{paired}')
    columns = ('accuracy', 'seconds', 'time_ratio', 'nfe_per_sample', 'positions_per_sample', 'difference', 'interval95')
    print(json.dumps({k: {c: r[c] for c in columns if c in r} for k, r in results.items()}))
    return results


def probe_window(model, ckpt, task, examples, path, device):
    """train_ar_mtp.window_accuracy on `examples` (with answers) of an AR+MTP checkpoint: for each
    cut (the answer before it given, right), the share of examples whose guess at each answer
    position in the window is right. Printed as a table and written to `path` (cut, position,
    accuracy)."""
    from train_ar_mtp import window_accuracy
    if ckpt['decoder']['method'] != 'ar_mtp':
        raise SystemExit(f'error: --probe_window needs an AR+MTP checkpoint; {ckpt["attn"]!r} models have no window')
    ids, answer_mask = (torch.from_numpy(a).to(device) for a in task.encode_batch(examples))
    cfg = ckpt['train_config']
    acc = window_accuracy(model, ids, answer_mask, cfg['mtp_window'], cfg['prefix'])
    truth = task.tokenize(examples[0][1])
    print(f'{ckpt["task_config"]}, {len(examples)} examples, teacher-forced: % right at each answer '
          f'position (columns) when the answer before the cut (rows) is given; first example\'s answer: {" ".join(truth)}')
    L = acc.shape[0]
    print('cut \\ position ' + ' '.join(f'{p:>5d}' for p in range(L)))
    rows = []
    for c in range(L):
        print(f'{c:>15d} ' + ' '.join('    .' if math.isnan(a) else f'{100 * a:5.1f}' for a in acc[c].tolist()))
        rows += [dict(cut=c, position=p, accuracy=a) for p, a in enumerate(acc[c].tolist()) if not math.isnan(a)]
    write_csv(path, rows, ('cut', 'position', 'accuracy'))
    print(f'wrote {path}')
    return acc


def check_job(cfg):
    """One job per command: a scale run, --table, --spread, or one job on --ckpt. A setting the
    chosen job would ignore is an error, not a silent no-op."""
    if cfg.spread:
        return refuse_unused(cfg, ['scale', 'seeds', 'out', 'device', 'processes', 'table', 'n', 'input', 'ckpt',
                                   'ref_ckpts'] + list(CKPT_JOBS),
                             '--spread', 'it only reads the summary.json of the runs it is given')
    jobs = [j for j in CKPT_JOBS if getattr(cfg, j)]
    if len(jobs) > 1:
        raise SystemExit(f'error: one job per command, not {" and ".join("--" + j for j in jobs)}')
    if jobs and not cfg.ckpt:
        raise SystemExit(f'error: --{jobs[0]} needs --ckpt=PATH (the checkpoint it studies)')
    if cfg.table and jobs:
        raise SystemExit(f'error: --table rewrites a scale run\'s files; it cannot be combined with --{jobs[0]}')
    ignored = changed_settings(cfg, ['scale', 'seeds', 'out', 'processes'] if jobs else
                               ['seeds', 'device', 'processes', 'ckpt', 'ref_ckpts', 'n', 'input'] if cfg.table else
                               ['ckpt', 'ref_ckpts', 'n', 'input'])
    if cfg.ref_ckpts and jobs != ['sweep_latent']:
        ignored.append('--ref_ckpts')
    if ignored:
        job = f'--{jobs[0]}' if jobs else '--table' if cfg.table else f'a --scale={cfg.scale} run'
        raise SystemExit(f'error: {job} does not use {", ".join(sorted(set(ignored)))} '
                         f'(--ckpt, --n, --input: the jobs {", ".join("--" + j for j in CKPT_JOBS)}; '
                         '--ref_ckpts: --sweep_latent; --scale, --seeds, --out, --processes: a scale run)')


def check_lists(cfg):
    """The comma-separated settings, each item as sample.py would check it: an error before any
    checkpoint is loaded or model trained, not a traceback halfway through a sweep."""
    for key, usable, what in (
            ('seeds', lambda v: type(v) is int, 'integers'),
            ('sweep_latent', lambda v: decoder_value_ok('n_latent', v), "counts >= 0 or 'all'"),
            ('sweep_threshold', lambda v: decoder_value_ok('threshold', v), 'numbers between 0 and 1'),
            ('calibration', lambda v: decoder_value_ok('threshold', v), 'numbers between 0 and 1')):
        items = getattr(cfg, key)
        if items and not all(usable(parse_value(v)) for v in items.split(',')):
            raise SystemExit(f'error: --{key} must be a comma-separated list of {what}, got {items!r}')
    seeds = cfg.seeds.split(',')
    if not cfg.seeds or len(set(map(int, seeds))) < len(seeds):     # a seed twice would count twice in the means
        raise SystemExit(f'error: --seeds must name at least one seed, each once, got {cfg.seeds!r}')
    if cfg.n < 1:
        raise SystemExit(f'error: --n must be at least 1, got {cfg.n}')
    if cfg.processes < 1:
        raise SystemExit(f'error: --processes must be at least 1, got {cfg.processes}')


def main(argv):
    cfg = parse_settings(ReproduceConfig(), argv)
    if cfg.scale not in SCALES:
        raise SystemExit(f'error: --scale must be one of {list(SCALES)}')
    check_job(cfg)
    check_lists(cfg)
    if cfg.spread:
        return print(seed_spread(cfg.spread.split(',')))
    cfg.out = cfg.out or ('results' if cfg.scale == 'cpu' else f'results/{cfg.scale}')   # smoke never overwrites results/
    if cfg.table:                                   # no training: from the run's summary.json
        if not os.path.exists(f'{cfg.out}/summary.json'):
            raise SystemExit(f'error: --table rewrites the tables of a finished run, and {cfg.out}/summary.json '
                             f'does not exist (give --out=FOLDER of a run, or --scale=SCALE for results/SCALE/)')
        s = json.load(open(f'{cfg.out}/summary.json'))
        if s['dial']:
            plot_dial(s['dial'], f'{cfg.out}/dial.png', dial_title(s))
        return print(write_table(cfg.out))
    device = pick_device(cfg.device)
    if any(getattr(cfg, j) for j in CKPT_JOBS):
        model, ckpt = load_checkpoint(cfg.ckpt, device)
        task = get_task(**ckpt['task_config'])
        examples = load_examples(task, ckpt, cfg.input, cfg.n)          # the first n of --input or of the test split
        # what a job writes goes beside the checkpoint, named after --input if given
        written = lambda name: os.path.join(os.path.dirname(cfg.ckpt), name + (
            f'_{os.path.splitext(os.path.basename(cfg.input))[0]}' if cfg.input else ''))
        if not cfg.bench_cache:                                          # (it only prints)
            check_writable(os.path.dirname(cfg.ckpt) or '.', "--ckpt's folder", "hold this job's files, "
                           'which go beside the checkpoint', folder=True)
        if cfg.input and (cfg.calibration or cfg.probe_window) and not all(a is not None and task.verify(p, a)
                                                                           for p, a in examples):
            raise SystemExit(f'error: --{"calibration" if cfg.calibration else "probe_window"} compares each guess '
                             f'with the right answer: every line of {cfg.input} must give its puzzle and a right '
                             'answer (puzzle,solution)')
        if cfg.bench_cache:
            return bench_cache(model, ckpt, task, examples, device)
        if cfg.calibration:
            return calibration(model, ckpt, [float(t) for t in cfg.calibration.split(',')], task, examples,
                               written('calibration') + '.csv', device)
        if cfg.probe_window:
            return probe_window(model, ckpt, task, examples, written('probe_window') + '.csv', device)
        if cfg.sweep_threshold:
            if ckpt['decoder']['method'] not in ('mdm', 'latent'):
                raise SystemExit(f'error: --sweep_threshold needs a diffusion checkpoint; {cfg.ckpt} is {ckpt["attn"]!r}')
            return sweep_threshold(model, ckpt, cfg.sweep_threshold, task, examples, written('sweep_threshold'), device)
        if ckpt['decoder']['method'] != 'latent':
            raise SystemExit(f'error: --sweep_latent needs a checkpoint the latent sampler decodes (semi_causal, '
                             f'semi_causal_ordered); {cfg.ckpt} is {ckpt["attn"]!r}')
        refs = [load_checkpoint(p, device) for p in filter(None, cfg.ref_ckpts.split(','))]
        if any(r[1]['task_config'] != ckpt['task_config'] or r[1]['attn'] not in ('full', 'independent') for r in refs):
            raise SystemExit('error: --ref_ckpts must be full or independent models of the same task')
        refs = {ck['attn']: decode_both_orders(m, ck, task, examples, device) for m, ck in refs}   # the same puzzles
        prefix = written('sweep_latent')
        rows = sweep_latent(model, ckpt, task, examples, cfg.sweep_latent, refs, prefix, device)
        return plot_dial(rows, prefix + '.png',
                         f'{cfg.ckpt}, {len(examples)} {"puzzles of " + cfg.input if cfg.input else "test puzzles"}')
    if cfg.processes > 1 and device != 'cpu':
        raise SystemExit(f'error: --processes shares out a CPU\'s cores; on {device} train one model at a time '
                         '(leave --processes at 1)')
    scale = SCALES[cfg.scale]
    n_test, seeds = scale['n_test'], [int(s) for s in cfg.seeds.split(',')]
    check_writable(cfg.out, '--out', 'hold the results', folder=True)
    os.makedirs(cfg.out, exist_ok=True)
    t_start, rows, sweeps = time.time(), [], []
    # where the time goes (written to summary.json as it is)
    timing = dict(wall_clock_minutes=0.0, minutes_per_seed=[], training_minutes_per_seed={}, resumed_checkpoints=[])
    models = {(name, seed): c for seed in seeds for name, c in scale_models(scale, seed, cfg.out, cfg.device).items()}
    # a checkpoint on disk is continued (and a finished one only evaluated)
    models = {key: dataclasses.replace(c, resume=os.path.exists(f'{c.out_dir}/ckpt.pt')) for key, c in models.items()}
    trained = {}                       # (name, seed) -> (checkpoint, minutes) of the models trained side by side
    if cfg.processes > 1:
        # continued models too: one stopped by Ctrl-C goes on with the thread count it began with
        trained = train_side_by_side(models, cfg.processes)
        timing.update(processes=cfg.processes, side_by_side_minutes=(time.time() - t_start) / 60)
    for seed in seeds:
        t_seed = time.time()

        def run(name):
            """Train one model (a checkpoint on disk is continued, and a finished one only evaluated:
            a rerun continues a killed run or adds seeds); return it, its checkpoint, its task and
            its first n_test test puzzles. Continued models are listed, not timed: their training
            happened (at least partly) in an earlier run."""
            # trained above, side by side, or now
            path, minutes = trained.get((name, seed)) or train_model(models[name, seed], quiet=cfg.scale == 'smoke')
            model, ck = load_checkpoint(path, device)
            if models[name, seed].resume:
                timing['resumed_checkpoints'].append(f'{name} seed {seed}')
            else:
                timing['training_minutes_per_seed'].setdefault(name, []).append(minutes)
            return (model, ck, *checkpoint_examples(ck, 'test', n_test))

        def record(finding, name, decoding, task, r):
            rows.append(dict(finding=finding, task=f'{task.name}{task.options.get("size", "")}', model=name, seed=seed,
                             decoding=decoding, accuracy=r['accuracy'], positions_per_sample=r['positions_per_sample'],
                             n=r['n']))

        # C1 and C2: three diffusion models on Sudoku, identical but for the attention structure
        # (a scale with diffusion=None runs C3 only)
        diffusion = {name: run(name) for name in DIFFUSION_MODELS if (name, seed) in models}
        decoded = {name: decode_both_orders(model, ck, task, test, device)
                   for name, (model, ck, task, test) in diffusion.items() if name != 'SCDM'}
        if diffusion:
            sweep = sweep_latent(*diffusion['SCDM'], scale['ks'],
                                 {DIFFUSION_MODELS[n]: decoded[n] for n in ('MDM', 'SIDM')},
                                 f'{cfg.out}/sweep_latent_seed{seed}', device)
            sweeps.append(sweep)
            # SCDM's C1 rows are the dial's k = all rows (every scale's ks ends with 'all'): the
            # same decoder on the same puzzles, so they are taken from there, not decoded twice
            decoded['SCDM'] = {r['order']: dict(r, n=len(diffusion['SCDM'][3])) for r in sweep if r['k'] == 'all'}
        for name, (model, ck, task, test) in diffusion.items():
            for order, r in decoded[name].items():
                record('C1', name, order, task, r)
        # C3: the scale's AR models (AR, AR+MTP, the NTP-only ablation where listed), same task and
        # budget; one AR+MTP model per window
        for name in scale_ar_models(scale):
            model, ck, task, test = run(name)
            record('C3', name, 'left_to_right', task, evaluate(model, task, test, ck['attn'], ck['decoder'], device=device))
        timing['minutes_per_seed'].append((time.time() - t_seed) / 60)
        timing['wall_clock_minutes'] = (time.time() - t_start) / 60
        done = seeds[:len(timing['minutes_per_seed'])]   # written after every seed: a killed run keeps the seeds it finished
        table = write_results(cfg, scale, done, rows, sweeps, timing)
    print(table)


def write_results(cfg, scale, seeds, rows, sweeps, timing):
    """models.csv, summary.json (means and spread over the seeds done), dial.png and table.md.
    sweeps: sweep_latent's rows of each seed done (none for a C3-only scale); timing: minutes
    (wall clock, per seed, training per model) and the models continued from checkpoints of an
    earlier run (resumed_checkpoints: their training is not in this run's minutes)."""
    seed_list = ','.join(map(str, seeds))
    columns = ('finding', 'task', 'model', 'seed', 'decoding', 'accuracy', 'positions_per_sample', 'n')
    write_csv(f'{cfg.out}/models.csv', rows, columns)
    summary = {}
    for r in rows:
        summary.setdefault(f'{r["model"]} ({r["decoding"]})', []).append(r['accuracy'])
    mean = lambda xs: sum(xs) / len(xs)
    dial = [dict(order=row['order'], k=row['k'], per_seed=[s[i]['accuracy'] for s in sweeps],
                 **{c: mean([s[i][c] for s in sweeps]) for c in COST_COLUMNS}) for i, row in enumerate(sweeps[0] if sweeps else [])]
    out = dict(scale=cfg.scale, seeds=seed_list, **timing, settings=scale, n_test=scale['n_test'],
               hardware=f'{cpu_name()}, {os.cpu_count()} cores, '
                        f'{torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"}',
               models={k: dict(mean=mean(v), min=min(v), max=max(v), per_seed=v) for k, v in summary.items()},
               dial=dial)
    json.dump(out, open(f'{cfg.out}/summary.json', 'w'), indent=1)
    if dial:
        plot_dial(dial, f'{cfg.out}/dial.png', dial_title(out))
    return write_table(cfg.out)


def dial_title(s):
    return f'scale {s["scale"]}, mean of seeds {s["seeds"]}, {s["n_test"]} test puzzles'


def dial_per_seed(s):
    """A summary.json's dial as {(commit order, k): accuracy per seed}."""
    return {(r['order'], r['k']): r['per_seed'] for r in s['dial']}


def target_results(s):
    """The findings' targets, checked seed by seed on a summary.json: a list of (target, the
    difference it checks per seed, met per seed). C1: MDM minus SIDM in random order >= 20 points.
    C2, per commit order: k = 0 within 5 points of SIDM, k = all within 10 of MDM, and no drop from
    one k to the next beyond the 95% binomial interval of the difference. C3: AR+MTP minus AR >= 10
    points; on path-star also AR within 10 points of 1/degree and AR+MTP at least halfway from
    1/degree to 100%."""
    results = []

    def check(label, diffs, ok):
        diffs = [round(d, 9) for d in diffs]          # 30/300 - 0/300 is exactly 10 points, not 9.99...
        results.append((label, diffs, [ok(d) for d in diffs]))

    minus = lambda a, b: [x - y for x, y in zip(a, b)]
    per_seed = lambda name: s['models'].get(name, {}).get('per_seed')
    if per_seed('MDM (random)') and per_seed('SIDM (random)'):
        check('C1, MDM minus SIDM in random order, at least +20', minus(per_seed('MDM (random)'),
              per_seed('SIDM (random)')), lambda d: d >= 0.20)
    dial, n = dial_per_seed(s), s['n_test']
    for order in ORDERS:
        ks = [k for o, k in dial if o == order and k not in DIFFUSION_MODELS.values()]    # not the references
        if not ks:
            continue
        check(f'C2 {order}, k=0 minus SIDM, within 5', minus(dial[order, '0'], dial[order, 'independent']),
              lambda d: abs(d) <= 0.05)
        check(f'C2 {order}, k=all minus MDM, within 10', minus(dial[order, 'all'], dial[order, 'full']),
              lambda d: abs(d) <= 0.10)
        # the worst step up in k: its change plus 1.96 standard errors of a difference of two rates
        # (below 0: a drop beyond the 95% interval)
        worst = [min(b - a + 1.96 * math.sqrt((a * (1 - a) + b * (1 - b)) / n) for a, b in zip(accs, accs[1:]))
                 for accs in zip(*(dial[order, k] for k in ks))]
        check(f'C2 {order}, non-decreasing in k (worst step up in k, plus its 95% interval, at least 0)', worst,
              lambda d: d >= 0)
    ar, mtp = per_seed('AR (left_to_right)'), per_seed('AR+MTP (left_to_right)')
    if ar and mtp:
        check('C3, AR+MTP minus AR, at least +10', minus(mtp, ar), lambda d: d >= 0.10)
        task = s.get('settings', {}).get('ar') or {}
        if task.get('task') == 'path_star':
            chance = 1 / task['task_options']['degree']     # a model that follows edges but guesses the arm
            most = (1 + chance) / 2                         # halfway from guessing the arm to every graph
            check(f'C3 path-star, AR minus 1/degree = {chance:.0%} (the Clever-Hans failure), within 10',
                  [a - chance for a in ar], lambda d: abs(d) <= 0.10)
            check(f'C3 path-star, AR+MTP minus {most:.0%} (halfway from 1/degree to every graph), at least 0',
                  [a - most for a in mtp], lambda d: d >= 0)
    return results


def target_checks(s):
    """target_results as markdown lines, a target a line; on the cpu scale also its time (at most
    60 minutes)."""
    lines = [f'- {label}: {"met" if all(met) else "**not met**"} ({" / ".join(f"{100 * d:+.1f}" for d in diffs)})'
             for label, diffs, met in target_results(s)]
    if s['scale'] == 'cpu' and s.get('resumed_checkpoints'):
        lines.append('- Time, at most 60 minutes: not measured (models continued from an earlier run)')
    elif s['scale'] == 'cpu':
        lines.append(f'- Time, at most 60 minutes: {"met" if s["wall_clock_minutes"] <= 60 else "**not met**"} '
                     f'({s["wall_clock_minutes"]:.0f} minutes)')
    return lines


def wrap_prose(lines, width=100):
    """Markdown lines with their prose wrapped at `width` characters, as the repo's hand-written
    files are (tables and blank lines kept whole; a list item's lines indented under it). A line
    never starts with what Markdown would read as a new list item or heading."""
    starts_block = re.compile(r'([-+*]|\d+[.)])( |$)|#|>')
    out = []
    for line in lines:
        if not line or line.startswith('|'):
            out.append(line)
            continue
        wrapped = textwrap.wrap(line, width, subsequent_indent='  ' if line.startswith('- ') else '',
                                break_long_words=False, break_on_hyphens=False)
        out.append(wrapped[0])
        for part in wrapped[1:]:
            indent, text = part[:len(part) - len(part.lstrip())], part.lstrip()
            while text and starts_block.match(text):          # keep that word on the line before
                word, _, text = text.partition(' ')
                out[-1] += ' ' + word
            if text:
                out.append(indent + text)
    return out


def write_table(out_dir):
    """Markdown tables of summary.json (what the README shows), written to <out>/table.md."""
    s = json.load(open(f'{out_dir}/summary.json'))
    pct = lambda x: f'{100 * x:.1f}'
    lines = [f'Scale `{s["scale"]}`, seeds {s["seeds"]}, {s["n_test"]} test examples per model, '
             f'{s["wall_clock_minutes"]:.0f} minutes on {s["hardware"]}.', '',
             '| model | decoding | accuracy % (mean) | per seed |', '|---|---|---|---|']
    if s.get('training_minutes_per_seed'):
        mins = s['training_minutes_per_seed']
        each = ', '.join(f'{name} {sum(m) / len(m):.1f}' for name, m in mins.items())
        per_seed = ' / '.join(f'{m:.1f}' for m in s['minutes_per_seed'])
        if s.get('processes'):
            where = (f'Trained {s["processes"]} models at a time first, each in its own process: '
                     f'{s["side_by_side_minutes"]:.1f} minutes (a model\'s own minutes, mean over the seeds: '
                     f'{each}); then evaluation, minutes per seed: {per_seed}.')
        else:
            where = (f'Minutes per seed: {per_seed}; of which training (mean over the seeds this run trained it) '
                     f'{each}; the rest is evaluation.')
        lines[1:1] = ['', where]
    if s.get('resumed_checkpoints'):
        lines[1:1] = ['', 'Continued from checkpoints an earlier run left in the folder (their training is not '
                      'in these minutes; a finished one is only evaluated): ' + ', '.join(s['resumed_checkpoints']) + '.']
    for name, m in s['models'].items():
        model, decoding = name.rsplit(' (', 1)
        lines.append(f'| {model} | {decoding[:-1]} | {pct(m["mean"])} | {" / ".join(pct(a) for a in m["per_seed"])} |')
    if s['dial']:
        lines += ['', '| commit order | latent tokens k | accuracy % (mean) | per seed | positions / puzzle |',
                  '|---|---|---|---|---|']
    for r in s['dial']:
        k = {'full': 'MDM (reference)', 'independent': 'SIDM (reference)'}.get(r['k'], r['k'])
        lines.append(f'| {r["order"]} | {k} | {pct(r["accuracy"])} | {" / ".join(pct(a) for a in r["per_seed"])} | '
                     f'{r["positions_per_sample"]:.0f} |')
    table = '\n'.join(wrap_prose(lines + ['', 'Targets, checked on every seed (differences in points, per seed):']
                                  + target_checks(s))) + '\n'
    open(f'{out_dir}/table.md', 'w').write(table)
    return table


def seed_spread(folders):
    """Every target of several finished runs of one recipe (their summary.json), seed by seed, as
    one markdown table: a row a target, a column a seed, a missed target's difference in bold.
    Then, where the runs have a dial, how much its ends and their references (MDM, SIDM) vary
    from seed to seed: each is its own draw, and a target compares two of them."""
    runs = []
    for folder in folders:
        if not os.path.exists(f'{folder}/summary.json'):
            raise SystemExit(f'error: --spread reads finished runs, and {folder}/summary.json does not exist')
        runs.append(json.load(open(f'{folder}/summary.json')))
    for folder, s in zip(folders[1:], runs[1:]):
        if (s['scale'], s['settings']) != (runs[0]['scale'], runs[0]['settings']):
            raise SystemExit(f'error: --spread puts seeds of one recipe side by side, and {folder} ran another '
                             f'than {folders[0]} (scale or settings in summary.json differ)')
    seeds = [seed for s in runs for seed in s['seeds'].split(',')]
    if len(set(seeds)) < len(seeds):
        raise SystemExit(f'error: --spread was given a seed twice (seeds {", ".join(seeds)})')
    targets = {}                                    # target -> [(difference, met)] in the order of `seeds`
    for s in runs:
        for label, diffs, met in target_results(s):
            targets.setdefault(label, []).extend(zip(diffs, met))
    cell = lambda d, ok: f'{100 * d:+.1f}' if ok else f'**{100 * d:+.1f}**'
    every = [all(targets[label][i][1] for label in targets) for i in range(len(seeds))]
    lines = [f'Scale `{runs[0]["scale"]}`, {runs[0]["n_test"]} test examples per model; runs: '
             + ', '.join(f'{f} (seeds {s["seeds"]}, {s["wall_clock_minutes"]:.0f} minutes on {s["hardware"]})'
                         for f, s in zip(folders, runs)) + '. Differences in points; bold: missed.', '',
             '| target | ' + ' | '.join(f'seed {seed}' for seed in seeds) + ' | met on |',
             '|---' * (len(seeds) + 2) + '|']
    lines += [f'| {label} | ' + ' | '.join(cell(d, ok) for d, ok in results) +
              f' | {sum(ok for _, ok in results)} of {len(seeds)} |' for label, results in targets.items()]
    lines.append('| every target | ' + ' | '.join('met' if ok else '**not met**' for ok in every) +
                 f' | {sum(every)} of {len(seeds)} |')
    # the dial's ends and their references, each its own draw: how much each varies from seed to seed
    dials = [dial_per_seed(s) for s in runs]
    if len(seeds) > 1 and all(dials):
        over_seeds = lambda order, k: [a for dial in dials for a in dial[order, k]]
        lines += ['', 'Accuracy %, mean +- standard deviation over the seeds:', '',
                  '| commit order | MDM | k = all | SIDM | k = 0 |', '|---|---|---|---|---|']
        lines += [f'| {order} | ' + ' | '.join(f'{100 * statistics.mean(over_seeds(order, k)):.1f} +- '
                                             f'{100 * statistics.stdev(over_seeds(order, k)):.1f}'
                                             for k in ('full', 'all', 'independent', '0')) + ' |'
                  for order in ORDERS if (order, 'all') in dials[0]]
    return '\n'.join(lines)


if __name__ == '__main__':
    main(sys.argv[1:])
